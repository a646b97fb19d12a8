package server_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/transaction"
)

// Wire tests of the protocol loop: what the two parsers of the first
// version (the guard's and go-smtp's) disagreed on, BDAT and DSN.

// TestDataWithATrailingSpace: "DATA " is DATA; repeated out of sequence it
// counts toward max_errors like any refusal, and nothing else closes.
func TestDataWithATrailingSpace(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	for range 4 {
		c.expect("DATA ", "503 5.5.1 Need MAIL command")
	}
	c.expect("NOOP", "250 2.0.0 OK")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA x", "501 5.5.4 DATA takes no argument")
	c.expect("DATA ", "354 ")
	c.send("Subject: t\r\n\r\nx\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
}

// TestEhloNameIsItsFirstWord: "EHLO a.example b c" names a.example, in
// the reply and in the Received header alike.
func TestEhloNameIsItsFirstWord(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example b c", "250-mx.example.test Hello a.example\n")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: t\r\n\r\nx\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	if data := string(ts.queue.Messages()[0].Data); !strings.HasPrefix(data, "Received: from a.example ([127.0.0.1])\r\n") {
		t.Fatalf("Received: %q", data)
	}
}

// TestHeloNamesWithUnicodeControlsAreRefused: C1 controls, line and
// paragraph separators and bidirectional overrides never reach the
// Received header.
func TestHeloNamesWithUnicodeControlsAreRefused(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	for _, name := range []string{"a\u0085b.example", "a\u2028b.example", "a\u2029b.example", "a\u202eb.example", "a\u0080.example"} {
		c.expect("EHLO "+name, "501 5.5.2 Invalid EHLO hostname")
	}
	c.expect("MAIL FROM:<a@a.example>", "503 5.5.1 Send EHLO")
	c.expect("EHLO bücher.example", "250")
}

// TestAuthInsideATransactionIs503: RFC 4954 4. With senderlogin, MAIL
// then AUTH would let a client send as any address.
func TestAuthInsideATransactionIs503(t *testing.T) {
	ts, _ := authServer(t, nil, func(l *server.ListenerConfig) { l.AuthPlaintextLoopback = true })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("MAIL FROM:<ceo@example.test>", "250")
	c.expect(plain("", "alice", "s3cret"), "503 5.5.1 AUTH is not allowed during a mail transaction")
	c.expect("RSET", "250")
	c.expect(plain("", "alice", "s3cret"), "235 2.7.0")
	c.expect(plain("", "alice", "s3cret"), "503 5.5.1 Already authenticated")
}

// TestAuthCancelled: "*" ends an exchange (RFC 4954 4) with 501, and the
// next line is a command again.
func TestAuthCancelled(t *testing.T) {
	ts, _ := authServer(t, nil, func(l *server.ListenerConfig) { l.AuthPlaintextLoopback = true })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect("AUTH LOGIN", "334 "+b64("Username:"))
	c.expect("*", "501 5.0.0 Authentication cancelled")
	c.expect("NOOP", "250")
	c.expect("AUTH PLAIN", "334 ")
	c.expect(b64("\x00alice\x00s3cret"), "235 2.7.0")
}

// bdatStart opens a transaction on a new connection, EHLO checked for
// CHUNKING.
func bdatStart(t *testing.T, ts *testServer) *client {
	t.Helper()
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO a.example", "250"); !strings.Contains(ehlo, "\n250-CHUNKING\n") {
		t.Fatalf("CHUNKING not offered: %q", ehlo)
	}
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	return c
}

