package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/server/servertest"
	"github.com/sluice-mta/sluice/transaction"
)

// acceptRcpt accepts every recipient.
type acceptRcpt struct{}

func (acceptRcpt) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

type testServer struct {
	addr  string
	queue *hookstest.QueueRecorder
	srv   *server.Server
}

func start(t *testing.T, mutate func(*server.ListenerConfig), plugins ...hooks.Instance) *testServer {
	t.Helper()
	return startServer(t, hooks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil, mutate, plugins...)
}

// startServer serves one listener "mx" on a free loopback port whose chain
// is plugins, then a plugin accepting every recipient and a recording
// queue, built with opts; opts.Logger gets the server's lines too, limiter
// (nil: the default one) counts failed AUTHs.
func startServer(t *testing.T, opts hooks.Options, limiter *authlimit.Limiter, mutate func(*server.ListenerConfig), plugins ...hooks.Instance) *testServer {
	t.Helper()
	log := opts.Logger
	q := &hookstest.QueueRecorder{}
	plugins = append(plugins, hooks.Instance{Name: "rcpt", Plugin: acceptRcpt{}}, hooks.Instance{Name: "queue", Plugin: q})
	ch, err := hooks.NewChain(plugins, opts)
	if err != nil {
		t.Fatal(err)
	}
	lc := server.ListenerConfig{Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch}
	if mutate != nil {
		mutate(&lc)
	}
	srv := servertest.Serve(t, server.Config{Listeners: []server.ListenerConfig{lc}, SpoolDir: t.TempDir(), Logger: log, AuthLimiter: limiter})
	return &testServer{addr: srv.Addr("mx").String(), queue: q, srv: srv}
}

// client is a raw SMTP client: it writes exact bytes and reads replies.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

// reply reads one whole reply and returns its lines joined by "\n".
func (c *client) reply() string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			if len(lines) == 0 {
				return "EOF"
			}
			c.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		lines = append(lines, strings.TrimRight(l, "\r\n"))
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// expect sends cmd (CRLF added) and checks the reply starts with want.
func (c *client) expect(cmd, want string) string {
	c.t.Helper()
	if cmd != "" {
		c.send(cmd + "\r\n")
	}
	got := c.reply()
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("after %q: got %q, want prefix %q", cmd, got, want)
	}
	return got
}

// startData reads the greeting and runs EHLO, MAIL, RCPT and DATA up to
// the 354.
func (c *client) startData() {
	c.t.Helper()
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA", "354")
}

// closed checks the server closed the connection.
func (c *client) closed() {
	c.t.Helper()
	if got := c.reply(); got != "EOF" {
		c.t.Fatalf("want the connection closed, got %q", got)
	}
}

