package policy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/policy"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

// What a fake server's answer function may return besides a reply.
const (
	hang   = "\x00hang"  // read the request, never answer
	hangUp = "\x00close" // read the request, close the connection
)

// server is a policy server in the test: it records each request and
// answers with answer(attributes), written as it is.
type server struct {
	ln     net.Listener
	answer func(req map[string]string) string
	// closeAfter closes each connection after its reply (a server that
	// does not keep connections).
	closeAfter bool

	mu       sync.Mutex
	requests []string
	conns    int
	done     chan struct{}
}

// startServer listens on loopback TCP (or on the unix socket path).
func startServer(t *testing.T, network, address string, answer func(map[string]string) string) *server {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, answer: answer, done: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); close(s.done); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); s.serve(c) }()
		}
	}()
	return s
}

func (s *server) serve(c net.Conn) {
	defer c.Close()
	go func() { <-s.done; c.Close() }()
	r := bufio.NewReader(c)
	for {
		var raw strings.Builder
		attrs := map[string]string{}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			raw.WriteString(line)
			if line == "\n" {
				break
			}
			k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			attrs[k] = v
		}
		s.mu.Lock()
		s.requests = append(s.requests, raw.String())
		s.mu.Unlock()
		switch a := s.answer(attrs); a {
		case hang:
			<-s.done
			return
		case hangUp:
			return
		default:
			if _, err := c.Write([]byte(a)); err != nil {
				return
			}
		}
		if s.closeAfter {
			return
		}
	}
}

func (s *server) addr() string {
	if s.ln.Addr().Network() == "unix" {
		return "unix:" + s.ln.Addr().String()
	}
	return s.ln.Addr().String()
}

func (s *server) stats() (requests []string, conns int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...), s.conns
}

// action answers every request with one action.
func action(a string) func(map[string]string) string {
	return func(map[string]string) string { return "action=" + a + "\n\n" }
}

