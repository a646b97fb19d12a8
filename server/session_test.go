package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/transaction"
)

// relay accepts every recipient.
type relay struct{}

func (relay) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

func accept() hooks.Instance { return hookstest.Plugin("relay", relay{}) }

// events records the hooks that ran, in order.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(format string, args ...any) {
	e.mu.Lock()
	e.log = append(e.log, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.log
	e.log = nil
	return l
}

// lifecycle records reset_transaction, disconnect and queue_post.
type lifecycle struct{ events }

func (l *lifecycle) Reset(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) {
	l.add("reset %s", tx.Sender)
}
func (l *lifecycle) Disconnect(context.Context, *connection.Connection) { l.add("disconnect") }
func (l *lifecycle) QueuePost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) {
	l.add("queue_post %s", tx.QueueID)
}

const msg = "From: alice@example.org\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello Bob.\r\n"

func TestFullTransactionQueued(t *testing.T) {
	lc := &lifecycle{}
	h := hookstest.New(t, accept(), hookstest.Plugin("lc", lc), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Greeting(), 220, "220 mx.example.test ESMTP Sluice ready")
	hookstest.Expect(t, s.Helo("client.example.test"), 250, "250 mx.example.test Hello client.example.test")
	hookstest.Expect(t, s.Mail("alice@example.org"), 250, "250 2.1.0 Sender OK")
	hookstest.Expect(t, s.Rcpt("bob@example.test"), 250, "250 2.1.5 Recipient OK")
	txID := s.Transaction().ID
	rep := s.Data(msg)
	hookstest.Expect(t, rep, 250, "250 2.0.0 Ok: queued as "+txID)
	if rep.Close {
		t.Fatal("250 closes the connection")
	}
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages", len(q))
	}
	m := q[0]
	if m.Sender != "alice@example.org" || !slices.Equal(m.Recipients, []string{"bob@example.test"}) || m.QueueID != txID {
		t.Fatalf("queued envelope: %+v", m)
	}
	want := "Received: from client.example.test ([192.0.2.1])\r\n" +
		"\tby mx.example.test (Sluice) with ESMTP id " + txID + "\r\n" +
		"\tfor <bob@example.test>; Fri, 02 Jan 2026 03:04:05 +0000\r\n" + msg
	if string(m.Data) != want {
		t.Fatalf("queued message:\n%q\nwant\n%q", m.Data, want)
	}
	if s.Conn().Messages != 1 {
		t.Fatalf("Conn().Messages = %d", s.Conn().Messages)
	}
	if got := lc.take(); !slices.Equal(got, []string{"queue_post " + txID, "reset alice@example.org"}) {
		t.Fatalf("after DATA: %q, want queue_post then reset_transaction", got)
	}
	if s.Transaction() != nil {
		t.Fatal("the transaction outlived the end of DATA")
	}
	// A second message on the same connection.
	hookstest.Expect(t, s.Send("carol@example.org", []string{"d@example.test", "e@example.test"}, "Subject: 2\r\n\r\nx\r\n"), 250)
	q = h.Queued()
	if len(q) != 2 || q[1].Sender != "carol@example.org" || len(q[1].Recipients) != 2 {
		t.Fatalf("second message: %+v", q)
	}
	if data := string(q[1].Data); strings.Contains(data, "\tfor <") || !strings.HasPrefix(data, "Received: from client.example.test ([192.0.2.1])\r\n") {
		t.Fatalf("with two recipients the Received header names none: %q", data)
	}
	if s.Conn().Messages != 2 {
		t.Fatalf("Conn().Messages = %d", s.Conn().Messages)
	}
}