func TestDeliveryThroughTheWire(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 mx.example.test ESMTP")
	ehlo := c.expect("EHLO client.example", "250-mx.example.test Hello client.example")
	if !strings.Contains(ehlo, "CHUNKING") || !strings.Contains(ehlo, "SIZE 26214400") || !strings.Contains(ehlo, "PIPELINING") || strings.Contains(ehlo, "DSN") {
		t.Fatalf("EHLO capabilities: %q", ehlo)
	}
	c.expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
	c.expect("RCPT TO:<bob@example.test>", "250 2.1.5")
	c.expect("DATA", "354 ")
	c.send("Subject: hi\r\n\r\nline one\r\n..dot\r\n.\r\n")
	got := c.expect("", "250 2.0.0 Ok: queued as ")
	c.expect("QUIT", "221 2.0.0")
	c.closed()

	msgs := ts.queue.Messages()
	if len(msgs) != 1 {
		t.Fatalf("queued %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if !strings.HasSuffix(got, m.QueueID) {
		t.Fatalf("reply %q does not name queue id %q", got, m.QueueID)
	}
	if m.Sender != "alice@example.org" || len(m.Recipients) != 1 || m.Recipients[0] != "bob@example.test" {
		t.Fatalf("envelope: %+v", m)
	}
	data := string(m.Data)
	if !strings.HasPrefix(data, "Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (Sluice) with ESMTP id "+m.QueueID) {
		t.Fatalf("Received header: %q", data)
	}
	if !strings.HasSuffix(data, "\r\nSubject: hi\r\n\r\nline one\r\n.dot\r\n") {
		t.Fatalf("message body: %q", data)
	}
}

func TestPipelinedTransactions(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.send("EHLO a.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n")
	c.expect("", "250-")
	c.expect("", "250 2.1.0")
	c.expect("", "250 2.1.5")
	c.expect("", "354")
	c.send("Subject: 1\r\n\r\none\r\n.\r\nMAIL FROM:<c@a.example>\r\nRCPT TO:<d@b.example>\r\nDATA\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	c.expect("", "250 2.1.0")
	c.expect("", "250 2.1.5")
	c.expect("", "354")
	c.send("Subject: 2\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	c.expect("", "221")
	if n := len(ts.queue.Messages()); n != 2 {
		t.Fatalf("queued %d, want 2", n)
	}
}

func TestBareLFInDataIsRejectedAndNothingQueued(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.startData()
	// The SMTP smuggling shape: "\n.\n" followed by a second message.
	c.send("Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@a.example>\r\nRCPT TO:<victim@b.example>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n")
	c.expect("", "554 5.5.2")
	c.closed()
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d messages, want none", n)
	}
}

func TestBareLFNormalizeNeverEndsTheMessage(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.BareNewline = server.BareNewlineNormalize })
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@a.example>\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	msgs := ts.queue.Messages()
	if len(msgs) != 1 {
		t.Fatalf("queued %d, want 1", len(msgs))
	}
	if !strings.HasSuffix(string(msgs[0].Data), "\r\nSubject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@a.example>\r\n") {
		t.Fatalf("normalized message: %q", msgs[0].Data)
	}
}

func TestGuardAnswersCommandsGoSMTPDoesNotSurface(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("NOOP", "250 2.0.0 OK")
	c.expect("VRFY bob", "252 2.5.0")
	c.expect("HELP", "214 ")
	c.expect("XYZZY plugh", "500 5.5.1 Unrecognized command")
	c.expect("MAIL FROM:<a@a.example>", "503 5.5.1 Send EHLO")
	// BDAT outside a transaction: refused, and its chunk is read and
	// dropped, never run as commands.
	c.expect("BDAT 12 LAST\r\nQUIT\r\nQUIT", "503 5.5.1 Need MAIL")
	c.expect("NOOP", "250 2.0.0 OK")
	// A BDAT whose size cannot be read leaves the chunk unknown: closed.
	c.expect("BDAT ten LAST", "501 5.5.4")
	c.closed()
}

func TestLongCommandLineClosesWithBoundedRead(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	go io.WriteString(c.conn, strings.Repeat("A", 1<<20)) // no LF at all
	c.expect("", "500 5.5.2 Line too long")
	c.closed()
}

func TestTooManyErrorsCloses(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.MaxErrors = 3 })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	for i := 0; i < 3; i++ {
		c.expect("BOGUS", "500")
	}
	c.expect("BOGUS", "500")
	c.expect("", "421 4.7.0 Too many errors")
	c.closed()
}

func TestIdleTimeoutAnswers421(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.ReadTimeout = 200 * time.Millisecond })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("", "421 4.4.2 Timeout")
	c.closed()
}

func TestConnectHookDenyAnswers554AndCloses(t *testing.T) {
	deny := connectFunc(func() hooks.Result { return hooks.Reject("go away") })
	ts := start(t, nil, hooks.Instance{Name: "deny", Plugin: deny})
	c := dial(t, ts.addr)
	c.expect("", "554 5.7.1 go away")
	c.closed()
}