// chain builds policy (with settings) before rcptok, which accepts
// example.test, and a queue recorder.
func chain(t *testing.T, settings string) (*hookstest.Harness, *policy.Plugin) {
	t.Helper()
	p := hookstest.BuildAs[*policy.Plugin](t, "policy", settings)
	h := hookstest.New(t,
		hookstest.Plugin("policy", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
	return h, p
}

const msg = "Subject: hi\r\n\r\nhello\r\n"

// afterMail connects from 192.0.2.1 and sends HELO and a MAIL FROM
// that must be accepted: the session is ready for RCPT.
func afterMail(t testing.TB, h *hookstest.Harness) *hookstest.Session {
	t.Helper()
	s := h.Connect("192.0.2.1")
	s.Helo("client.example")
	hookstest.ExpectReply(t, s.Mail("alice@example.org"), "250 2.1.0 Sender OK")
	return s
}

func TestActionsAtRcpt(t *testing.T) {
	for _, tc := range []struct {
		action, rcpt string
		okAccepts    bool
		want         string
	}{
		{"DUNNO", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"dunno", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		// OK is DUNNO by default: rcptok still refuses to relay.
		{"OK", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"OK", "victim@elsewhere.example", false, "550 5.7.1 relaying denied"},
		{"OK", "victim@elsewhere.example", true, "250 2.1.5 Recipient OK"},
		{"12345", "victim@elsewhere.example", false, "550 5.7.1 relaying denied"},
		{"12345", "victim@elsewhere.example", true, "250 2.1.5 Recipient OK"},
		{"REJECT", "bob@example.test", false, "550 5.7.1 Access denied"},
		{"REJECT Mailbox is closed", "bob@example.test", false, "550 5.7.1 Mailbox is closed"},
		{"reject 5.1.1 No such user", "bob@example.test", false, "550 5.1.1 No such user"},
		{"DEFER", "bob@example.test", false, "450 4.7.1 Service unavailable"},
		{"DEFER come back later", "bob@example.test", false, "450 4.7.1 come back later"},
		{"DEFER_IF_PERMIT 4.2.0 Greylisted", "bob@example.test", false, "450 4.2.0 Greylisted"},
		{"defer_if_reject Try again", "bob@example.test", false, "450 4.7.1 Try again"},
		{"451 4.7.2 Slow down", "bob@example.test", false, "451 4.7.2 Slow down"},
		{"450 5.1.1 Class fixed", "bob@example.test", false, "450 4.1.1 Class fixed"},
		{"554 Go away", "bob@example.test", false, "554 5.7.1 Go away"},
		{"552 5.2.2 Mailbox full", "bob@example.test", false, "552 5.2.2 Mailbox full"},
		{"WARN looks odd", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"INFO first seen", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"HOLD check me", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"FILTER smtp:[10.0.0.1]:10025", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"REDIRECT abuse@example.test", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		{"PREPEND X-Policy: seen", "bob@example.test", false, "250 2.1.5 Recipient OK"},
		// What Sluice cannot read fails as failure_action says.
		{"PREPEND no colon here", "bob@example.test", false, "451 4.3.5 Server configuration problem"},
		{"FROBNICATE", "bob@example.test", false, "451 4.3.5 Server configuration problem"},
		{"", "bob@example.test", false, "451 4.3.5 Server configuration problem"},
	} {
		t.Run(tc.action+" "+tc.rcpt, func(t *testing.T) {
			srv := startServer(t, "tcp", "127.0.0.1:0", action(tc.action))
			h, _ := chain(t, fmt.Sprintf("address = %q\nok_accepts = %v", srv.addr(), tc.okAccepts))
			s := afterMail(t, h)
			hookstest.ExpectReply(t, s.Rcpt(tc.rcpt), tc.want)
		})
	}
}

func TestDisconnectingCodes(t *testing.T) {
	for _, tc := range []struct{ action, want string }{
		{"421 4.3.2 Shutting down", "421 4.3.2 Shutting down"},
		{"521 Go away", "521 5.7.1 Go away"},
	} {
		srv := startServer(t, "tcp", "127.0.0.1:0", action(tc.action))
		h, _ := chain(t, fmt.Sprintf("address = %q", srv.addr()))
		s := afterMail(t, h)
		rep := s.Rcpt("bob@example.test")
		hookstest.ExpectReply(t, rep, tc.want)
		if !rep.Close {
			t.Errorf("%s: the connection stays open; want it closed", tc.action)
		}
	}
}

func TestNotesForWhatSluiceDoesNotDo(t *testing.T) {
	answers := map[string]string{
		"a@example.test": "HOLD suspicious",
		"b@example.test": "FILTER smtp:[192.0.2.9]:10025",
		"c@example.test": "REDIRECT quarantine@example.test",
		"d@example.test": "BCC archive@example.test",
	}
	srv := startServer(t, "tcp", "127.0.0.1:0", func(r map[string]string) string {
		return "action=" + answers[r["recipient"]] + "\n\n"
	})
	h, p := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	var log hookstest.LogBuffer
	p.SetLogger(log.Logger())
	s := h.Connect("192.0.2.1")
	tr := s.SendAll("alice@example.org", []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test"}, msg)
	hookstest.Expect(t, tr.Data, 250, "queued as")
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages; want 1", len(q))
	}
	for key, want := range map[string]string{
		policy.NoteHold.Name():     "suspicious",
		policy.NoteFilter.Name():   "smtp:[192.0.2.9]:10025",
		policy.NoteRedirect.Name(): "quarantine@example.test",
		policy.NoteBcc.Name():      "archive@example.test",
	} {
		if got := q[0].Notes[key]; got != want {
			t.Errorf("note %s = %v; want %q", key, got, want)
		}
	}
	for _, want := range []string{`action="HOLD suspicious"`, "which Sluice does not do: noted as policy.hold", "noted as policy.bcc"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

func TestWarnAndInfoAreLogged(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("WARN sender looks forged"))
	h, p := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	var log hookstest.LogBuffer
	p.SetLogger(log.Logger())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
	if !strings.Contains(log.String(), `level=WARN msg="policy server warning"`) || !strings.Contains(log.String(), `action="WARN sender looks forged"`) {
		t.Errorf("log:\n%s", log.String())
	}
}

// The exact request lines of one transaction asked at every stage.
func TestRequestAttributes(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	p := hookstest.BuildAs[*policy.Plugin](t, "policy", fmt.Sprintf(`address = %q
at = ["rcpt", "data", "end_of_data"]
policy_context = "submission"`, srv.addr()))
	h := hookstest.New(t,
		hookstest.Plugin("password", password{}),
		hookstest.Plugin("policy", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
	h.AuthPlaintextLoopback = true
	s := h.Connect("127.0.0.1:4567")
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	hookstest.ExpectReply(t, s.AuthPlain("alice", "s3cret"), "235 2.7.0 Authentication successful")
	hookstest.ExpectReply(t, s.Cmd("MAIL FROM:<alice@example.org> SIZE=1234 AUTH=alice@example.org"), "250 2.1.0 Sender OK")
	id := s.Transaction().ID
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	hookstest.ExpectReply(t, s.Rcpt("carol@elsewhere.example"), "250 2.1.5 Recipient OK")
	hookstest.Expect(t, s.Data(msg), 250, "queued as "+id)

	common := func(state, rcpt string, count, size int) string {
		return "request=smtpd_access_policy\n" +
			"protocol_state=" + state + "\n" +
			"protocol_name=ESMTP\n" +
			"helo_name=laptop.example\n" +
			"queue_id=" + id + "\n" +
			"sender=alice@example.org\n" +
			"recipient=" + rcpt + "\n" +
			fmt.Sprintf("recipient_count=%d\n", count) +
			"client_address=127.0.0.1\n" +
			"client_name=unknown\n" +
			"reverse_client_name=unknown\n" +
			"instance=" + id + "\n" +
			"sasl_method=PLAIN\n" +
			"sasl_username=alice\n" +
			"sasl_sender=alice@example.org\n" +
			fmt.Sprintf("size=%d\n", size) +
			"ccert_subject=\n" +
			"ccert_issuer=\n" +
			"ccert_fingerprint=\n" +
			"encryption_protocol=\n" +
			"encryption_cipher=\n" +
			"encryption_keysize=0\n" +
			"etrn_domain=\n" +
			"stress=\n" +
			"ccert_pubkey_fingerprint=\n" +
			"client_port=4567\n" +
			"policy_context=submission\n" +
			"server_address=127.0.0.1\n" +
			"server_port=25\n" +
			"\n"
	}
	want := []string{
		common("RCPT", "bob@example.test", 0, 1234),
		common("RCPT", "carol@elsewhere.example", 0, 1234),
		common("DATA", "", 2, 1234),
		common("END-OF-MESSAGE", "", 2, len(msg)),
	}
	got, conns := srv.stats()
	if len(got) != len(want) {
		t.Fatalf("server got %d requests; want %d:\n%s", len(got), len(want), strings.Join(got, "--\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("request %d:\n%s\nwant:\n%s", i, got[i], want[i])
		}
	}
	if conns != 1 {
		t.Errorf("%d connections for 4 requests; want 1, reused", conns)
	}
}

// password stands in for an auth plugin: alice's password is s3cret.
type password struct{}

func (password) Auth(_ context.Context, _ *connection.Connection, _, user, pass string) hooks.Result {
	if user == "alice" && pass == "s3cret" {
		return hooks.Accept("")
	}
	return hooks.Reject("")
}

func TestOneRecipientAtDataAndTLS(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	h, _ := chain(t, fmt.Sprintf("address = %q\nat = \"data\"\npolicy_context = \"line\\nbreak\"", srv.addr()))
	h.StartTLS = true
	s := h.Connect("192.0.2.1")
	s.Helo("client.example")
	hookstest.ExpectReply(t, s.StartTLS(), "220 2.0.0 Ready to start TLS")
	s.Cmd("HELO client.example")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
	got, _ := srv.stats()
	if len(got) != 1 {
		t.Fatalf("server got %d requests; want 1 (at DATA only)", len(got))
	}
	for _, want := range []string{"protocol_state=DATA\n", "protocol_name=SMTP\n", "recipient=bob@example.test\n", "recipient_count=1\n",
		"encryption_protocol=TLSv1.3\n", "encryption_cipher=TLS_AES_128_GCM_SHA256\n", "encryption_keysize=128\n",
		"policy_context=line?break\n"} {
		if !strings.Contains(got[0], want) {
			t.Errorf("request lacks %q:\n%s", want, got[0])
		}
	}
}

func TestPrependAddsHeaderFieldsOnTop(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", func(r map[string]string) string {
		switch r["protocol_state"] {
		case "RCPT":
			return "action=PREPEND X-Rcpt: " + r["recipient"] + "\n\n"
		case "END-OF-MESSAGE":
			return "action=prepend X-Size: " + r["size"] + "\n\n"
		}
		return "action=DUNNO\n\n"
	})
	h, _ := chain(t, fmt.Sprintf("address = %q\nat = [\"rcpt\", \"end_of_data\"]", srv.addr()))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test", "carol@example.test"}, msg), 250, "queued as")
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages; want 1", len(q))
	}
	want := "X-Rcpt: bob@example.test\r\nX-Rcpt: carol@example.test\r\nX-Size: 22\r\nReceived: "
	if !strings.HasPrefix(string(q[0].Data), want) {
		t.Errorf("message starts:\n%.200s\nwant:\n%s", q[0].Data, want)
	}
}

func TestDiscardAcceptsAndDrops(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DISCARD spam trap"))
	h, p := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	var log hookstest.LogBuffer
	p.SetLogger(log.Logger())
	s := afterMail(t, h)
	id := s.Transaction().ID
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	hookstest.ExpectReply(t, s.Data(msg), "250 2.0.0 Ok: queued as "+id)
	if q := h.Queued(); len(q) != 0 {
		t.Errorf("queued %d messages; want none", len(q))
	}
	if !strings.Contains(log.String(), `msg="policy server discarded the message"`) || !strings.Contains(log.String(), `text="spam trap"`) {
		t.Errorf("log:\n%s", log.String())
	}
}

func TestConnectionReuse(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	h, _ := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	for range 3 {
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Send("alice@example.org", []string{"a@example.test", "b@example.test"}, msg), 250, "queued as")
	}
	got, conns := srv.stats()
	if len(got) != 6 || conns != 1 {
		t.Errorf("%d requests on %d connections; want 6 on 1", len(got), conns)
	}
}

func TestMaxIdleZeroOpensOneConnectionPerRequest(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	h, _ := chain(t, fmt.Sprintf("address = %q\nmax_idle = 0", srv.addr()))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"a@example.test", "b@example.test"}, msg), 250, "queued as")
	if got, conns := srv.stats(); len(got) != 2 || conns != 2 {
		t.Errorf("%d requests on %d connections; want 2 on 2", len(got), conns)
	}
}

// A server that closes its connection after each reply: the next request
// fails on the kept connection and is sent again on a new one.
func TestReconnectsWhenTheServerClosedTheConnection(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	srv.closeAfter = true
	h, _ := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"a@example.test", "b@example.test", "c@example.test"}, msg), 250, "queued as")
	if got, conns := srv.stats(); len(got) != 3 || conns != 3 {
		t.Errorf("%d requests on %d connections; want 3 on 3", len(got), conns)
	}
}