func TestReceivedWithHeloAndIPv6(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Queue())
	s := h.Connect("[2001:db8::1]:1234")
	hookstest.Expect(t, s.Session.Helo("old.example"), 250)
	hookstest.Expect(t, s.Send("", []string{"bob@example.test"}, "Subject: bounce\r\n\r\n"), 250)
	data := string(h.Queued()[0].Data)
	if !strings.HasPrefix(data, "Received: from old.example ([2001:db8::1])\r\n\tby mx.example.test (Sluice) with SMTP id ") {
		t.Fatalf("Received after HELO from IPv6: %q", data)
	}
	if h.Queued()[0].Sender != "" {
		t.Fatalf("the null sender became %q", h.Queued()[0].Sender)
	}
}

func TestCommandsOutOfOrder(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.Expect(t, s.Rcpt("bob@example.test"), 503, "503 5.5.1")
	hookstest.Expect(t, s.Session.Data(""), 503, "503 5.5.1")
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	hookstest.Expect(t, s.Mail("mallory@example.org"), 503, "503 5.5.1")
	if s.Transaction().Sender != "alice@example.org" {
		t.Fatalf("the nested MAIL replaced the sender: %q", s.Transaction().Sender)
	}
	hookstest.Expect(t, s.Session.Data(""), 554, "554 5.5.1 No valid recipients")
	s.Reset()
	hookstest.Expect(t, s.Mail("mallory@example.org"), 250)
	if len(h.Queued()) != 0 {
		t.Fatal("something was queued")
	}
}

func TestDataWithOnlyRejectedRecipients(t *testing.T) {
	h := hookstest.New(t, hookstest.Queue()) // nobody accepts recipients
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("c"), 250)
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.Expect(t, s.Rcpt("b@example.test"), 450, "450 4.7.1 No plugin decided if relaying is allowed")
	hookstest.Expect(t, s.Data(msg), 554, "554 5.5.1")
	if len(h.Queued()) != 0 || s.Transaction() == nil || len(s.Transaction().Recipients) != 0 {
		t.Fatal("a rejected recipient was kept")
	}
}

func TestTooManyRecipients(t *testing.T) {
	var calls int
	counting := rcptFunc(func(string) hooks.Result { calls++; return hooks.Accept("") })
	h := hookstest.New(t, hookstest.Plugin("count", counting), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("c"), 250)
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	for i := range server.DefaultMaxRecipients {
		hookstest.Expect(t, s.Rcpt(fmt.Sprintf("r%d@example.test", i)), 250)
	}
	hookstest.Expect(t, s.Rcpt("one-too-many@example.test"), 452, "452 4.5.3")
	if calls != server.DefaultMaxRecipients {
		t.Fatalf("the rcpt hook ran %d times: the 101st must be refused before the plugins", calls)
	}
	hookstest.Expect(t, s.Data(msg), 250)
	if got := len(h.Queued()[0].Recipients); got != 100 {
		t.Fatalf("queued with %d recipients, want 100", got)
	}

	h.Limits.MaxRecipients = 2
	s = h.Connect("192.0.2.1")
	s.Helo("c")
	s.Mail("a@example.org")
	hookstest.Expect(t, s.Rcpt("1@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("2@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("3@example.test"), 452, "452 4.5.3")
}

type rcptFunc func(string) hooks.Result

func (f rcptFunc) Rcpt(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, r string) hooks.Result {
	return f(r)
}

// sized makes a message of exactly n bytes.
func sized(n int) string {
	head := "Subject: size\r\n\r\n"
	body := strings.Repeat("x", n-len(head)-2) + "\r\n"
	return head + body
}

func TestMessageSizeLimit(t *testing.T) {
	const limit = 4096
	h := hookstest.New(t, accept(), hookstest.Queue())
	h.Limits.MaxMessageBytes = limit
	s := h.Connect("192.0.2.1")

	exact := sized(limit)
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, exact), 250)
	q := h.Queued()
	if len(q) != 1 || !strings.HasSuffix(string(q[0].Data), exact) {
		t.Fatal("a message of exactly the limit was not queued whole")
	}
	rep := s.Send("a@example.org", []string{"b@example.test"}, sized(limit+1))
	hookstest.Expect(t, rep, 552, "552 5.3.4", fmt.Sprint(limit))
	if len(h.Queued()) != 1 {
		t.Fatal("a message over the limit was queued")
	}
	// Still usable: the next transaction goes through.
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)

	// SIZE= over the limit is refused at MAIL.
	hookstest.Expect(t, s.Cmd(fmt.Sprintf("MAIL FROM:<a@example.org> SIZE=%d", limit+1)), 552, "552 5.3.4")
	hookstest.Expect(t, s.Cmd(fmt.Sprintf("MAIL FROM:<a@example.org> SIZE=%d", limit)), 250)
}

