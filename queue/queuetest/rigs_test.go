package queuetest

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// The rigs with default options, shared by the tests of this package as
// other packages should share theirs: started once, from TestMain.
var (
	postfix *Postfix
	dovecot *Dovecot
)

func TestMain(m *testing.M) {
	flag.Parse()
	start := time.Now()
	var err error
	if postfix, err = StartPostfixMain(PostfixOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	postfixUp := time.Since(start)
	start = time.Now()
	if dovecot, err = StartDovecotLMTPMain(DovecotOptions{}); err != nil {
		postfix.Stop()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if testing.Verbose() {
		fmt.Printf("Postfix up in %v, Dovecot LMTP up in %v\n", postfixUp.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "Postfix maillog:\n%s\nDovecot log:\n%s\n", postfix.Log(), dovecot.Log())
	}
	start = time.Now()
	if err := errors.Join(postfix.Stop(), dovecot.Stop()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if testing.Verbose() {
		fmt.Printf("both stopped in %v\n", time.Since(start).Round(time.Millisecond))
	}
	os.Exit(code)
}

var messageCount atomic.Int32

// testMessage returns a message (CRLF line ends, a line that needs dot
// stuffing, 8-bit UTF-8) whose Message-ID no other call returns, padded
// with body lines to at least size bytes.
func testMessage(from, to string, size int) (msg []byte, messageID string) {
	messageID = fmt.Sprintf("<rig-%d-%d@client.example.test>", os.Getpid(), messageCount.Add(1))
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: rig test\r\nMessage-ID: %s\r\n\r\nHello.\r\n.a line that starts with a dot\r\nGrüße aus dem Test\r\n", from, to, messageID)
	for b.Len() < size {
		b.WriteString("padding padding padding padding padding padding padding padding\r\n")
	}
	return b.Bytes(), messageID
}

// dial connects a go-smtp client (LMTP when lmtp is set) and greets.
func dial(t *testing.T, network, addr string, lmtp bool) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var c *smtp.Client
	if lmtp {
		c = smtp.NewClientLMTP(conn)
	} else {
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatalf("EHLO/LHLO to %s: %v", addr, err)
	}
	return c
}

// rawSession greets the SMTP server at addr with EHLO and returns a
// function that sends one command line and returns the last line of its
// reply.
func rawSession(t *testing.T, addr string) func(cmd string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	reply := func() string {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading a reply from %s: %v", addr, err)
			}
			if len(line) < 4 || line[3] != '-' {
				return strings.TrimRight(line, "\r\n")
			}
		}
	}
	send := func(cmd string) string {
		fmt.Fprintf(conn, "%s\r\n", cmd)
		return reply()
	}
	reply()
	send("EHLO client.example.test")
	return send
}

// wantReply checks that err is the server's reply code, enhanced code and
// a text containing text.
func wantReply(t *testing.T, what string, err error, code int, enhanced smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Errorf("%s: got %v; want the reply %d %v ...%s", what, err, code, enhanced, text)
		return
	}
	if se.Code != code || se.EnhancedCode != enhanced || !strings.Contains(se.Message, text) {
		t.Errorf("%s: got %d %v %q; want %d %v ...%q", what, se.Code, se.EnhancedCode, se.Message, code, enhanced, text)
	}
}

// wantStored checks that stored is sent as a Maildir holds it: trace
// headers (Return-Path, X-Original-To, Delivered-To, Received) and then sent, byte for
// byte, with LF line ends.
func wantStored(t *testing.T, stored, sent []byte, returnPath, deliveredTo string) {
	t.Helper()
	want := bytes.ReplaceAll(sent, []byte("\r\n"), []byte("\n"))
	if !bytes.HasSuffix(stored, want) {
		t.Fatalf("the stored message does not end with the message sent.\nstored:\n%s\nsent:\n%s", stored, want)
	}
	trace := string(stored[:len(stored)-len(want)])
	for _, h := range []string{"Return-Path: <" + returnPath + ">\n", "Delivered-To: " + deliveredTo + "\n", "Received: "} {
		if !strings.Contains(trace, h) {
			t.Errorf("the trace headers lack %q:\n%s", h, trace)
		}
	}
	for _, line := range strings.Split(strings.TrimSuffix(trace, "\n"), "\n") {
		if !strings.HasPrefix(line, "Return-Path: ") && !strings.HasPrefix(line, "Delivered-To: ") && !strings.HasPrefix(line, "X-Original-To: ") &&
			!strings.HasPrefix(line, "Received: ") && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			t.Errorf("the stored message has more than trace headers before the message sent: %q", line)
		}
	}
}