func TestUnixSocket(t *testing.T) {
	srv := startServer(t, "unix", filepath.Join(t.TempDir(), "policy.sock"), action("REJECT 5.7.0 Not here"))
	h, _ := chain(t, fmt.Sprintf("address = %q", srv.addr()))
	s := afterMail(t, h)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "550 5.7.0 Not here")
}

// failures are the ways a policy server fails to answer.
var failures = []struct {
	name   string
	answer func(map[string]string) string
	err    string
}{
	{"hang", func(map[string]string) string { return hang }, "i/o timeout"},
	{"close", func(map[string]string) string { return hangUp }, "EOF"},
	{"garbage", func(map[string]string) string { return "Hello there\n\n" }, "Hello there\\\" is no name=value attribute"},
	{"no action", func(map[string]string) string { return "result=ok\n\n" }, "garbled reply: no action attribute"},
	{"long line", func(map[string]string) string { return "action=REJECT " + strings.Repeat("x", 5000) + "\n\n" }, "garbled reply: a line longer than 4096 bytes"},
	{"unknown action", func(map[string]string) string { return "action=PERMIT_AUTH_DESTINATION\n\n" }, "unknown action \\\"PERMIT_AUTH_DESTINATION\\\""},
}

func TestFailureActionDefer(t *testing.T) {
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, "tcp", "127.0.0.1:0", tc.answer)
			h, _ := chain(t, fmt.Sprintf("address = %q\ntimeout = \"300ms\"", srv.addr()))
			var log hookstest.LogBuffer
			h.Logger = log.Logger()
			s := afterMail(t, h)
			start := time.Now()
			hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.3.5 Server configuration problem")
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("the refusal took %v; want it within the 300ms timeout", d)
			}
			if !strings.Contains(log.String(), tc.err) {
				t.Errorf("log lacks %q:\n%s", tc.err, log.String())
			}
		})
	}
}