type sizePlugin struct {
	relay
	max int64
}

func (p sizePlugin) MaxMessageBytes() int64 { return p.max }

func TestSizePluginLowersTheLimit(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("size", sizePlugin{max: 1000}), hookstest.Queue())
	h.Limits.MaxMessageBytes = 5000
	s := h.Connect("192.0.2.1")
	if s.MaxMessageBytes() != 1000 {
		t.Fatalf("MaxMessageBytes = %d, want the plugin's 1000", s.MaxMessageBytes())
	}
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, sized(1000)), 250)
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, sized(1001)), 552, "552 5.3.4")

	// A plugin cap above the listener's does not raise it.
	h = hookstest.New(t, hookstest.Plugin("size", sizePlugin{max: 9000}), hookstest.Queue())
	h.Limits.MaxMessageBytes = 5000
	if s := h.Connect("192.0.2.1"); s.MaxMessageBytes() != 5000 {
		t.Fatalf("MaxMessageBytes = %d, want the listener's 5000", s.MaxMessageBytes())
	}
}

func TestHeaderTooLong(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Queue())
	h.Limits.MaxHeaderBytes = 100
	s := h.Connect("192.0.2.1")
	long := "Subject: " + strings.Repeat("a", 200) + "\r\n\r\nbody\r\n"
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, long), 552, "552 5.3.4")
	if len(h.Queued()) != 0 {
		t.Fatal("queued")
	}
}

// notesProbe counts, in the transaction's and the connection's notes, the
// transactions it sees, and records what it found at each hook.
type notesProbe struct{ events }

var (
	probeTx   = notes.NewKey[int]("probe.tx")
	probeConn = notes.NewKey[int]("probe.conn")
	probeRcpt = notes.NewKey[bool]("probe.rcpt")
)

func (p *notesProbe) Mail(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	p.add("mail tx=%d conn=%d", notes.Add(&tx.Notes, probeTx, 1), notes.Add(&c.Notes, probeConn, 1))
	return hooks.Result{}
}

func (p *notesProbe) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	probeRcpt.Set(&tx.Notes, true)
	return hooks.Accept("")
}