func TestBdatMessage(t *testing.T) {
	ts := start(t, nil)
	c := bdatStart(t, ts)
	part1 := "Subject: chunked\r\n\r\nfirst "
	part2 := "second\r\n.\r\nQUIT\r\n..\r\n"
	// Both chunks pipelined in one write, with their data.
	c.send("BDAT " + strconv.Itoa(len(part1)) + "\r\n" + part1 + "BDAT " + strconv.Itoa(len(part2)) + " LAST\r\n" + part2)
	c.expect("", "250 2.0.0 "+strconv.Itoa(len(part1))+" octets received")
	c.expect("", "250 2.0.0 Ok: queued as ")
	c.expect("NOOP", "250")
	m := ts.queue.Messages()
	if len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\n"+part1+part2) {
		t.Fatalf("queued %q; want it to end with the chunks as sent (no dot-unstuffing)", m)
	}

	// BDAT 0 LAST ends a message; a last line without CRLF gets one.
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.send("BDAT 16\r\nSubject: x\r\n\r\nhi")
	c.expect("", "250 2.0.0 16 octets received")
	c.expect("BDAT 0 LAST", "250 2.0.0 Ok: queued as ")
	if m := ts.queue.Messages(); len(m) != 2 || !strings.HasSuffix(string(m[1].Data), "\r\nSubject: x\r\n\r\nhi\r\n") {
		t.Fatalf("queued %q", m[1].Data)
	}
}

// TestBdatRefusedChunksAreDropped: a BDAT without MAIL, or after every
// recipient was refused, is answered and its chunk read and dropped: the
// bytes never run as commands, pipelined or not.
func TestBdatRefusedChunksAreDropped(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.send("BDAT 10 LAST\r\nQUIT\r\nQUIT")
	c.expect("", "503 5.5.1 Need MAIL command")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.send("BDAT 6\r\nQUIT\r\nBDAT 6 LAST\r\nQUIT\r\n")
	c.expect("", "554 5.5.1 No valid recipients")
	c.expect("", "554 5.5.1 No valid recipients")
	c.expect("NOOP", "250")
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// TestBdatThenDataIs503: DATA and BDAT do not mix (RFC 3030 2): the
// transaction is over and nothing is queued.
func TestBdatThenDataIs503(t *testing.T) {
	ts := start(t, nil)
	c := bdatStart(t, ts)
	c.send("BDAT 5\r\nhello")
	c.expect("", "250 2.0.0 5 octets received")
	c.expect("DATA", "503 5.5.1")
	c.expect("BDAT 3 LAST\r\nabc", "503 5.5.1 Need MAIL")
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// TestBdatSizeLimit: a chunk larger than the limit closes (its bytes
// cannot be waited for); chunks that add up past it get 552 and the
// transaction fails, the connection goes on.
func TestBdatSizeLimit(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.Limits.MaxMessageBytes = 100 })
	c := bdatStart(t, ts)
	c.send("BDAT 60\r\n" + strings.Repeat("a", 60) + "BDAT 60 LAST\r\n" + strings.Repeat("b", 60))
	c.expect("", "250 2.0.0 60 octets received")
	c.expect("", "552 5.3.4 Message size exceeds the limit of 100 bytes")
	c.expect("NOOP", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("BDAT 101 LAST", "552 5.3.4 Message size exceeds the limit of 100 bytes; closing connection")
	c.closed()
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// TestBdatBareNewlines: the bare-newline policy applies to BDAT as to
// DATA, across chunk boundaries too.
func TestBdatBareNewlines(t *testing.T) {
	ts := start(t, nil)
	c := bdatStart(t, ts)
	c.send("BDAT 13\r\nSubject: x\r\n\r")
	c.expect("", "250 2.0.0 13 octets received")
	c.send("BDAT 10 LAST\r\n\nbody\nmore") // CR|LF across chunks is fine; "body\n" is not
	c.expect("", "554 5.5.2 Message contains a bare CR or LF")
	c.closed()

	ts = start(t, func(l *server.ListenerConfig) { l.BareNewline = server.BareNewlineNormalize })
	c = bdatStart(t, ts)
	c.send("BDAT 15\r\nSubject: x\n\nhi\r")
	c.expect("", "250 2.0.0 15 octets received")
	c.expect("BDAT 3 LAST\r\nyo\n", "250 2.0.0 Ok: queued")
	if m := ts.queue.Messages(); len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\nSubject: x\r\n\r\nhi\r\nyo\r\n") {
		t.Fatalf("normalized BDAT message: %q", m)
	}
}

// TestBdatRefusedAtTheHeader: a data_headers_end refusal is the answer to
// the last chunk, as it is the answer to DATA's final dot: the chunks
// before it are taken (and dropped) as they come.
func TestBdatRefusedAtTheHeader(t *testing.T) {
	deny := headersEndFunc(func(*transaction.Transaction) hooks.Result { return hooks.Reject("no thanks") })
	ts := start(t, nil, hooks.Instance{Name: "deny", Plugin: deny})
	c := bdatStart(t, ts)
	head := "Subject: x\r\n\r\n"
	c.send("BDAT " + strconv.Itoa(len(head)) + "\r\n" + head + "BDAT 4\r\nbody" + "BDAT 2 LAST\r\nzz")
	c.expect("", "250 2.0.0 "+strconv.Itoa(len(head))+" octets received")
	c.expect("", "250 2.0.0 4 octets received")
	c.expect("", "554 5.7.1 no thanks")
	c.expect("NOOP", "250")
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("queued %d", n)
	}
}