// eventually reports whether cond becomes true within 5 seconds (the
// logs are written by a log process, a moment after the reply).
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// containing returns the messages that contain s.
func containing(msgs [][]byte, s string) [][]byte {
	var out [][]byte
	for _, m := range msgs {
		if bytes.Contains(m, []byte(s)) {
			out = append(out, m)
		}
	}
	return out
}

func TestPostfixDeliversIntoMaildir(t *testing.T) {
	before := len(postfix.Mailbox("alice"))
	msg, id := testMessage("sender@client.example.test", "alice@example.test", 0)
	c := dial(t, "tcp", postfix.Addr, false)
	if err := c.Mail("sender@client.example.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@example.test", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(msg)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("after the final dot: %v", err)
	}
	if !strings.HasPrefix(resp.StatusText, "2.0.0 Ok: queued as ") {
		t.Errorf("after the final dot: %q; want Postfix's \"2.0.0 Ok: queued as ...\"", resp.StatusText)
	}
	got := containing(postfix.WaitMailbox(t, "alice@example.test", before+1, 10*time.Second), id)
	if len(got) != 1 {
		t.Fatalf("alice's Maildir holds %d messages with %s; want 1", len(got), id)
	}
	wantStored(t, got[0], msg, "sender@client.example.test", "alice@example.test")
	if !eventually(func() bool { return strings.Contains(postfix.Log(), "to=<alice@example.test>, relay=virtual") }) {
		t.Errorf("the maillog lacks the virtual delivery to alice:\n%s", postfix.Log())
	}
}

func TestPostfixRefusesAtRcpt(t *testing.T) {
	c := dial(t, "tcp", postfix.Addr, false)
	if err := c.Mail("sender@client.example.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rcpt     string
		code     int
		enhanced smtp.EnhancedCode
		text     string
	}{
		{"nobody@example.test", 550, smtp.EnhancedCode{5, 1, 1}, "<nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"},
		{"full@example.test", 452, smtp.EnhancedCode{4, 2, 2}, "<full@example.test>: Recipient address rejected: Mailbox full"},
		{"someone@other.test", 554, smtp.EnhancedCode{5, 7, 1}, "<someone@other.test>: Relay access denied"},
	} {
		wantReply(t, "RCPT TO:<"+tt.rcpt+">", c.Rcpt(tt.rcpt, nil), tt.code, tt.enhanced, tt.text)
	}
	// The transaction goes on: bob is still accepted.
	if err := c.Rcpt("bob@example.test", nil); err != nil {
		t.Errorf("RCPT TO:<bob@example.test> after the refusals: %v", err)
	}
}

func TestPostfixEHLOOptions(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opts    PostfixOptions
		missing string
	}{
		{"NoSMTPUTF8", PostfixOptions{NoSMTPUTF8: true}, "SMTPUTF8"},
		{"No8BitMIME", PostfixOptions{No8BitMIME: true}, "8BITMIME"},
		{"NoDSN", PostfixOptions{NoDSN: true}, "DSN"},
		{"defaults", PostfixOptions{}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := postfix
			if tt.opts != (PostfixOptions{}) {
				p = StartPostfix(t, tt.opts)
			}
			c := dial(t, "tcp", p.Addr, false)
			for _, ext := range []string{"SMTPUTF8", "8BITMIME", "DSN", "PIPELINING", "ENHANCEDSTATUSCODES"} {
				if has, _ := c.Extension(ext); has == (ext == tt.missing) {
					t.Errorf("EHLO offers %s: %v; want %v", ext, has, ext != tt.missing)
				}
			}
			// What smtpd answers a client that uses the hidden keyword
			// anyway (go-smtp would leave it out).
			anyway := map[string][2]string{
				"DSN":      {"MAIL FROM:<sender@client.example.test> RET=HDRS", "501 5.7.1 DSN support is disabled"},
				"SMTPUTF8": {"MAIL FROM:<sender@client.example.test> SMTPUTF8", "555 5.5.4 Unsupported option: SMTPUTF8"},
				"8BITMIME": {"MAIL FROM:<sender@client.example.test> BODY=8BITMIME", "250 2.1.0 Ok"},
			}
			if r, ok := anyway[tt.missing]; ok {
				if got := rawSession(t, p.Addr)(r[0]); got != r[1] {
					t.Errorf("%s: %q; want %q", r[0], got, r[1])
				}
			}
		})
	}
}

