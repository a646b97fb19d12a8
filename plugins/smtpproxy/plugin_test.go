package smtpproxy_test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/smtpproxy"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

const body = "Subject: hi\r\n\r\nbody\r\n.dot line\r\n"

var unknownUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}

// proxy builds smtpproxy with the settings and a chain of smtpproxy then
// rcptok for example.test, as the README places them.
func proxy(t *testing.T, settings string, opts ...hookstest.Options) (*hookstest.Harness, *smtpproxy.Plugin) {
	t.Helper()
	p := hookstest.BuildAs[*smtpproxy.Plugin](t, "smtpproxy", settings)
	ok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	var o hookstest.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	return hookstest.NewWithOptions(t, o, hookstest.Plugin("smtpproxy", p), hookstest.Plugin("rcptok", ok)), p
}

// host is the settings line for a downstream address.
func host(addr string) string { return `host = "` + addr + `"` + "\nconnect_timeout = \"5s\"\n" }

// oneMessage fails the test unless the downstream got exactly one
// message, from a@example.org to want, ending with body; it returns it.
func oneMessage(t *testing.T, d *queuetest.Downstream, want ...string) queuetest.Message {
	t.Helper()
	got := d.Messages()
	if len(got) != 1 {
		t.Fatalf("downstream got %d messages, want 1: %+v", len(got), got)
	}
	m := got[0]
	if m.From != "a@example.org" || strings.Join(m.To, " ") != strings.Join(want, " ") {
		t.Errorf("downstream envelope: from %q to %v; want to %v", m.From, m.To, want)
	}
	if !strings.HasPrefix(string(m.Data), "Received: ") || !strings.HasSuffix(string(m.Data), "\r\n"+body) {
		t.Errorf("downstream got %q", m.Data)
	}
	return m
}

func TestBadRecipientIsRefusedAtRcptAndTheGoodOneDeliveredOnce(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"nobody@example.test": unknownUser}})
	h, _ := proxy(t, host(d.Addr))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	if n := len(d.Messages()); n != 0 {
		t.Fatalf("downstream has %d messages after MAIL", n)
	}
	hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), "550 5.1.1 No such user")
	hookstest.Expect(t, s.Rcpt("bob@example.test"), 250)
	rep := s.Data(body)
	hookstest.Expect(t, rep, 250, "queued as")
	oneMessage(t, d, "bob@example.test")
}

func TestDownstreamReplyToTheMessageIsTheClients(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *smtp.SMTPError
		want string
	}{
		{"spam", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Spam detected"},
			"554 5.7.1 Downstream server refused the end of the message: 554 5.7.1 Spam detected"},
		{"greylisted", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted"},
			"451 4.7.1 Downstream server refused the end of the message: 451 4.7.1 Greylisted; try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, queuetest.Options{DataErr: map[string]*smtp.SMTPError{"": tc.err}})
			h, _ := proxy(t, host(d.Addr))
			rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"bob@example.test"}, body)
			hookstest.ExpectReply(t, rep, tc.want)
			if n := len(d.Messages()); n != 0 {
				t.Errorf("downstream kept %d messages it refused", n)
			}
		})
	}
}

// queuePost records the smtpproxy.remote_id note after a queued message.
type queuePost struct {
	mu  sync.Mutex
	ids []string
}

func (q *queuePost) QueuePost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ids = append(q.ids, smtpproxy.NoteRemoteID.Get(&tx.Notes))
}

func TestRemoteQueueIDIsNotedAndOursAnnounced(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{QueuedAs: "4dZ3Kx0Qm9z7"})
	p := hookstest.Build(t, "smtpproxy", host(d.Addr))
	ok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	ids := &queuePost{}
	h := hookstest.New(t, hookstest.Plugin("smtpproxy", p), hookstest.Plugin("rcptok", ok), hookstest.Plugin("ids", ids))
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"bob@example.test"}, body)
	hookstest.Expect(t, rep, 250, "Ok: queued as ")
	if strings.Contains(rep.Msg, "4dZ3Kx0Qm9z7") {
		t.Errorf("reply %q announces the downstream's id instead of ours", rep)
	}
	if len(ids.ids) != 1 || ids.ids[0] != "4dZ3Kx0Qm9z7" {
		t.Errorf("note %s = %v, want [4dZ3Kx0Qm9z7]", smtpproxy.NoteRemoteID, ids.ids)
	}
}