func TestNotesLifetime(t *testing.T) {
	p := &notesProbe{}
	h := hookstest.New(t, hookstest.Plugin("probe", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	s.Helo("c")
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.Expect(t, s.Rcpt("b@example.test"), 250)
	if !probeRcpt.Get(&s.Transaction().Notes) {
		t.Fatal("a transaction note set at rcpt is gone before DATA")
	}
	s.Reset() // RSET
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
	s.Helo("again") // a new EHLO does not end the connection
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)

	want := []string{"mail tx=1 conn=1", "mail tx=1 conn=2", "mail tx=1 conn=3", "mail tx=1 conn=4"}
	if got := p.take(); !slices.Equal(got, want) {
		t.Fatalf("notes seen at mail: %q, want %q (transaction notes start empty, connection notes persist)", got, want)
	}
	for i, m := range h.Queued() {
		if m.Notes["probe.tx"] != 1 || m.Notes["probe.rcpt"] != true || len(m.Notes) != 2 {
			t.Fatalf("message %d queued with notes %v", i, m.Notes)
		}
	}
	if got := probeConn.Get(&s.Conn().Notes); got != 4 {
		t.Fatalf("connection note = %d, want 4", got)
	}
}

func TestResetTransactionFires(t *testing.T) {
	lc := &lifecycle{}
	h := hookstest.New(t, accept(), hookstest.Plugin("lc", lc), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("c"), 250)
	if got := lc.take(); len(got) != 0 {
		t.Fatalf("EHLO with no transaction: %q", got)
	}
	s.Mail("rset@example.org")
	s.Reset()
	if got := lc.take(); !slices.Equal(got, []string{"reset rset@example.org"}) {
		t.Fatalf("RSET: %q", got)
	}
	s.Reset()
	if got := lc.take(); len(got) != 0 {
		t.Fatalf("RSET with no transaction: %q", got)
	}
	s.Mail("ehlo@example.org")
	hookstest.Expect(t, s.Helo("c2"), 250)
	if got := lc.take(); !slices.Equal(got, []string{"reset ehlo@example.org"}) {
		t.Fatalf("new EHLO: %q", got)
	}
	if s.Transaction() != nil {
		t.Fatal("a new EHLO kept the transaction")
	}
	hookstest.Expect(t, s.Mail("data@example.org"), 250)
	s.Rcpt("b@example.test")
	hookstest.Expect(t, s.Data("no header at all\r\n"), 250)
	if got := lc.take(); len(got) != 2 || got[1] != "reset data@example.org" {
		t.Fatalf("after DATA: %q", got)
	}
	// After a refused message too.
	h.Limits.MaxMessageBytes = 10
	s = h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("big@example.org", []string{"b@example.test"}, msg), 552)
	if got := lc.take(); !slices.Equal(got, []string{"reset big@example.org"}) {
		t.Fatalf("after a refused DATA: %q", got)
	}
}