// TestIdleTimeoutCountsFromTheLastCommand: the read deadline moves with
// every command (the loop leaves it in place only for moves smaller than
// a 64th of the timeout), so a client that keeps talking is never cut off
// and one that stops is, a timeout after its last command.
func TestIdleTimeoutCountsFromTheLastCommand(t *testing.T) {
	const timeout = 400 * time.Millisecond
	ts := start(t, func(l *server.ListenerConfig) { l.ReadTimeout = timeout })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	for range 8 { // 800 ms in all: twice the timeout
		time.Sleep(timeout / 4)
		c.expect("NOOP", "250 ")
	}
	last := time.Now()
	c.expect("", "421 4.4.2 Timeout")
	if idle := time.Since(last); idle < timeout-timeout/64 || idle > timeout+timeout/2 {
		t.Fatalf("closed %v after the last command; want about %v", idle, timeout)
	}
	c.closed()
}

type connectFunc func() hooks.Result

func (f connectFunc) Connect(context.Context, *connection.Connection) hooks.Result { return f() }

// TestStartTLSDiscardsPipelinedCommands: the plaintext MAIL sent in the
// same write as STARTTLS is thrown away: after the handshake there is no
// reply waiting for it, and RCPT finds no transaction.
func TestStartTLSDiscardsPipelinedCommands(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	ehlo := c.expect("EHLO a.example", "250")
	if !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("STARTTLS not offered: %q", ehlo)
	}
	c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
	c.expect("", "220 2.0.0")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	// Were the MAIL kept, its reply would come first, before EHLO's.
	c.expect("EHLO a.example", "250")
	c.expect("RCPT TO:<b@b.example>", "503 5.5.1 Need MAIL")
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatal("something was queued")
	}
}

func TestStartTLSResetsTheSession(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.handshakeTLS()
	c.expect("MAIL FROM:<a@a.example>", "503 5.5.1 Send EHLO")
	ehlo := c.expect("EHLO a.example", "250")
	if strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("STARTTLS offered again inside TLS: %q", ehlo)
	}
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: tls\r\n\r\nsecret\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	msgs := ts.queue.Messages()
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "with ESMTPS id") {
		t.Fatalf("queued: %q", msgs)
	}
}

// TestStartTLSIsOneMonitorEvent: the monitor's page and `smtpd watch`
// show one "tls" event per handshake, STARTTLS or implicit TLS.
func TestStartTLSIsOneMonitorEvent(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		bus := monitor.NewBus(100)
		ch, err := hooks.NewChain([]hooks.Instance{{Name: "rcpt", Plugin: acceptRcpt{}}}, hooks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		srv := servertest.Serve(t, server.Config{SpoolDir: t.TempDir(), Bus: bus, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Listeners: []server.ListenerConfig{{Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch,
				TLS: testTLSConfig(t), ImplicitTLS: implicit}}})
		var c *client
		if implicit {
			tc, err := tls.Dial("tcp", srv.Addr("mx").String(), &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tc.Close() })
			c = &client{t: t, conn: tc, r: bufio.NewReader(tc)}
			c.expect("", "220 ")
		} else {
			c = dial(t, srv.Addr("mx").String())
			c.expect("", "220 ")
			c.expect("EHLO a.example", "250")
			c.handshakeTLS()
		}
		c.expect("EHLO a.example", "250") // the handshake's event is out before this reply
		var kinds []string
		for _, e := range bus.Recent() {
			kinds = append(kinds, e.Kind)
		}
		if n := strings.Count(strings.Join(kinds, " "), monitor.KindTLS); n != 1 {
			t.Errorf("implicit TLS %v: events %v hold %d %q, want 1", implicit, kinds, n, monitor.KindTLS)
		}
	}
}

