package queue_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

func forward(t *testing.T, f *queue.Forwarder, to []string, msg string) (queue.Receipt, error) {
	t.Helper()
	tx := newTx(t, "a@example.org", to, msg, 64<<10)
	return f.Forward(context.Background(), tx, nil)
}

func TestForwardDeliversExactBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts queuetest.Options
		lmtp bool
	}{
		{"smtp over tcp", queuetest.Options{}, false},
		{"lmtp over tcp", queuetest.Options{LMTP: true}, true},
		{"lmtp over a unix socket", queuetest.Options{LMTP: true, Unix: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, tc.opts)
			f := &queue.Forwarder{Addr: d.Addr, LMTP: tc.lmtp, Helo: "relay.example.test"}
			for _, msg := range []string{testMessage, bigMessage(300 << 10)} {
				rc, err := forward(t, f, []string{"b@example.test", "c@example.test"}, msg)
				if err != nil {
					t.Fatalf("Forward: %v", err)
				}
				if rc.ID == "" {
					t.Error("empty receipt id")
				}
			}
			got := d.Messages()
			if len(got) != 2 {
				t.Fatalf("downstream got %d messages, want 2", len(got))
			}
			for i, msg := range []string{testMessage, bigMessage(300 << 10)} {
				m := got[i]
				if want := wantMessage(msg); string(m.Data) != want {
					t.Errorf("message %d: got %d bytes, want %d; first difference at %d", i, len(m.Data), len(want), firstDiff(string(m.Data), want))
				}
				if m.Helo != "relay.example.test" || m.From != "a@example.org" || strings.Join(m.To, ",") != "b@example.test,c@example.test" {
					t.Errorf("message %d: helo %q from %q to %v", i, m.Helo, m.From, m.To)
				}
			}
		})
	}
}

// (go-smtp's LMTP server puts "<recipient> " before its per-recipient texts.)

// checkForwardError checks the error class and that the client's text
// carries want.
func checkForwardError(t *testing.T, err error, permanent bool, want string) {
	t.Helper()
	var qe *queue.Error
	if !errors.As(err, &qe) {
		t.Fatalf("error %v (%T), want a *queue.Error", err, err)
	}
	if qe.Permanent != permanent || !strings.Contains(qe.Msg, want) {
		t.Errorf("got permanent=%v %q, want permanent=%v and %q", qe.Permanent, qe.Msg, permanent, want)
	}
	code := hooks.ReplyFor(hooks.HookQueue, queue.Result(err)).Code
	if permanent && code/100 != 5 || !permanent && code != 451 {
		t.Errorf("reply code %d, want %s", code, map[bool]string{true: "5xx", false: "451"}[permanent])
	}
}

func smtpErr(code int, enh [3]int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(enh), Message: msg}
}