// TestForeignDomainStaysRefused proves the proxy is no open relay: the
// downstream accepts every recipient, but rcptok after the proxy refuses
// the foreign one, and the message reaches the downstream only for the
// recipient Sluice accepted.
func TestForeignDomainStaysRefused(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	h, _ := proxy(t, host(d.Addr))
	s := h.Connect("192.0.2.1")
	tr := s.SendAll("a@example.org", []string{"victim@elsewhere.test", "bob@example.test", "other@elsewhere.test"}, body)
	hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.7.1 relaying denied")
	hookstest.Expect(t, tr.Rcpt[1], 250)
	hookstest.ExpectReply(t, tr.Rcpt[2], "550 5.7.1 relaying denied")
	hookstest.Expect(t, tr.Data, 250, "queued as")
	oneMessage(t, d, "bob@example.test")

	// Only foreign recipients: no message at all.
	tr = s.SendAll("a@example.org", []string{"victim@elsewhere.test"}, body)
	hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.7.1 relaying denied")
	if tr.Data.Code != 0 {
		t.Errorf("DATA was sent with no accepted recipient: %s", tr.Data)
	}
	if n := len(d.Messages()); n != 1 {
		t.Errorf("downstream has %d messages, want still 1", n)
	}
}

func TestLMTPRecipientRefusedAfterTheMessage(t *testing.T) {
	overQuota := &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Over quota"}
	opts := queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{"carol@example.test": overQuota}}
	rcpts := []string{"bob@example.test", "carol@example.test"}

	t.Run("with a fallback_queue", func(t *testing.T) {
		d := queuetest.StartDownstream(t, opts)
		h, p := proxy(t, host(d.Addr)+"lmtp = true\nfallback_queue = \"spool\"")
		spool := &hookstest.QueueRecorder{}
		if err := p.SetRoutes(map[string]hooks.Queue{"spool": spool}); err != nil {
			t.Fatal(err)
		}
		rep := h.Connect("192.0.2.1").Send("a@example.org", rcpts, body)
		hookstest.Expect(t, rep, 250, "queued as")
		oneMessage(t, d, "bob@example.test")
		got := spool.Messages()
		if len(got) != 1 || strings.Join(got[0].Recipients, " ") != "carol@example.test" || !strings.HasSuffix(string(got[0].Data), body) {
			t.Fatalf("fallback_queue got %+v, want the message for carol alone", got)
		}
	})
	t.Run("without one the message is deferred", func(t *testing.T) {
		d := queuetest.StartDownstream(t, opts)
		h, _ := proxy(t, host(d.Addr)+"lmtp = true")
		rep := h.Connect("192.0.2.1").Send("a@example.org", rcpts, body)
		hookstest.ExpectReply(t, rep, "451 4.3.0 Downstream server refused <carol@example.test>: 452 4.2.2 <carol@example.test> Over quota; 1 of 2 recipients accepted; try again later")
	})
}

func TestMailRefusalIsTheDownstreamsReply(t *testing.T) {
	addr := queuetest.SMTPSink(t, "-f", "MAIL", "-B", "553 5.1.8 Sender domain unknown")
	h, _ := proxy(t, host(addr))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.ExpectReply(t, s.Mail("a@example.org"), "553 5.1.8 Sender domain unknown")
}

func TestUnreachableDownstreamDefersMail(t *testing.T) {
	h, _ := proxy(t, `host = "127.0.0.1:1"`)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.ExpectReply(t, s.Mail("a@example.org"), "451 4.4.1 Downstream server unreachable; try again later")
}

