package queuetest

import (
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
	if !strings.Contains(postfix.Log(), "to=<alice@example.test>, relay=virtual") {
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