func TestBodyPipelinedAfterRefusedDataNeverRunsAsCommands(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	// No recipient: DATA is refused, and the body that follows must not be
	// read as the commands it contains.
	c.send("DATA\r\nMAIL FROM:<evil@a.example>\r\nRCPT TO:<x@b.example>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n")
	c.expect("", "554 5.5.1 No valid recipients")
	c.expect("", "554 5.5.0 Message sent without waiting for 354; closing connection")
	c.closed()
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// TestBodyAfterRefusedDataInALaterWrite: a client that sends its message
// after a refused DATA without reading the reply, in a write of its own:
// the first line is a header, no command, and the connection closes there.
// A command after a refused DATA is still a command.
func TestBodyAfterRefusedDataInALaterWrite(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("DATA", "554 5.5.1 No valid recipients")
	c.expect("RSET", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("DATA", "554 5.5.1 No valid recipients")
	c.expect("Subject: sent anyway", "554 5.5.0 Message sent without waiting for 354; closing connection")
	c.closed()
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// TestRecipientsOverTheLimitAreNoErrors: 150 recipients pipelined in one
// transaction: 100 taken, 50 deferred with 452 4.5.3, and the message still
// goes through (the refusals do not count toward max_errors).
func TestRecipientsOverTheLimitAreNoErrors(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	var b strings.Builder
	b.WriteString("MAIL FROM:<a@a.example>\r\n")
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&b, "RCPT TO:<r%d@b.example>\r\n", i)
	}
	c.send(b.String())
	c.expect("", "250")
	for i := 0; i < 150; i++ {
		if i < 100 {
			c.expect("", "250")
		} else {
			c.expect("", "452 4.5.3 Too many recipients")
		}
	}
	c.expect("DATA", "354")
	c.send("Subject: many\r\n\r\nhi\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	if msgs := ts.queue.Messages(); len(msgs) != 1 || len(msgs[0].Recipients) != 100 {
		t.Fatalf("queued %d messages; want one with 100 recipients", len(msgs))
	}
}

// TestHeloArgumentIsChecked: control characters and bytes that are not
// UTF-8 never reach the helo hook or the Received header.
func TestHeloArgumentIsChecked(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a\x00b.example", "501 5.5.2 Invalid EHLO hostname")
	c.expect("HELO a\xffb.example", "501 5.5.2 Invalid HELO hostname")
	c.expect("EHLO a\x01.example", "501 5.5.2")
	c.expect("MAIL FROM:<a@a.example>", "503 5.5.1 Send EHLO")
	c.expect("EHLO [192.0.2.1]", "250")
	c.expect("EHLO bücher.example", "250")
}

func TestStalledDataGets421AndTheRestIsNeverParsed(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) {
		l.MinDataRate, l.MinDataRateGrace = 1000, 300*time.Millisecond
	})
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: slow\r\n\r\n")
	c.expect("", "421 4.4.2 Timeout reading the message")
	c.closed()
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

func TestAddressesAreParsedStrictlyBeforeAnyHook(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<a\x00Tv@evil.example>", "501 5.5.2")
	c.expect("MAIL FROM:<alice@example.org> RET=FULL", "555 5.5.4")
	c.expect("MAIL FROM:<alice@example.org> SIZE=100", "250 2.1.0")
	c.expect("RCPT TO:<a\x00Tv@evil.example\x00Tx@mx.example.test>", "501 5.5.2")
	c.expect(`RCPT TO:<"relay@evil.test"@example.test>`, "553 5.1.3")
	c.expect("RCPT TO:<victim%evil.test@example.test>", "553 5.7.1")
	c.expect("RCPT TO:<j\xc3\xb6rg@example.test>", "553 5.6.7")
	c.expect("RCPT TO:<@relay.example:bob@example.test>", "250 2.1.5")
	c.expect("RCPT TO:<Postmaster>", "250 2.1.5")
	c.expect("DATA", "354")
	c.send("Subject: x\r\n\r\nx\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	m := ts.queue.Messages()[0]
	if strings.Join(m.Recipients, ",") != "bob@example.test,Postmaster" {
		t.Fatalf("recipients %q: want the source route stripped and Postmaster kept", m.Recipients)
	}
}

func TestTheHundredAndFirstRecipientGets452(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<alice@example.org>", "250")
	var b strings.Builder
	for i := 0; i < 101; i++ {
		fmt.Fprintf(&b, "RCPT TO:<r%d@example.test>\r\n", i)
	}
	c.send(b.String())
	for i := 0; i < 100; i++ {
		c.expect("", "250 2.1.5")
	}
	c.expect("", "452 4.5.3 Too many recipients")
}

func TestNoopFloodIsCut(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.MaxJunkCommands = 5 })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	for i := 0; i < 5; i++ {
		c.expect("NOOP", "250")
	}
	c.expect("NOOP", "421 4.7.0 Too many commands")
	c.closed()
}