func TestFailureActionAccept(t *testing.T) {
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, "tcp", "127.0.0.1:0", tc.answer)
			h, p := chain(t, fmt.Sprintf("address = %q\ntimeout = \"300ms\"\nfailure_action = \"accept\"", srv.addr()))
			var log hookstest.LogBuffer
			p.SetLogger(log.Logger())
			s := afterMail(t, h)
			// The next plugin decides: rcptok accepts a local recipient and
			// still refuses to relay.
			hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
			hookstest.ExpectReply(t, s.Rcpt("victim@elsewhere.example"), "550 5.7.1 relaying denied")
			if !strings.Contains(log.String(), "failure_action accept") || !strings.Contains(log.String(), tc.err) {
				t.Errorf("log:\n%s", log.String())
			}
		})
	}
}

func TestServerDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	h, _ := chain(t, fmt.Sprintf("address = %q", addr))
	var log hookstest.LogBuffer
	h.Logger = log.Logger()
	s := afterMail(t, h)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.3.5 Server configuration problem")
	if want := "connect to policy server " + addr; !strings.Contains(log.String(), want) || !strings.Contains(log.String(), "connection refused") {
		t.Errorf("log lacks %q:\n%s", want, log.String())
	}

	h, _ = chain(t, fmt.Sprintf("address = %q\nfailure_action = \"accept\"", addr))
	s = h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
}