func TestPostfixSuccessDSN(t *testing.T) {
	aliceBefore, bobBefore := len(postfix.Mailbox("alice")), len(postfix.Mailbox("bob"))
	msg, id := testMessage("bob@example.test", "alice@example.test", 0)
	envid := strings.Trim(id, "<>")
	c := dial(t, "tcp", postfix.Addr, false)
	if err := c.Mail("bob@example.test", &smtp.MailOptions{EnvelopeID: envid, Return: smtp.DSNReturnHeaders}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@example.test", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822,
		OriginalRecipient:     "alice.before.forwarding@example.test",
	}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(msg)
	if err := w.Close(); err != nil {
		t.Fatalf("after the final dot: %v", err)
	}
	postfix.WaitMailbox(t, "alice", aliceBefore+1, 10*time.Second)
	dsns := containing(postfix.WaitMailbox(t, "bob", bobBefore+1, 10*time.Second), "Original-Envelope-Id: "+envid)
	if len(dsns) != 1 {
		t.Fatalf("bob's Maildir holds %d messages with Original-Envelope-Id: %s; want 1 success DSN:\n%s", len(dsns), envid, postfix.Log())
	}
	for _, want := range []string{
		"Return-Path: <>\n",
		"Delivered-To: bob@example.test\n",
		"Content-Type: multipart/report; report-type=delivery-status;",
		"Original-Envelope-Id: " + envid + "\n",
		"Final-Recipient: rfc822; alice@example.test\n",
		// The address type as the client wrote it (go-smtp: RFC822).
		"Original-Recipient: RFC822;alice.before.forwarding@example.test\n",
		"Action: delivered\n",
		"Status: 2.0.0\n",
		"Message-ID: " + id + "\n", // RET=HDRS: the headers come back
	} {
		if !bytes.Contains(dsns[0], []byte(want)) {
			t.Errorf("the success DSN lacks %q:\n%s", want, dsns[0])
		}
	}
	if bytes.Contains(dsns[0], []byte("Grüße aus dem Test")) {
		t.Errorf("the success DSN holds the body despite RET=HDRS:\n%s", dsns[0])
	}
}