func TestForwardPassesDownstreamRefusals(t *testing.T) {
	userUnknown := smtpErr(550, [3]int{5, 1, 1}, "No such user")
	mailboxFull := smtpErr(452, [3]int{4, 2, 2}, "Mailbox full")
	for _, tc := range []struct {
		name      string
		opts      queuetest.Options
		to        []string
		permanent bool
		text      string
	}{
		{"the only recipient refused 5xx", queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"bad@example.test": userUnknown}},
			[]string{"bad@example.test"}, true, "Downstream server refused <bad@example.test>: 550 5.1.1 No such user"},
		{"one of two recipients refused", queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"bad@example.test": userUnknown}},
			[]string{"b@example.test", "bad@example.test"}, false, "550 5.1.1 No such user; 1 of 2 recipients accepted; try again later"},
		{"recipient refused 4xx", queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"b@example.test": mailboxFull}},
			[]string{"b@example.test"}, false, "452 4.2.2 Mailbox full"},
		{"5xx after the final dot", queuetest.Options{DataErr: map[string]*smtp.SMTPError{"": smtpErr(554, [3]int{5, 7, 1}, "Spam detected")}},
			[]string{"b@example.test"}, true, "554 5.7.1 Spam detected"},
		{"4xx after the final dot", queuetest.Options{DataErr: map[string]*smtp.SMTPError{"": smtpErr(451, [3]int{4, 3, 0}, "Try later")}},
			[]string{"b@example.test"}, false, "451 4.3.0 Try later"},
		{"lmtp: every recipient refused after DATA", queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{
			"b@example.test": userUnknown, "c@example.test": smtpErr(552, [3]int{5, 2, 2}, "Over quota")}},
			[]string{"b@example.test", "c@example.test"}, true, "refused <b@example.test>: 550 5.1.1 <b@example.test> No such user (and 1 more)"},
		{"lmtp: one recipient refused after DATA", queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{"c@example.test": userUnknown}},
			[]string{"b@example.test", "c@example.test"}, false, "refused <c@example.test>: 550 5.1.1 <c@example.test> No such user; 1 of 2 recipients accepted"},
		{"lmtp: a 4xx and a 5xx after DATA", queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{
			"b@example.test": mailboxFull, "c@example.test": userUnknown}},
			[]string{"b@example.test", "c@example.test"}, false, "452 4.2.2 <b@example.test> Mailbox full (and 1 more); try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, tc.opts)
			_, err := forward(t, &queue.Forwarder{Addr: d.Addr, LMTP: tc.opts.LMTP}, tc.to, testMessage)
			checkForwardError(t, err, tc.permanent, tc.text)
			if !tc.opts.LMTP && len(d.Messages()) != 0 {
				t.Errorf("the downstream stored %d messages, want none", len(d.Messages()))
			}
		})
	}
}

func TestForwardUnreachableIsTemporary(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = forward(t, &queue.Forwarder{Addr: addr}, []string{"b@example.test"}, testMessage)
	checkForwardError(t, err, false, "Downstream server unreachable")
}

// silentListener accepts connections and never answers.
func silentListener(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
			close(done)
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func TestForwardSilentServerTimesOut(t *testing.T) {
	addr := silentListener(t)
	for _, mode := range []queue.TLSMode{queue.TLSOff, queue.TLSOpportunistic} {
		start := time.Now()
		_, err := forward(t, &queue.Forwarder{Addr: addr, StartTLS: mode, ConnectTimeout: 300 * time.Millisecond}, []string{"b@example.test"}, testMessage)
		checkForwardError(t, err, false, "timed out")
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("starttls %s: took %v with a 300ms timeout", mode, d)
		}
	}
}

func TestForwardHonoursContextDeadline(t *testing.T) {
	addr := silentListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 1<<20)
	start := time.Now()
	_, err := (&queue.Forwarder{Addr: addr}).Forward(ctx, tx, nil)
	checkForwardError(t, err, false, "timed out")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v with a 200ms deadline", d)
	}
}

func TestForwardStartTLS(t *testing.T) {
	serverTLS, roots := queuetest.SelfSigned(t)
	trusting := &tls.Config{RootCAs: roots}
	for _, tc := range []struct {
		name      string
		serverTLS *tls.Config
		mode      queue.TLSMode
		clientTLS *tls.Config
		wantTLS   bool
		fail      string
	}{
		{"opportunistic with STARTTLS offered", serverTLS, queue.TLSOpportunistic, nil, true, ""},
		{"opportunistic without STARTTLS", nil, queue.TLSOpportunistic, nil, false, ""},
		{"required and verified", serverTLS, queue.TLSRequired, trusting, true, ""},
		{"required without STARTTLS", nil, queue.TLSRequired, trusting, false, "does not offer STARTTLS"},
		{"required with an untrusted certificate", serverTLS, queue.TLSRequired, nil, false, "Connection to the downstream server failed"},
		{"off with STARTTLS offered", serverTLS, queue.TLSOff, nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, queuetest.Options{TLS: tc.serverTLS})
			f := &queue.Forwarder{Addr: d.Addr, Helo: "relay.example.test", StartTLS: tc.mode, TLSConfig: tc.clientTLS}
			_, err := forward(t, f, []string{"b@example.test"}, testMessage)
			if tc.fail != "" {
				checkForwardError(t, err, false, tc.fail)
				if len(d.Messages()) != 0 {
					t.Error("the message was delivered anyway")
				}
				return
			}
			if err != nil {
				t.Fatalf("Forward: %v", err)
			}
			got := d.Messages()
			if len(got) != 1 || got[0].TLS != tc.wantTLS || got[0].Helo != "relay.example.test" {
				t.Fatalf("downstream got %+v, want one message with TLS=%v and our EHLO name", got, tc.wantTLS)
			}
			if string(got[0].Data) != wantMessage(testMessage) {
				t.Errorf("message bytes differ")
			}
		})
	}
}