// The hook's deadline bounds a request too, when it is shorter than the
// plugin's timeout.
func TestHookDeadlineBoundsTheRequest(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", func(map[string]string) string { return hang })
	p := hookstest.BuildAs[*policy.Plugin](t, "policy", fmt.Sprintf("address = %q\ntimeout = \"1m\"", srv.addr()))
	h := hookstest.NewWithOptions(t, hookstest.Options{Timeout: 300 * time.Millisecond}, hookstest.Plugin("policy", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)))
	s := afterMail(t, h)
	start := time.Now()
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.3.5 Server configuration problem")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the refusal took %v; want it near the 300ms hook deadline", d)
	}
}

func TestSettingsErrors(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{``, "address is missing"},
		{`address = "localhost"`, `address = "localhost": want host:port`},
		{`address = "unix:"`, "the unix socket path is empty"},
		{`address = "127.0.0.1:10023"` + "\nat = \"helo\"", `at: "helo": want "rcpt", "data" or "end_of_data"`},
		{`address = "127.0.0.1:10023"` + "\nat = []", "at = []: want one or more"},
		{`address = "127.0.0.1:10023"` + "\nat = 3", "at: want a string or a list of strings"},
		{`address = "127.0.0.1:10023"` + "\nfailure_action = \"reject\"", `failure_action = "reject": want "defer" or "accept"`},
		{`address = "127.0.0.1:10023"` + "\ntimeout = \"0s\"", "timeout = 0s: want a positive duration"},
		{`address = "127.0.0.1:10023"` + "\nidle_timeout = \"-1s\"", "idle_timeout = -1s: want a positive duration"},
		{`address = "127.0.0.1:10023"` + "\nmax_idle = -1", "max_idle = -1: want 0 or more"},
		{`address = "127.0.0.1:10023"` + "\nok_accept = true", `unknown key`},
	} {
		hookstest.ExpectBuildError(t, "policy", tc.settings, tc.want)
	}
	// inet: as Postfix writes it.
	hookstest.Build(t, "policy", `address = "inet:127.0.0.1:10023"`)
}