// dsnQueue takes messages and says it carries DSN on; it keeps their
// parameters.
type dsnQueue struct {
	mu    sync.Mutex
	mail  []transaction.MailParams
	rcpts []map[string]transaction.RcptParams
}

func (q *dsnQueue) CarriesDSN() bool { return true }

func (q *dsnQueue) Queue(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.mail = append(q.mail, tx.Params)
	q.rcpts = append(q.rcpts, tx.RcptParams)
	return hooks.Accept("")
}

// startChain serves a listener whose chain is exactly plugins.
func startChain(t *testing.T, plugins ...hooks.Instance) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ch, err := hooks.NewChain(plugins, hooks.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Listeners: []server.ListenerConfig{{Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch}},
		SpoolDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv.Addr("mx").String()
}

// TestDSNParameters: DSN is offered where every queue plugin carries it
// on, its parameters are parsed strictly and kept in the transaction; a
// real client (go-smtp's) sends them.
func TestDSNParameters(t *testing.T) {
	q := &dsnQueue{}
	addr := startChain(t, hooks.Instance{Name: "rcpt", Plugin: acceptRcpt{}}, hooks.Instance{Name: "q", Plugin: q})
	c := dial(t, addr)
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO a.example", "250"); !strings.Contains(ehlo, "\n250-DSN\n") {
		t.Fatalf("DSN not offered: %q", ehlo)
	}
	c.expect("MAIL FROM:<a@a.example> RET=FOO", "501 5.5.4 Bad RET value")
	c.expect("MAIL FROM:<a@a.example> ENVID=a+2", "501 5.5.4 Bad ENVID value")
	c.expect("MAIL FROM:<a@a.example> RET=hdrs ENVID=QQ+2B314 SMTPUTF8 SMTPUTF8", "250")
	for _, bad := range []string{"NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=", "ORCPT=x400;b", "ORCPT=rfc822", "NOTIFY=DELAY NOTIFY=DELAY"} {
		c.expect("RCPT TO:<b@b.example> "+bad, "501 5.5.4")
	}
	c.expect("RCPT TO:<b@b.example> NOTIFY=success,DELAY ORCPT=rfc822;b+40b.example", "250")
	c.expect("RCPT TO:<c@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: dsn\r\n\r\nx\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")

	// go-smtp's client, as a real sender of DSN parameters.
	cl, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Mail("a@a.example", &smtp.MailOptions{Return: smtp.DSNReturnFull, EnvelopeID: "id 1"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Rcpt("d@b.example", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "D@B.example"}); err != nil {
		t.Fatal(err)
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Subject: dsn 2\r\n\r\nx\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cl.Quit()

	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.mail) != 2 {
		t.Fatalf("queued %d", len(q.mail))
	}
	if p := q.mail[0]; p.Ret != "HDRS" || p.EnvID != "QQ+314" || !p.UTF8 {
		t.Errorf("MAIL parameters: %+v", p)
	}
	r := q.rcpts[0]
	if p := r["b@b.example"]; strings.Join(p.Notify, ",") != "SUCCESS,DELAY" || p.ORcptType != "rfc822" || p.ORcpt != "b@b.example" {
		t.Errorf("RCPT parameters: %+v", r)
	}
	if _, ok := r["c@b.example"]; ok || len(r) != 1 {
		t.Errorf("a recipient without DSN parameters has some: %+v", r)
	}
	if p := q.mail[1]; p.Ret != "FULL" || p.EnvID != "id 1" {
		t.Errorf("go-smtp MAIL parameters: %+v", p)
	}
	if p := q.rcpts[1]["d@b.example"]; strings.Join(p.Notify, ",") != "NEVER" || p.ORcpt != "D@B.example" {
		t.Errorf("go-smtp RCPT parameters: %+v", q.rcpts[1])
	}
}