// TestBrokenDownstreamDefers runs against Postfix's smtp-sink told to
// hang up or to stall: every failure is a clear 451, in time.
func TestBrokenDownstreamDefers(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		step string // "rcpt" or "data"
		want string
	}{
		{"hangs up at RCPT", []string{"-q", "RCPT"}, "rcpt", "451 4.4.2 Connection to the downstream server failed; try again later"},
		{"hangs up at DATA", []string{"-q", "DATA"}, "data", "451 4.4.2 Connection to the downstream server failed; try again later"},
		{"421 at RCPT", []string{"-Q", "RCPT"}, "rcpt", "451 4.0.0 Downstream server closed the connection: 421 Server closing connection; try again later"},
		{"no reply to DATA in time", []string{"-w", "30"}, "data", "451 4.4.2 Downstream server timed out; try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := queuetest.SMTPSink(t, tc.args...)
			h, _ := proxy(t, host(addr), hookstest.Options{Timeout: 2 * time.Second})
			s := h.Connect("192.0.2.1")
			start := time.Now()
			tr := s.SendAll("a@example.org", []string{"bob@example.test"}, body)
			got := tr.Data
			if tc.step == "rcpt" {
				got = tr.Rcpt[0]
			}
			hookstest.ExpectReply(t, got, tc.want)
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("took %v", el)
			}
			// The next transaction opens a new session and fails the same
			// clear way, without a panic.
			rep := s.Send("a@example.org", []string{"bob@example.test"}, body)
			if rep.Code/100 != 4 {
				t.Errorf("second transaction: %s; want a 4xx", rep)
			}
		})
	}
}

// relay is a TCP relay in front of a downstream that counts the
// connections through it: the downstream behind it is real; the relay
// only lets the test see how many connections are open.
type relay struct {
	addr  string
	mu    sync.Mutex
	open  int
	all   int
	conns map[net.Conn]bool // the downstream side of each open connection
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r := &relay{addr: l.Addr().String(), conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.open++
			r.all++
			r.mu.Unlock()
			go r.pipe(c, target)
		}
	}()
	return r
}

func (r *relay) pipe(c net.Conn, target string) {
	defer func() {
		r.mu.Lock()
		r.open--
		r.mu.Unlock()
	}()
	d, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	r.conns[d] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.conns, d)
		r.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { io.Copy(d, c); done <- struct{}{} }()
	go func() { io.Copy(c, d); done <- struct{}{} }()
	<-done
	c.Close()
	d.Close()
	<-done
}

// cut closes every open connection, as a downstream's idle timeout does.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for d := range r.conns {
		d.Close()
	}
}

func (r *relay) counts() (open, all int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.open, r.all
}

// waitFor waits until cond holds, or fails the test after 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %s", what)
		}
		<-tick.C
	}
}

func TestOneDownstreamConnectionPerClientConnection(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{RcptErr: map[string]*smtp.SMTPError{"nobody@example.test": unknownUser}})
	r := startRelay(t, d.Addr)
	h, _ := proxy(t, host(r.addr))

	s := h.Connect("192.0.2.1")
	for i := 0; i < 2; i++ {
		hookstest.Expect(t, s.Send("a@example.org", []string{"bob@example.test"}, body), 250, "queued as")
	}
	if open, all := r.counts(); open != 1 || all != 1 {
		t.Fatalf("after two transactions on one connection: %d open, %d opened; want 1 and 1", open, all)
	}
	s.Close()
	waitFor(t, "the downstream connection is closed after the disconnect", func() bool { open, _ := r.counts(); return open == 0 })

	// Many connections, each with transactions that end every way: queued,
	// RSET after RCPT, a refused recipient only, a nested MAIL refused.
	const clients = 8
	for i := 0; i < clients; i++ {
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Send("a@example.org", []string{"bob@example.test"}, body), 250)
		hookstest.Expect(t, s.Mail("a@example.org"), 250)
		hookstest.Expect(t, s.Rcpt("bob@example.test"), 250)
		hookstest.Expect(t, s.Cmd("RSET"), 250)
		tr := s.SendAll("a@example.org", []string{"nobody@example.test"}, body)
		hookstest.Expect(t, tr.Rcpt[0], 550)
		hookstest.Expect(t, s.Mail("a@example.org"), 250)
		hookstest.Expect(t, s.Mail("a@example.org"), 503)
		hookstest.Expect(t, s.Rcpt("bob@example.test"), 250)
		hookstest.Expect(t, s.Data(body), 250)
		if i%2 == 0 {
			hookstest.Expect(t, s.Mail("a@example.org"), 250) // left open at the disconnect
		}
		s.Close()
	}
	waitFor(t, "every downstream connection is closed", func() bool { open, _ := r.counts(); return open == 0 })
	if _, all := r.counts(); all != 1+clients {
		t.Errorf("%d downstream connections opened, want %d: one per client connection", all, 1+clients)
	}
	if n := len(d.Messages()); n != 2+2*clients {
		t.Errorf("downstream got %d messages, want %d", n, 2+2*clients)
	}
}