func TestDovecotDeliversOverTCPAndSocket(t *testing.T) {
	for _, via := range []struct{ network, addr string }{{"tcp", dovecot.Addr}, {"unix", dovecot.Socket}} {
		t.Run(via.network, func(t *testing.T) {
			msg, id := testMessage("sender@client.example.test", "alice@example.test", 0)
			c := dial(t, via.network, via.addr, true)
			if err := c.Mail("sender@client.example.test", nil); err != nil {
				t.Fatal(err)
			}
			wantReply(t, "RCPT TO:<nobody@example.test>", c.Rcpt("nobody@example.test", nil),
				550, smtp.EnhancedCode{5, 1, 1}, "<nobody@example.test> User doesn't exist: nobody@example.test")
			if err := c.Rcpt("alice@example.test", nil); err != nil {
				t.Fatal(err)
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			w.Write(msg)
			replies, err := w.CloseWithLMTPResponse()
			if err != nil {
				t.Fatalf("after the final dot: %v", err)
			}
			if r := replies["alice@example.test"]; r == nil || !strings.HasPrefix(r.StatusText, "2.0.0 <alice@example.test> ") || !strings.HasSuffix(r.StatusText, " Saved") {
				t.Errorf("alice's reply after the final dot: %+v; want 250 2.0.0 <alice@example.test> ... Saved", r)
			}
			// LMTP delivers before it replies: no wait.
			got := containing(dovecot.Mailbox("alice"), id)
			if len(got) != 1 {
				t.Fatalf("alice's Maildir holds %d messages with %s; want 1", len(got), id)
			}
			wantStored(t, got[0], msg, "sender@client.example.test", "alice@example.test")
			if !eventually(func() bool { return strings.Contains(dovecot.Log(), "msgid="+id+": saved mail to INBOX") }) {
				t.Errorf("the Dovecot log lacks the delivery of %s:\n%s", id, dovecot.Log())
			}
		})
	}
}

func TestDovecotOverQuotaAfterData(t *testing.T) {
	tempfail := StartDovecotLMTP(t, DovecotOptions{QuotaTempfail: true})
	for _, tt := range []struct {
		name     string
		d        *Dovecot
		code     int
		enhanced smtp.EnhancedCode
	}{
		{"default", dovecot, 552, smtp.EnhancedCode{5, 2, 2}},
		{"QuotaTempfail", tempfail, 452, smtp.EnhancedCode{4, 2, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg, id := testMessage("sender@client.example.test", "tiny@example.test", 2048)
			c := dial(t, "tcp", tt.d.Addr, true)
			if err := c.Mail("sender@client.example.test", nil); err != nil {
				t.Fatal(err)
			}
			// The quota is not checked at RCPT.
			for _, rcpt := range []string{"tiny@example.test", "alice@example.test"} {
				if err := c.Rcpt(rcpt, nil); err != nil {
					t.Fatalf("RCPT TO:<%s>: %v", rcpt, err)
				}
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			w.Write(msg)
			replies, err := w.CloseWithLMTPResponse()
			var perRcpt smtp.LMTPDataError
			if !errors.As(err, &perRcpt) || len(perRcpt) != 1 {
				t.Fatalf("after the final dot: %v; want one refusal, for tiny", err)
			}
			wantReply(t, "tiny after the final dot", perRcpt["tiny@example.test"], tt.code, tt.enhanced, "<tiny@example.test> Quota exceeded (mailbox for user is full)")
			if replies["alice@example.test"] == nil {
				t.Errorf("alice after the final dot: no 250; replies %+v", replies)
			}
			if got := containing(tt.d.Mailbox("alice"), id); len(got) != 1 {
				t.Errorf("alice's Maildir holds %d messages with %s; want 1", len(got), id)
			}
			if got := tt.d.Mailbox("tiny"); len(got) != 0 {
				t.Errorf("tiny's Maildir holds %d messages; want none", len(got))
			}
		})
	}
}

func TestDovecotLHLO(t *testing.T) {
	c := dial(t, "tcp", dovecot.Addr, true)
	for ext, want := range map[string]bool{
		"8BITMIME": true, "CHUNKING": true, "ENHANCEDSTATUSCODES": true, "PIPELINING": true,
		"SMTPUTF8": false, "DSN": false, "SIZE": false, "STARTTLS": false,
	} {
		if has, _ := c.Extension(ext); has != want {
			t.Errorf("LHLO offers %s: %v; want %v", ext, has, want)
		}
	}
}

// TestDovecotUserdbSocket asks the userdb socket as a recipient check
// would, in Dovecot's auth-master protocol.
func TestDovecotUserdbSocket(t *testing.T) {
	conn, err := net.DialTimeout("unix", dovecot.UserdbSocket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "VERSION\t1\t0\nUSER\t1\talice@example.test\tservice=lmtp\nUSER\t2\tnobody@example.test\tservice=lmtp\n")
	r := bufio.NewReader(conn)
	replies := map[string]string{}
	for len(replies) < 2 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the userdb replies: %v (so far %q)", err, replies)
		}
		f := strings.Split(strings.TrimSuffix(line, "\n"), "\t")
		if len(f) >= 2 && (f[0] == "USER" || f[0] == "NOTFOUND" || f[0] == "FAIL") {
			replies[f[1]] = line
		}
	}
	if want := "USER\t1\talice@example.test\t"; !strings.HasPrefix(replies["1"], want) || !strings.Contains(replies["1"], "\thome="+dovecot.Dir+"/mail/alice@example.test") {
		t.Errorf("userdb reply for alice: %q; want %q... with her home", replies["1"], want)
	}
	if want := "NOTFOUND\t2\n"; replies["2"] != want {
		t.Errorf("userdb reply for nobody: %q; want %q", replies["2"], want)
	}
}