// TestNoDSNWhereTheQueueDoesNotCarryIt: the recording queue does not carry
// DSN on, so DSN is not offered and its parameters are unknown.
func TestNoDSNWhereTheQueueDoesNotCarryIt(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO a.example", "250"); strings.Contains(ehlo, "DSN") {
		t.Fatalf("DSN offered: %q", ehlo)
	}
	c.expect("MAIL FROM:<a@a.example> RET=FULL", "555 5.5.4 Unsupported parameter RET")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter NOTIFY")
}

// TestGreetingDelayMarksEarlyTalkers: with greeting_delay, a client that
// talks before the greeting is marked for the plugins (here one that
// refuses it at connect); a patient one is greeted once the delay is over.
func TestGreetingDelayMarksEarlyTalkers(t *testing.T) {
	refuse := connectFuncConn(func(c *connection.Connection) hooks.Result {
		if c.EarlyTalker {
			return hooks.Reject("talked before the greeting")
		}
		return hooks.Result{}
	})
	ts := start(t, func(l *server.ListenerConfig) { l.GreetingDelay = 300 * time.Millisecond }, hooks.Instance{Name: "early", Plugin: refuse})

	// Timed from before each dial: the delay starts at the server's
	// accept, which comes after, so a correct server never answers sooner.
	start := time.Now()
	c := dial(t, ts.addr)
	c.send("EHLO rude.example\r\n")
	c.expect("", "554 5.7.1 talked before the greeting")
	c.closed()
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("the early talker was answered after %v: talking early must not shorten the delay", waited)
	}

	start = time.Now()
	c = dial(t, ts.addr)
	c.expect("", "220 mx.example.test ESMTP")
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("greeted after %v; want the delay", waited)
	}
	c.expect("EHLO polite.example", "250")
}

type connectFuncConn func(*connection.Connection) hooks.Result

func (f connectFuncConn) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	return f(c)
}

// TestAuthAfterHeloIs503: AUTH is an ESMTP extension; HELO does not open it.
func TestAuthAfterHeloIs503(t *testing.T) {
	ts, _ := authServer(t, nil, func(l *server.ListenerConfig) { l.AuthPlaintextLoopback = true })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("HELO a.example", "250")
	c.expect(plain("", "alice", "s3cret"), "503 5.5.1 Send EHLO first")
	c.expect("EHLO a.example", "250")
	c.expect(plain("", "alice", "s3cret"), "235 2.7.0")
}

// TestBdatNormalizeEndsWithABareCR: under normalize, a CR that ends the
// last chunk is a line end of its own.
func TestBdatNormalizeEndsWithABareCR(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) { l.BareNewline = server.BareNewlineNormalize })
	c := bdatStart(t, ts)
	c.send("BDAT 17 LAST\r\nSubject: x\r\n\r\nhi\r")
	c.expect("", "250 2.0.0 Ok: queued")
	c.expect("NOOP", "250 2.0.0 OK")
	if m := ts.queue.Messages(); len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\nSubject: x\r\n\r\nhi\r\n") {
		t.Fatalf("queued %q", m)
	}
}