func TestDisconnectFiresOnClose(t *testing.T) {
	lc := &lifecycle{}
	h := hookstest.New(t, accept(), hookstest.Plugin("lc", lc))
	srv := server.NewSession(context.Background(), connection.New("test", "mx.example.test",
		netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1")), server.SessionConfig{Chain: h.Chain, SpoolDir: t.TempDir()})
	srv.Ehlo("c")
	srv.Mail("FROM:<open@example.org>")
	srv.Close()
	if got := lc.take(); !slices.Equal(got, []string{"reset open@example.org", "disconnect"}) {
		t.Fatalf("Close with a transaction in progress: %q, want reset then disconnect", got)
	}
	if srv.Transaction() != nil {
		t.Fatal("Close kept the transaction")
	}

	srv = server.NewSession(context.Background(), connection.New("test", "mx", netip.AddrPort{}, netip.AddrPort{}), server.SessionConfig{Chain: h.Chain})
	srv.Close()
	if got := lc.take(); !slices.Equal(got, []string{"disconnect"}) {
		t.Fatalf("Close with no transaction: %q", got)
	}
}

type headersEndFunc func(*transaction.Transaction) hooks.Result

func (f headersEndFunc) DataHeadersEnd(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return f(tx)
}

type dataPostFunc func(*transaction.Transaction) hooks.Result

func (f dataPostFunc) DataPost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return f(tx)
}

// newSession starts a server.Session on h's chain with MAIL and RCPT done.
func newSession(t *testing.T, h *hookstest.Harness) *server.Session {
	t.Helper()
	c := connection.New("test", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1"))
	s := server.NewSession(context.Background(), c, server.SessionConfig{Chain: h.Chain, Limits: h.Limits, SpoolDir: t.TempDir(), Now: h.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(s.Close)
	hookstest.Expect(t, s.Ehlo("client.example.test"), 250)
	hookstest.Expect(t, s.Mail("FROM:<a@example.org>"), 250)
	hookstest.Expect(t, s.Rcpt("TO:<b@example.test>"), 250)
	hookstest.Expect(t, s.Data(""), 354)
	return s
}

func TestDataHeadersEndDeny(t *testing.T) {
	var sawSubject string
	var postCalled bool
	lc := &lifecycle{}
	h := hookstest.New(t, accept(),
		hookstest.Plugin("headers", headersEndFunc(func(tx *transaction.Transaction) hooks.Result {
			sawSubject = tx.Header.Get("Subject")
			if tx.Body.Size() != 0 {
				t.Errorf("the body was read before data_headers_end: %d bytes", tx.Body.Size())
			}
			if tx.Header.Get("Subject") == "spam" {
				return hooks.Reject("")
			}
			if tx.Header.Get("Subject") == "go away" {
				return hooks.Result{Code: hooks.DenyDisconnect}
			}
			return hooks.Result{}
		})),
		hookstest.Plugin("post", dataPostFunc(func(*transaction.Transaction) hooks.Result { postCalled = true; return hooks.Result{} })),
		hookstest.Plugin("lc", lc),
		hookstest.Queue())

	s := newSession(t, h)
	body := strings.Repeat("spam spam spam\r\n", 10000)
	r := strings.NewReader("Subject: spam\r\n\r\n" + body)
	rep := s.Message(r)
	hookstest.Expect(t, rep, 554, "554 5.7.1 Message rejected")
	if rep.Close {
		t.Fatal("Deny at data_headers_end closes the connection")
	}
	if r.Len() != 0 {
		t.Fatalf("the body was not drained: %d bytes left", r.Len())
	}
	if sawSubject != "spam" || postCalled || len(h.Queued()) != 0 {
		t.Fatalf("subject %q, data_post called %v, queued %d", sawSubject, postCalled, len(h.Queued()))
	}
	if s.Conn().Messages != 0 {
		t.Fatal("a rejected message was counted")
	}

	// DenyDisconnect answers at once and leaves the rest unread.
	s = newSession(t, h)
	r = strings.NewReader("Subject: go away\r\n\r\n" + body)
	rep = s.Message(r)
	hookstest.Expect(t, rep, 554, "554 5.7.1 Message rejected")
	if !rep.Close || r.Len() == 0 {
		t.Fatalf("DenyDisconnect: close %v, %d bytes left unread", rep.Close, r.Len())
	}
	if len(h.Queued()) != 0 {
		t.Fatal("queued")
	}

	// Declined: the message goes through.
	s = newSession(t, h)
	hookstest.Expect(t, s.Message(strings.NewReader(msg)), 250)
	if !postCalled || len(h.Queued()) != 1 {
		t.Fatal("a declined data_headers_end stopped the message")
	}
}

func TestDataPostDone(t *testing.T) {
	var queueCalled bool
	h := hookstest.New(t, accept(),
		hookstest.Plugin("archive", dataPostFunc(func(tx *transaction.Transaction) hooks.Result {
			if tx.Header.Get("Subject") == "plain" {
				return hooks.Result{Code: hooks.Done}
			}
			return hooks.Result{Code: hooks.Done, Msg: "archived"}
		})),
		hookstest.Plugin("q", queueFunc(func() hooks.Result { queueCalled = true; return hooks.Accept("") })))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250, "250 2.0.0 archived")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: plain\r\n\r\n"), 250, "250 2.0.0 Ok: accepted by archive")
	if queueCalled {
		t.Fatal("the queue ran after data_post's Done")
	}
}

func TestDataPostRejects(t *testing.T) {
	h := hookstest.New(t, accept(),
		hookstest.Plugin("filter", dataPostFunc(func(tx *transaction.Transaction) hooks.Result {
			body, _ := io.ReadAll(tx.Body.Reader())
			if strings.Contains(string(body), "virus") {
				return hooks.Result{Code: hooks.Deny, Msg: "infected", Enhanced: [3]int{5, 7, 0}}
			}
			if tx.Header.Get("Received") == "" {
				t.Error("data_post ran before the Received header was added")
			}
			return hooks.Defer("scanner busy")
		})),
		hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: x\r\n\r\na virus\r\n"), 552, "552 5.7.0 infected")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 452, "452 4.7.1 scanner busy")
	if len(h.Queued()) != 0 {
		t.Fatal("a rejected message was queued")
	}
}

type queueFunc func() hooks.Result

func (f queueFunc) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return f()
}

func TestQueueWithNoTaker(t *testing.T) {
	var asked int
	lc := &lifecycle{}
	h := hookstest.New(t, accept(), hookstest.Plugin("lc", lc),
		hookstest.Plugin("q", queueFunc(func() hooks.Result { asked++; return hooks.Result{} })))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 451, "451 4.3.0")
	if asked != 1 {
		t.Fatalf("the queue plugin was asked %d times", asked)
	}
	if s.Conn().Messages != 0 {
		t.Fatal("a message nobody queued was counted")
	}
	if got := lc.take(); slices.ContainsFunc(got, func(e string) bool { return strings.HasPrefix(e, "queue_post") }) {
		t.Fatalf("queue_post ran for a message nobody queued: %q", got)
	}

	// No queue plugin at all.
	h = hookstest.New(t, accept())
	s = h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 451, "451 4.3.0 Queuing declined or disabled")

	// A failing queue defers.
	h = hookstest.New(t, accept())
	h.Chain = mustChain(t, slog.New(slog.NewTextHandler(io.Discard, nil)), accept(), hookstest.Plugin("q", queueFunc(func() hooks.Result { return hooks.Fail(io.ErrShortWrite) })))
	s = h.Connect("192.0.2.1")
	rep := s.Send("a@example.org", []string{"b@example.test"}, msg)
	hookstest.Expect(t, rep, 451, "451 4.3.0 Queueing failed")
	if strings.Contains(rep.String(), "short write") {
		t.Fatalf("the error's text reached the client: %q", rep)
	}
}

func mustChain(t *testing.T, log *slog.Logger, ins ...hooks.Instance) *hooks.Chain {
	t.Helper()
	ch, err := hooks.NewChain(ins, hooks.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

type rewriter struct{}

func (rewriter) MailPre(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, from *string) hooks.Result {
	if strings.HasPrefix(*from, "prvs=") { // BATV
		_, addr, _ := strings.Cut(*from, "=")
		_, addr, _ = strings.Cut(addr, "=")
		*from = addr
	}
	if *from == "blocked@example.org" {
		return hooks.Reject("")
	}
	return hooks.Result{}
}

func (rewriter) RcptPre(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, rcpt *string) hooks.Result {
	local, domain, _ := strings.Cut(*rcpt, "@")
	local, _, _ = strings.Cut(local, "+") // sub-address
	*rcpt = local + "@" + domain
	if local == "nobody" {
		return hooks.Result{Code: hooks.DenySoft, Msg: "later"}
	}
	return hooks.Result{Code: hooks.OK} // OK at rcpt_pre only lets rcpt run
}

type seen struct{ events }

func (p *seen) Mail(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	p.add("mail %s sender=%s", from, tx.Sender)
	return hooks.Result{}
}

func (p *seen) Rcpt(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, rcpt string) hooks.Result {
	p.add("rcpt %s", rcpt)
	return hooks.Result{}
}

func TestPreHooksRewriteAddresses(t *testing.T) {
	p := &seen{}
	h := hookstest.New(t, hookstest.Plugin("rewrite", rewriter{}), hookstest.Plugin("seen", p), accept(), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("prvs=1234abcd=alice@example.org", []string{"bob+lists@example.test"}, msg), 250)
	if got := p.take(); !slices.Equal(got, []string{"mail alice@example.org sender=alice@example.org", "rcpt bob@example.test"}) {
		t.Fatalf("the later hooks saw %q", got)
	}
	m := h.Queued()[0]
	if m.Sender != "alice@example.org" || !slices.Equal(m.Recipients, []string{"bob@example.test"}) {
		t.Fatalf("queued envelope %q %q", m.Sender, m.Recipients)
	}
	if !strings.Contains(string(m.Data), "for <bob@example.test>;") {
		t.Fatalf("the Received header names the original recipient: %q", m.Data)
	}
	hookstest.Expect(t, s.Mail("blocked@example.org"), 550, "550 5.7.1 Sender rejected")
	if s.Transaction() != nil {
		t.Fatal("a sender refused at mail_pre opened a transaction")
	}
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.Expect(t, s.Rcpt("nobody+x@example.test"), 450, "450 4.7.1 later")
	if len(s.Transaction().Recipients) != 0 {
		t.Fatal("a recipient refused at rcpt_pre was added")
	}
}

// refusing refuses senders and recipients in the ways plugins can.
func TestRejectionsKeepTheSessionConsistent(t *testing.T) {
	h := hookstest.New(t,
		hookstest.Plugin("policy", policy{}),
		hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("c"), 250)
	hookstest.Expect(t, s.Mail("spammer@example.net"), 550, "550 5.7.1 Sender rejected")
	if s.Transaction() != nil {
		t.Fatal("a rejected MAIL opened a transaction")
	}
	rep := s.Mail("hard@example.net")
	hookstest.Expect(t, rep, 421, "421 4.7.1")
	if !rep.Close {
		t.Fatal("DenySoftDisconnect does not close")
	}
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.Expect(t, s.Rcpt("ok@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("unknown@example.test"), 550, "550 5.1.1 no such user")
	hookstest.Expect(t, s.Rcpt("ok2@example.test"), 250)
	if got := s.Transaction().Recipients; !slices.Equal(got, []string{"ok@example.test", "ok2@example.test"}) {
		t.Fatalf("recipients %q", got)
	}
	hookstest.Expect(t, s.Data(msg), 250)
}

type policy struct{}

func (policy) Mail(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, from string) hooks.Result {
	switch from {
	case "spammer@example.net":
		return hooks.Reject("")
	case "hard@example.net":
		return hooks.Result{Code: hooks.DenySoftDisconnect}
	}
	return hooks.Result{}
}

func (policy) Rcpt(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, rcpt string) hooks.Result {
	if strings.HasPrefix(rcpt, "ok") {
		return hooks.Accept("")
	}
	return hooks.Result{Code: hooks.Deny, Msg: "no such user", Enhanced: [3]int{5, 1, 1}}
}

type heloPolicy struct{}

func (heloPolicy) Ehlo(_ context.Context, c *connection.Connection, host string) hooks.Result {
	if c.Helo != host || !c.ESMTP {
		return hooks.Defer("the connection was not updated before the hook")
	}
	if host == "localhost" {
		return hooks.Reject("")
	}
	return hooks.Result{}
}

func TestHeloRejectionClearsTheName(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("helo", heloPolicy{}))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("localhost"), 550, "550 5.7.1 HELO rejected")
	if s.Conn().Helo != "" || s.Conn().ESMTP {
		t.Fatalf("after a refused EHLO: Helo %q ESMTP %v", s.Conn().Helo, s.Conn().ESMTP)
	}
	hookstest.Expect(t, s.Helo("client.example.test"), 250, "mx.example.test Hello client.example.test")
	if s.Conn().Helo != "client.example.test" || !s.Conn().ESMTP {
		t.Fatal("EHLO did not set the connection's name")
	}
}

func TestOtherCommandsDefaults(t *testing.T) {
	h := hookstest.New(t, accept())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Vrfy("postmaster"), 252, "252 2.5.0")
	hookstest.Expect(t, s.Noop(""), 250)
	hookstest.Expect(t, s.Help(""), 214)
	hookstest.Expect(t, s.Unrecognized("XFOO", ""), 500, "500 5.5.1")
	rep := s.Quit("")
	hookstest.Expect(t, rep, 221, "221 2.0.0 mx.example.test closing connection")
	if !rep.Close {
		t.Fatal("QUIT does not close")
	}
}

type connectPolicy struct{}

func (connectPolicy) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	if c.RemoteIP().String() == "203.0.113.9" {
		return hooks.Result{Code: hooks.DenySoft, Msg: "too busy"}
	}
	return hooks.Result{}
}

func TestConnectRefusal(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("connect", connectPolicy{}))
	rep := h.Connect("203.0.113.9").Greeting()
	hookstest.Expect(t, rep, 421, "421 4.7.0 too busy")
	if !rep.Close {
		t.Fatal("a refused connection stays open")
	}
	hookstest.Expect(t, h.Connect("::ffff:192.0.2.1").Greeting(), 220, "mx.example.test ESMTP")
}