// blockingQueue holds the queue hook until its context ends, and counts
// the disconnect hooks it sees.
type blockingQueue struct {
	entered, cancelled chan struct{}
	disconnects        atomic.Int32
}

func (q *blockingQueue) Queue(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	close(q.entered)
	<-ctx.Done()
	// The message is still readable: nobody closed the spool under us.
	if _, err := io.Copy(io.Discard, tx.Message()); err != nil {
		return hooks.Fail(err)
	}
	close(q.cancelled)
	return hooks.Fail(ctx.Err())
}

func (q *blockingQueue) Disconnect(context.Context, *connection.Connection) { q.disconnects.Add(1) }

// TestShutdownDeadlineCancelsTheHookInProgress: a transaction still in its
// queue hook at the shutdown deadline has its context cancelled and its
// socket closed; the session ends on its own goroutine (run it with -race:
// ending it from the shutdown goroutine raced with the hook), the client
// never gets a 250, and the disconnect hook runs once.
func TestShutdownDeadlineCancelsTheHookInProgress(t *testing.T) {
	q := &blockingQueue{entered: make(chan struct{}), cancelled: make(chan struct{})}
	ts := start(t, nil, hooks.Instance{Name: "blocking", Plugin: q})
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: at the deadline\r\n\r\nbody\r\n.\r\n")
	<-q.entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := ts.srv.Shutdown(ctx)
	if err == nil || !strings.Contains(err.Error(), "still busy at the deadline") {
		t.Fatalf("Shutdown = %v; want the busy connection reported", err)
	}
	select {
	case <-q.cancelled:
	default:
		t.Fatal("the queue hook's context was not cancelled, or its message was gone")
	}
	if rep := c.reply(); strings.HasPrefix(rep, "250") {
		t.Fatalf("the client got %q for a message nobody queued", rep)
	}
	if n := q.disconnects.Load(); n != 1 {
		t.Fatalf("disconnect ran %d times; want once", n)
	}
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// deafRcpt ignores its context and sleeps: the plugin bug the watchdog
// exists for.
type deafRcpt struct{ d time.Duration }

func (p deafRcpt) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	time.Sleep(p.d)
	return hooks.Result{}
}

// TestPluginIgnoringItsContextDoesNotHoldTheClient: a rcpt plugin that
// sleeps through its deadline and ignores its context: the watchdog answers
// 421 and closes the connection long before the plugin returns (it would
// then answer 451), and the log says why.
func TestPluginIgnoringItsContextDoesNotHoldTheClient(t *testing.T) {
	logs := &hookstest.LogBuffer{}
	ts := startServer(t, hooks.Options{Logger: logs.Logger(), Timeout: 100 * time.Millisecond, QueueTimeout: 100 * time.Millisecond},
		nil, nil, hooks.Instance{Name: "deaf", Plugin: deafRcpt{d: 4 * time.Second}})
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "421 4.3.0 Local error in processing; closing connection")
	c.closed()
	if !strings.Contains(logs.String(), "connection stuck on the server side past every hook deadline") {
		t.Fatalf("log:\n%s", logs)
	}
}

// A listener given an open socket (systemd socket activation) serves on it
// and never binds its Address: here one no machine can bind.
func TestPreOpenedListenerIsServedAndAddressNotBound(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := start(t, func(lc *server.ListenerConfig) {
		lc.Address = "192.0.2.1:25" // TEST-NET-1: binding it would fail
		lc.Listener = ln
	})
	if ts.addr != ln.Addr().String() {
		t.Fatalf("Addr = %s, want the pre-opened socket's %s", ts.addr, ln.Addr())
	}
	c := dial(t, ts.addr)
	c.expect("", "220 mx.example.test ESMTP")
	c.expect("QUIT", "221 2.0.0")
}
