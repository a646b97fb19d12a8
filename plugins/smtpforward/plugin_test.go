package smtpforward_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/smtpforward"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

type acceptAll struct{}

func (acceptAll) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

// remoteIDs records the smtpforward.remote_id note at queue_post.
type remoteIDs struct {
	mu  sync.Mutex
	ids []string
}

func (r *remoteIDs) QueuePost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, smtpforward.NoteRemoteID.Get(&tx.Notes))
}

const body = "Subject: hi\r\n\r\nbody\r\n.dot line\r\n"

func send(t *testing.T, settings string, to ...string) hooks.Reply {
	t.Helper()
	p := hookstest.Build(t, "smtpforward", settings)
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("smtpforward", p))
	rep := h.Connect("192.0.2.1").Send("a@example.org", to, body)
	t.Logf("reply: %s", rep)
	return rep
}

func TestForwardsTheExactMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts queuetest.Options
		conf string
	}{
		{"smtp", queuetest.Options{}, ""},
		{"lmtp over a unix socket", queuetest.Options{LMTP: true, Unix: true}, "lmtp = true\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, tc.opts)
			rep := send(t, tc.conf+`host = "`+d.Addr+`"`+"\nhelo = \"relay.example.test\"", "b@example.test", "c@example.test")
			hookstest.Expect(t, rep, 250, "queued as")
			id := strings.TrimPrefix(rep.Msg, "Ok: queued as ")
			got := d.Messages()
			if len(got) != 1 {
				t.Fatalf("downstream got %d messages", len(got))
			}
			m := got[0]
			if m.Helo != "relay.example.test" || m.From != "a@example.org" || strings.Join(m.To, " ") != "b@example.test c@example.test" {
				t.Errorf("downstream envelope: helo %q from %q to %v", m.Helo, m.From, m.To)
			}
			data := string(m.Data)
			if !strings.HasPrefix(data, "Received: from client.example.test ([192.0.2.1])\r\n") || !strings.Contains(data, " id "+id) || !strings.HasSuffix(data, "\r\n"+body) {
				t.Errorf("downstream got %q", data)
			}
		})
	}
}

func TestRemoteQueueIDIsNoted(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{QueuedAs: "4dZ3Kx0Qm9z7"})
	p := hookstest.Build(t, "smtpforward", `host = "`+d.Addr+`"`)
	ids := &remoteIDs{}
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("smtpforward", p), hookstest.Plugin("ids", ids))
	var log hookstest.LogBuffer
	h.Logger = log.Logger()
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"b@example.test"}, body)
	hookstest.Expect(t, rep, 250, "queued as")
	if strings.Contains(rep.Msg, "4dZ3Kx0Qm9z7") {
		t.Errorf("reply %q announces the downstream's id instead of ours", rep)
	}
	if len(ids.ids) != 1 || ids.ids[0] != "4dZ3Kx0Qm9z7" {
		t.Errorf("note %s = %v, want [4dZ3Kx0Qm9z7]", smtpforward.NoteRemoteID, ids.ids)
	}
	if !strings.Contains(log.String(), `detail="downstream queued as 4dZ3Kx0Qm9z7"`) {
		t.Errorf("the message queued line lacks the downstream's id:\n%s", log.String())
	}
}

func TestDownstreamVerdicts(t *testing.T) {
	unknown := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	for _, tc := range []struct {
		name string
		opts queuetest.Options
		code int
		text string
	}{
		{"recipient unknown", queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"b@example.test": unknown}},
			550, "5.1.1 Downstream server refused <b@example.test>: 550 5.1.1 No such user"},
		{"greylisted", queuetest.Options{DataErr: map[string]*smtp.SMTPError{"": {Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted"}}},
			451, "4.7.1 Downstream server refused the end of the message: 451 4.7.1 Greylisted"},
		{"lmtp over quota", queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{"b@example.test": {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Over quota"}}},
			451, "Over quota; try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, tc.opts)
			conf := `host = "` + d.Addr + `"`
			if tc.opts.LMTP {
				conf += "\nlmtp = true"
			}
			rep := send(t, conf, "b@example.test")
			checkReply(t, rep, tc.code, tc.text)
		})
	}
}

// checkReply checks rep's code and that it contains text.
func checkReply(t *testing.T, rep hooks.Reply, code int, text string) {
	t.Helper()
	hookstest.Expect(t, rep, code, text)
}

func TestUnreachableDownstreamDefers(t *testing.T) {
	rep := send(t, `host = "127.0.0.1:1"`+"\nconnect_timeout = \"2s\"", "b@example.test")
	hookstest.Expect(t, rep, 451, "4.4.1", "Downstream server unreachable")
}

// TestPostfixSMTPSink runs against Postfix's smtp-sink, a real SMTP/LMTP
// test server that can refuse chosen commands.
func TestPostfixSMTPSink(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		lmtp bool
		code int
		text string
	}{
		{"accepts", nil, false, 250, "queued as"},
		{"lmtp accepts", []string{"-L"}, true, 250, "queued as"},
		{"RCPT refused 5xx", []string{"-f", "RCPT", "-B", "550 5.1.1 No such user here"}, false, 550, "550 5.1.1 No such user here"},
		{"RCPT refused 4xx", []string{"-r", "RCPT"}, false, 451, "450 4.3.0 Error: command failed"},
		{"MAIL refused 5xx", []string{"-f", "MAIL"}, false, 554, "5.3.0 Downstream server refused MAIL FROM: 500 5.3.0 Error: command failed"},
		{"DATA refused 5xx", []string{"-f", "DATA"}, false, 554, "refused DATA: 500 5.3.0"},
		{"final dot refused 5xx", []string{"-f", "."}, false, 554, "refused the end of the message: 500 5.3.0"},
		{"final dot refused 4xx", []string{"-r", "."}, false, 451, "450 4.3.0 Error: command failed"},
		{"lmtp final dot refused 5xx", []string{"-L", "-f", "."}, true, 554, "500 5.3.0 Error: command failed"},
		{"421 and disconnect at MAIL", []string{"-Q", "MAIL"}, false, 451, "421"},
		{"disconnect without reply at DATA", []string{"-q", "DATA"}, false, 451, "Connection to the downstream server failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := queuetest.SMTPSink(t, tc.args...)
			conf := `host = "` + addr + `"`
			if tc.lmtp {
				conf += "\nlmtp = true"
			}
			checkReply(t, send(t, conf, "b@example.test"), tc.code, tc.text)
		})
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, wantErr string }{
		{`host = "127.0.0.1"`, "host"},
		{`host = "127.0.0.1:0"`, "host"},
		{`host = "127.0.0.1:smtp"`, "host"},
		{`host = ":25"`, "host"},
		{`host = "unix:relative.sock"`, "host"},
		{"host = \"unix:/run/lmtp.sock\"\nstarttls = \"required\"", "starttls"},
		{`starttls = "yes"`, "starttls"},
		{`helo = "two words"`, "helo"},
		{`connect_timeout = "30"`, "connect_timeout"},
		{`data_timeout = "0s"`, "data_timeout"},
		{`lmtp = "yes"`, "lmtp"},
		{`hots = "x:1"`, "hots"},
	} {
		hookstest.ExpectBuildError(t, "smtpforward", tc.settings, tc.wantErr)
	}
	for _, ok := range []string{"", `host = "unix:/run/lmtp.sock"` + "\nlmtp = true", `host = "mx.example.test:25"` + "\nstarttls = \"required\"\nconnect_timeout = \"5s\"\ndata_timeout = \"10m\""} {
		hookstest.Build(t, "smtpforward", ok)
	}
}