func TestMessageWithoutDataCommand(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Session.Message(strings.NewReader(msg)), 503)
}

func TestHeaderlessMessageKeepsItsBody(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, " indented first line\r\nsecond\r\n"), 250)
	data := string(h.Queued()[0].Data)
	if !strings.HasSuffix(data, "\r\n\r\n indented first line\r\nsecond\r\n") {
		t.Fatalf("the body's first line is no longer body: %q", data)
	}
}

func TestSpoolFilesAreNotLeft(t *testing.T) {
	dir := t.TempDir()
	h := hookstest.New(t, accept(), hookstest.Queue())
	c := connection.New("test", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1"))
	s := server.NewSession(context.Background(), c, server.SessionConfig{Chain: h.Chain, SpoolDir: dir, Limits: server.Limits{SpoolMemory: 16}})
	s.Ehlo("c")
	s.Mail("FROM:<a@example.org>")
	s.Rcpt("TO:<b@example.test>")
	s.Data("")
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef", 4096)
	hookstest.Expect(t, s.Message(strings.NewReader(big)), 250)
	if !strings.HasSuffix(string(h.Queued()[0].Data), big) {
		t.Fatal("the spooled message differs")
	}
	s.Reset()
	s.Close()
	if n := len(mustReadDir(t, dir)); n != 0 {
		t.Fatalf("%d files left in the spool dir", n)
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// brokenReceived panics at received_line after half-rewriting the line.
type brokenReceived struct{}

func (brokenReceived) ReceivedLine(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, line *string) hooks.Result {
	*line = "half"
	panic("received_line plugin bug")
}

func TestReceivedLineFailureDefersAndQueuesNothing(t *testing.T) {
	h := hookstest.New(t, accept(), hookstest.Plugin("broken", brokenReceived{}), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 451, "4.3.0")
	if n := len(h.Queued()); n != 0 {
		t.Fatalf("queued %d messages after a received_line failure", n)
	}
}

// rcptOKRecorder records the recipients rcpt_ok reports.
type rcptOKRecorder struct{ got []string }

func (r *rcptOKRecorder) RcptOK(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, rcpt string) {
	r.got = append(r.got, fmt.Sprintf("%s (%d in tx)", rcpt, len(tx.Recipients)))
}

// TestRcptOKFiresForEveryAcceptedRecipient: rcpt_ok runs after a recipient
// is accepted, by OK or by Done, and is in the transaction; never for a
// refused one.
func TestRcptOKFiresForEveryAcceptedRecipient(t *testing.T) {
	rec := &rcptOKRecorder{}
	decide := rcptFunc(func(r string) hooks.Result {
		switch {
		case strings.HasPrefix(r, "ok@"):
			return hooks.Accept("")
		case strings.HasPrefix(r, "done@"):
			return hooks.Result{Code: hooks.Done, Msg: "taken"}
		}
		return hooks.Reject("")
	})
	h := hookstest.New(t, hookstest.Plugin("decide", decide), hookstest.Plugin("rec", rec), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	tr := s.SendAll("a@example.org", []string{"ok@example.test", "no@example.test", "done@example.test"}, "Subject: x\r\n\r\n")
	if tr.Rcpt[0].Code != 250 || tr.Rcpt[1].Code != 550 || tr.Rcpt[2].String() != "250 2.1.5 taken" {
		t.Fatalf("replies: %+v", tr.Rcpt)
	}
	if want := []string{"ok@example.test (1 in tx)", "done@example.test (2 in tx)"}; !slices.Equal(rec.got, want) {
		t.Fatalf("rcpt_ok saw %q; want %q", rec.got, want)
	}
}