func TestReadmeExample(t *testing.T) {
	p := hookstest.BuildFromReadme(t, "policy", "README.md")
	if err := p.(interface{ Close() error }).Close(); err != nil {
		t.Fatal(err)
	}
}

// Close closes the kept connections: the server sees its end.
func TestCloseClosesIdleConnections(t *testing.T) {
	eof := make(chan error, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			eof <- err
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				eof <- err
				return
			}
			if line == "\n" {
				c.Write([]byte("action=DUNNO\n\n"))
			}
		}
	}()
	h, p := chain(t, fmt.Sprintf("address = %q", ln.Addr().String()))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
	p.Close()
	select {
	case err := <-eof:
		if !errors.Is(err, io.EOF) {
			t.Errorf("server read %v; want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the kept connection is still open 5s after Close")
	}
}

// Sessions at the same time each take a connection of their own; the
// pool keeps at most max_idle of them for later.
func TestConcurrentSessions(t *testing.T) {
	srv := startServer(t, "tcp", "127.0.0.1:0", action("DUNNO"))
	h, _ := chain(t, fmt.Sprintf("address = %q\nmax_idle = 2", srv.addr()))
	const sessions, each = 8, 5
	var wg sync.WaitGroup
	for range sessions {
		s := h.Connect("192.0.2.1")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
			}
		}()
	}
	wg.Wait()
	got, conns := srv.stats()
	if len(got) != sessions*each || conns > sessions*each || conns < 1 {
		t.Errorf("%d requests on %d connections; want %d", len(got), conns, sessions*each)
	}
	t.Logf("%d requests on %d connections", len(got), conns)
}

// BenchmarkRcpt measures one RCPT asked of a loopback policy server over a
// kept connection.
func BenchmarkRcpt(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\n" {
						c.Write([]byte("action=DUNNO\n\n"))
					}
				}
			}()
		}
	}()
	p := hookstest.BuildAs[*policy.Plugin](b, "policy", fmt.Sprintf("address = %q", ln.Addr().String()))
	h := hookstest.New(b, hookstest.Plugin("policy", p),
		hookstest.Plugin("rcptok", hookstest.Build(b, "rcptok", `domains = ["example.test"]`)))
	h.Logger = slog.New(slog.DiscardHandler)
	s := afterMail(b, h)
	b.ResetTimer()
	for i := range b.N {
		if rep := s.Rcpt("bob@example.test"); rep.Code != 250 {
			b.Fatalf("%v", rep)
		}
		if i%50 == 49 {
			s.Reset()
			s.Mail("alice@example.org")
		}
	}
}