func TestForwardRefusesForgedEnvelope(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	_, err := forward(t, &queue.Forwarder{Addr: d.Addr}, []string{"b@example.test>\r\nRCPT TO:<evil@example.net"}, testMessage)
	checkForwardError(t, err, true, "recipient address contains a NUL, CR or LF")
	if len(d.Messages()) != 0 {
		t.Error("the message was delivered")
	}
}

func TestForwardSMTPUTF8(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	if _, err := forward(t, &queue.Forwarder{Addr: d.Addr}, []string{"jürgen@example.test"}, testMessage); err != nil {
		t.Fatalf("Forward to a UTF-8 address: %v", err)
	}
	if got := d.Messages(); len(got) != 1 || got[0].To[0] != "jürgen@example.test" {
		t.Fatalf("downstream got %+v", got)
	}
}

func TestParseTLSMode(t *testing.T) {
	for in, want := range map[string]queue.TLSMode{"": queue.TLSOff, "off": queue.TLSOff, "opportunistic": queue.TLSOpportunistic, "required": queue.TLSRequired} {
		if got, err := queue.ParseTLSMode(in); err != nil || got != want {
			t.Errorf("ParseTLSMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := queue.ParseTLSMode("yes"); err == nil {
		t.Error("ParseTLSMode(yes) succeeded")
	}
}

func TestForwardWithoutSMTPUTF8RefusesUTF8Addresses(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{NoSMTPUTF8: true})
	_, err := forward(t, &queue.Forwarder{Addr: d.Addr}, []string{"jürgen@example.test"}, testMessage)
	checkForwardError(t, err, true, "does not support SMTPUTF8")
	var qe *queue.Error
	if errors.As(err, &qe) && qe.Enhanced != [3]int{5, 6, 7} {
		t.Errorf("enhanced code %v, want 5.6.7", qe.Enhanced)
	}
}

func TestForwardReportsRemoteQueueID(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		d := queuetest.StartDownstream(t, queuetest.Options{LMTP: lmtp, QueuedAs: "4dZ3Kx0Qm9z7"})
		rc, err := forward(t, &queue.Forwarder{Addr: d.Addr, LMTP: lmtp}, []string{"b@example.test"}, testMessage)
		if err != nil {
			t.Fatalf("lmtp=%v: %v", lmtp, err)
		}
		if rc.RemoteID != "4dZ3Kx0Qm9z7" {
			t.Errorf("lmtp=%v: remote id %q, want 4dZ3Kx0Qm9z7", lmtp, rc.RemoteID)
		}
	}
}

// TestForwardLateReplyIsAPossibleDuplicate: the downstream has the message
// but its reply to the final dot comes after data_timeout. The client is
// told to retry (451), and the error the log gets says that the retry may
// duplicate the message, naming the queue id.
func TestForwardLateReplyIsAPossibleDuplicate(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{HoldReply: 2 * time.Second})
	f := &queue.Forwarder{Addr: d.Addr, DataTimeout: 300 * time.Millisecond}
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 64<<10)
	_, err := f.Forward(context.Background(), tx, nil)
	res := queue.Result(err)
	if res.Code != hooks.DenySoft || res.ReplyCode != 451 {
		t.Fatalf("late reply: %+v; want DenySoft 451", res)
	}
	if want := "possible duplicate of queue id " + tx.ID; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("late reply: error %v; want it to say %q", err, want)
	}
	if n := len(d.Messages()); n != 1 {
		t.Fatalf("the downstream recorded %d messages; want 1 (it delivered, only its reply was late)", n)
	}
}