// refuseAfterProxy refuses one recipient the downstream accepted, and
// one sender: a local plugin placed after smtpproxy.
type refuseAfterProxy struct{}

func (refuseAfterProxy) Mail(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, from string) hooks.Result {
	if from == "spammer@example.org" {
		return hooks.Reject("bad sender")
	}
	return hooks.Result{}
}

func (refuseAfterProxy) Rcpt(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, rcpt string) hooks.Result {
	if rcpt == "trap@example.test" {
		return hooks.Reject("spam trap")
	}
	return hooks.Result{}
}

func TestDownstreamGetsNoRecipientSluiceRefused(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	r := startRelay(t, d.Addr)
	p := hookstest.Build(t, "smtpproxy", host(r.addr))
	ok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("smtpproxy", p), hookstest.Plugin("trap", refuseAfterProxy{}), hookstest.Plugin("rcptok", ok))
	s := h.Connect("192.0.2.1")
	tr := s.SendAll("a@example.org", []string{"bob@example.test", "trap@example.test", "alice@example.test"}, body)
	hookstest.ExpectReply(t, tr.Rcpt[1], "550 5.7.1 spam trap")
	hookstest.Expect(t, tr.Data, 250)
	oneMessage(t, d, "bob@example.test", "alice@example.test")
	if _, all := r.counts(); all != 1 {
		t.Errorf("%d downstream connections; the recipients were set right on the one open", all)
	}
}

func TestAClosedDownstreamSessionIsReplacedAtTheNextMail(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	r := startRelay(t, d.Addr)
	h, _ := proxy(t, host(r.addr))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"bob@example.test"}, body), 250)
	r.cut()
	waitFor(t, "the relay cut the connection", func() bool { open, _ := r.counts(); return open == 0 })
	hookstest.Expect(t, s.Send("a@example.org", []string{"bob@example.test"}, body), 250, "queued as")
	if _, all := r.counts(); all != 2 {
		t.Errorf("%d downstream connections, want 2", all)
	}
	if n := len(d.Messages()); n != 2 {
		t.Errorf("downstream got %d messages, want 2", n)
	}
}

func TestSenderRefusedAfterTheProxyLeavesNoTransactionDownstream(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{})
	r := startRelay(t, d.Addr)
	p := hookstest.Build(t, "smtpproxy", host(r.addr))
	ok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("smtpproxy", p), hookstest.Plugin("trap", refuseAfterProxy{}), hookstest.Plugin("rcptok", ok))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.ExpectReply(t, s.Mail("spammer@example.org"), "550 5.7.1 bad sender")
	tr := s.SendAll("a@example.org", []string{"bob@example.test"}, body)
	hookstest.Expect(t, tr.Data, 250, "queued as")
	oneMessage(t, d, "bob@example.test")
	if _, all := r.counts(); all != 1 {
		t.Errorf("%d downstream connections, want 1", all)
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, wantErr string }{
		{`host = "127.0.0.1"`, "host"},
		{`starttls = "yes"`, "starttls"},
		{`helo = "two words"`, "helo"},
		{`connect_timeout = "30"`, "connect_timeout"},
		{`data_timeout = "0s"`, "data_timeout"},
		{`hots = "x:1"`, "hots"},
	} {
		hookstest.ExpectBuildError(t, "smtpproxy", tc.settings, tc.wantErr)
	}
	p := hookstest.BuildFromReadme(t, "smtpproxy", "README.md").(*smtpproxy.Plugin)
	if p.CarriesDSN() {
		t.Errorf("the README example offers DSN without a dsn_queue")
	}
	withRoutes := hookstest.BuildAs[*smtpproxy.Plugin](t, "smtpproxy", "lmtp = true\nfallback_queue = \"spool\"")
	if got := withRoutes.Routes(); len(got) != 1 || got[0] != "spool" || !withRoutes.CarriesDSN() {
		t.Errorf("fallback_queue = \"spool\": routes %v, DSN %v; want [spool] and DSN (dsn_queue defaults to it)", got, withRoutes.CarriesDSN())
	}
}
