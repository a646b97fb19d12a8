package t_test

import (
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

// The downstream servers these tests share: started at first use, stopped
// when the package's tests end.
var (
	downstreams   sync.Mutex
	sharedPostfix = map[queuetest.PostfixOptions]*queuetest.Postfix{}
	sharedDovecot = map[queuetest.DovecotOptions]*queuetest.Dovecot{}
)

func postfixFor(t *testing.T, o queuetest.PostfixOptions) *queuetest.Postfix {
	t.Helper()
	return shared(t, sharedPostfix, o, queuetest.StartPostfixMain, (*queuetest.Postfix).Stop)
}

func dovecotFor(t *testing.T, o queuetest.DovecotOptions) *queuetest.Dovecot {
	t.Helper()
	return shared(t, sharedDovecot, o, queuetest.StartDovecotLMTPMain, (*queuetest.Dovecot).Stop)
}

// shared returns the daemon started with options o, starting it at first
// use; atExit stops it.
func shared[O comparable, D any](t *testing.T, m map[O]D, o O, start func(O) (D, error), stop func(D) error) D {
	t.Helper()
	downstreams.Lock()
	defer downstreams.Unlock()
	if d, ok := m[o]; ok {
		return d
	}
	d, err := start(o)
	if err != nil {
		t.Fatalf("starting a private %T: %v", d, err)
	}
	atExit = append(atExit, func() { stop(d) })
	m[o] = d
	return d
}

// marked counts the messages in box that carry marker.
func marked(box [][]byte, marker string) int {
	n := 0
	for _, m := range box {
		if bytes.Contains(m, []byte(marker)) {
			n++
		}
	}
	return n
}

// waitMarked waits until box() holds want messages carrying marker (the
// downstreams deliver a moment after their 250), then makes sure no more
// arrive for a short while, and returns the messages that carry it.
func waitMarked(t *testing.T, what string, box func() [][]byte, marker string, want int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for marked(box(), marker) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// A duplicate would come right after: look again a little later.
	settle := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(settle) && marked(box(), marker) == want {
		time.Sleep(20 * time.Millisecond)
	}
	var got [][]byte
	for _, m := range box() {
		if bytes.Contains(m, []byte(marker)) {
			got = append(got, m)
		}
	}
	if len(got) != want {
		t.Errorf("%s holds %d copies of %q; want %d", what, len(got), marker, want)
	}
	return got
}

// sendRetrying sends one message with swaks as an MTA would: again after a
// 4xx reply, up to three times, and returns the last transcript.
func sendRetrying(t *testing.T, addr string, args ...string) string {
	t.Helper()
	var out string
	for try := 0; try < 3; try++ {
		out, _ = swaks(t, addr, args...)
		if !strings.Contains(out, "<** 4") {
			return out
		}
	}
	return out
}

// TestDovecotLMTPWithPostfixAsFallback is the result matrix of
// docs/downstream.md against a real Dovecot LMTP and a real Postfix: a
// listener hands mail to Dovecot, with the site's Postfix as the
// fallback_queue and dsn_queue. Each cell is checked by counting copies
// in the final mailboxes after the client retried as the replies said.
func TestDovecotLMTPWithPostfixAsFallback(t *testing.T) {
	postfix := postfixFor(t, queuetest.PostfixOptions{})
	for _, tempfail := range []bool{false, true} {
		t.Run(fmt.Sprintf("quota_full_tempfail=%v", tempfail), func(t *testing.T) {
			dovecot := dovecotFor(t, queuetest.DovecotOptions{QuotaTempfail: tempfail})
			s := startSmtpd(t, fmt.Sprintf(`hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name    = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "dovecot"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.dovecot]
use = "smtpforward"
host = "unix:%s"
lmtp = true
fallback_queue = "postfix"

[plugins.postfix]
use = "smtpforward"
host = "%s"
`, dovecot.Socket, postfix.Addr))
			addr := s.Addr("mx")
			// Over tiny's 1 KiB quota.
			big := strings.Repeat("A line of text to fill the mailbox of tiny beyond its quota.\n", 40)

			// All delivered.
			marker := fmt.Sprintf("all-ok-%v-%d", tempfail, time.Now().UnixNano())
			out := sendRetrying(t, addr, "--from", "bob@example.test", "--to", "alice@example.test", "--header", "Subject: "+marker)
			if !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
				t.Fatalf("all ok: no 250:\n%s", out)
			}
			waitMarked(t, "alice's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("alice") }, marker, 1)

			// Dovecot delivers to alice and refuses tiny after the
			// message (over quota): permanently (552) or for now (452).
			marker = fmt.Sprintf("quota-%v-%d", tempfail, time.Now().UnixNano())
			out = sendRetrying(t, addr, "--from", "bob@example.test", "--to", "alice@example.test,tiny@example.test", "--header", "Subject: "+marker, "--body", big)
			if !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
				t.Fatalf("quota: no 250:\n%s", out)
			}
			waitMarked(t, "alice's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("alice") }, marker, 1)
			waitMarked(t, "tiny's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("tiny") }, marker, 0)
			if tempfail {
				// Refused for now: the site's Postfix has it for tiny alone.
				got := waitMarked(t, "tiny's mailbox at the fallback Postfix", func() [][]byte { return postfix.Mailbox("tiny") }, marker, 1)
				waitMarked(t, "alice's mailbox at the fallback Postfix", func() [][]byte { return postfix.Mailbox("alice") }, marker, 0)
				if len(got) == 1 && !bytes.Contains(got[0], []byte("Received: from ")) {
					t.Errorf("the fallback copy has no Received field:\n%s", got[0])
				}
			} else {
				// Refused for good: bob gets a notification through Postfix.
				got := waitMarked(t, "bob's mailbox at Postfix (the notification)", func() [][]byte { return postfix.Mailbox("bob") }, marker, 1)
				for _, want := range []string{"From: \"Mail Delivery System\" <MAILER-DAEMON@mx.example.test>", "Final-Recipient: rfc822; tiny@example.test", "Action: failed", "Status: 5.2.2", "Diagnostic-Code: smtp; 552 5.2.2"} {
					if len(got) == 1 && !bytes.Contains(got[0], []byte(want)) {
						t.Errorf("the notification lacks %q:\n%s", want, got[0])
					}
				}
			}

			// Refused at RCPT by Dovecot (unknown user) beside a good
			// recipient: alice gets it, bob a notification for nobody.
			marker = fmt.Sprintf("unknown-%v-%d", tempfail, time.Now().UnixNano())
			out = sendRetrying(t, addr, "--from", "bob@example.test", "--to", "alice@example.test,nobody@example.test", "--header", "Subject: "+marker)
			if !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
				t.Fatalf("unknown: no 250:\n%s", out)
			}
			waitMarked(t, "alice's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("alice") }, marker, 1)
			got := waitMarked(t, "bob's mailbox at Postfix (the notification)", func() [][]byte { return postfix.Mailbox("bob") }, marker, 1)
			if len(got) == 1 && !bytes.Contains(got[0], []byte("Final-Recipient: rfc822; nobody@example.test")) {
				t.Errorf("the notification does not name nobody@example.test:\n%s", got[0])
			}

			// NOTIFY=SUCCESS: Dovecot's LMTP offers no DSN, so Sluice
			// sends the success notice itself (Action: delivered).
			if !tempfail {
				marker = fmt.Sprintf("notify-success-%d", time.Now().UnixNano())
				c, err := smtp.Dial(addr)
				if err != nil {
					t.Fatal(err)
				}
				c.Hello("client.example.test")
				if err := c.Mail("bob@example.test", &smtp.MailOptions{EnvelopeID: "env-" + marker}); err != nil {
					t.Fatal(err)
				}
				if err := c.Rcpt("alice@example.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess}}); err != nil {
					t.Fatalf("RCPT with NOTIFY=SUCCESS: %v (DSN must be offered with a dsn_queue)", err)
				}
				w, err := c.Data()
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(w, "From: bob@example.test\r\nSubject: %s\r\n\r\nHello.\r\n", marker)
				if _, err := w.CloseWithResponse(); err != nil {
					t.Fatal(err)
				}
				c.Quit()
				c.Close()
				waitMarked(t, "alice's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("alice") }, marker, 1)
				got := waitMarked(t, "bob's mailbox at Postfix (the success notice)", func() [][]byte { return postfix.Mailbox("bob") }, marker, 1)
				for _, want := range []string{"Subject: Successful Mail Delivery Report", "Original-Envelope-Id: env-" + marker, "Final-Recipient: rfc822; alice@example.test", "Action: delivered", "Status: 2.0.0", "Content-Type: text/rfc822-headers"} {
					if len(got) == 1 && !bytes.Contains(got[0], []byte(want)) {
						t.Errorf("the success notice lacks %q:\n%s", want, got[0])
					}
				}
			}

			// Nobody delivered: the client hears Dovecot's refusal.
			marker = fmt.Sprintf("none-%v-%d", tempfail, time.Now().UnixNano())
			out = sendRetrying(t, addr, "--from", "bob@example.test", "--to", "nobody@example.test", "--header", "Subject: "+marker)
			if !strings.Contains(out, "<** 550 5.1.1 Downstream server refused <nobody@example.test>: 550 5.1.1") {
				t.Fatalf("none: want Dovecot's 550 passed on:\n%s", out)
			}
			waitMarked(t, "bob's mailbox at Postfix", func() [][]byte { return postfix.Mailbox("bob") }, marker, 0)
		})
	}
}

// TestPostfixDownstreamDSNAndPartialDelivery: smtpforward to a real
// Postfix that refuses one recipient for good and one for now at RCPT. The
// good recipient gets one copy, the one refused for now goes to the
// fallback alone, the sender gets a notification for the other, and the
// DSN parameters the client gave reach Postfix (its own success
// notification carries ENVID and ORCPT).
func TestPostfixDownstreamDSNAndPartialDelivery(t *testing.T) {
	postfix := postfixFor(t, queuetest.PostfixOptions{})
	s := startSmtpd(t, fmt.Sprintf(`hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name    = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "smtpforward"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.smtpforward]
host = "%[1]s"
fallback_queue = "retry"
dsn_queue = "bounces"

[plugins.retry]
use = "maildir"
path = "./var/retry"

[plugins.bounces]
use = "smtpforward"
host = "%[1]s"
`, postfix.Addr))
	addr := s.Addr("mx")
	marker := fmt.Sprintf("partial-%d", time.Now().UnixNano())
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("DSN"); !ok {
		t.Fatal("the listener does not offer DSN although smtpforward has a dsn_queue")
	}
	if err := c.Mail("bob@example.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env-" + marker}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"alice@example.test", "nobody@example.test", "full@example.test"} {
		opts := &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig-" + r}
		if err := c.Rcpt(r, opts); err != nil {
			t.Fatalf("RCPT %s: %v (Sluice accepts every local recipient; the downstream decides after)", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "From: bob@example.test\r\nSubject: %s\r\n\r\nHello.\r\n", marker)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("end of the message: %v", err)
	}
	if !strings.HasPrefix(resp.StatusText, "2.0.0 Ok: queued as ") {
		t.Fatalf("end of the message: %q", resp.StatusText)
	}
	c.Quit()

	// alice: one copy.
	waitMarked(t, "alice's mailbox at Postfix", func() [][]byte { return postfix.Mailbox("alice") }, marker, 1)
	// full: refused for now, in the fallback Maildir alone.
	files := maildirFiles(t, s.dir+"/var/retry")
	if len(files) != 1 {
		t.Fatalf("the fallback Maildir holds %d messages; want 1", len(files))
	}
	if got := readFile(t, files[0]); !strings.Contains(got, marker) {
		t.Errorf("the fallback Maildir holds another message:\n%s", got)
	}
	if !strings.Contains(s.Log(), `1 refused for now handed to \"retry\"`) {
		t.Errorf("smtpd's log does not say where full@ went:\n%s", s.Log())
	}
	// bob: Sluice's notification for nobody, and Postfix's success
	// notification for alice, which carries the DSN parameters.
	got := waitMarked(t, "bob's mailbox at Postfix", func() [][]byte { return postfix.Mailbox("bob") }, marker, 2)
	var failure, success []byte
	for _, m := range got {
		if bytes.Contains(m, []byte("Action: failed")) {
			failure = m
		}
		if bytes.Contains(m, []byte("Action: delivered")) {
			success = m
		}
	}
	for _, want := range []string{"Original-Envelope-Id: env-" + marker, "Original-Recipient: rfc822;orig-nobody@example.test", "Final-Recipient: rfc822; nobody@example.test", "Status: 5.1.1", "Content-Type: text/rfc822-headers"} {
		if !bytes.Contains(failure, []byte(want)) {
			t.Errorf("Sluice's notification lacks %q:\n%s", want, failure)
		}
	}
	for _, want := range []string{"Original-Envelope-Id: env-" + marker, "orig-alice@example.test", "alice@example.test"} {
		if !bytes.Contains(success, []byte(want)) {
			t.Errorf("Postfix's success notification lacks %q (the DSN parameters did not reach Postfix):\n%s", want, success)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sendGo sends msg with go-smtp's client (which speaks SMTPUTF8, unlike
// swaks) and returns the reply to the final dot.
func sendGo(t *testing.T, addr string, opts *smtp.MailOptions, from string, to []string, msg string) (string, error) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, opts); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

// TestSMTPUTF8AndEightBitDownstream: a message that asked for SMTPUTF8
// but is all ASCII reaches Dovecot's LMTP, which does not offer SMTPUTF8;
// one that needs it is refused with a clear reply; an 8-bit body reaches
// a Postfix started without 8BITMIME converted to quoted-printable, and
// decodes to the bytes that were sent.
func TestSMTPUTF8AndEightBitDownstream(t *testing.T) {
	dovecot := dovecotFor(t, queuetest.DovecotOptions{})
	postfix := postfixFor(t, queuetest.PostfixOptions{No8BitMIME: true})
	s := startSmtpd(t, fmt.Sprintf(`hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name    = "lmtp"
address = "127.0.0.1:0"
plugins = ["rcptok", "lmtp"]

[[listener]]
name    = "smtp"
address = "127.0.0.1:0"
plugins = ["rcptok", "smtpforward"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.lmtp]
host = "%s"

[plugins.smtpforward]
host = "%s"
`, dovecot.Addr, postfix.Addr))

	marker := fmt.Sprintf("utf8-ascii-%d", time.Now().UnixNano())
	reply, err := sendGo(t, s.Addr("lmtp"), &smtp.MailOptions{UTF8: true}, "bob@example.test", []string{"alice@example.test"},
		"From: bob@example.test\r\nSubject: "+marker+"\r\n\r\nplain ASCII\r\n")
	if err != nil || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("an all-ASCII SMTPUTF8 message to Dovecot: %q, %v", reply, err)
	}
	waitMarked(t, "alice's Dovecot mailbox", func() [][]byte { return dovecot.Mailbox("alice") }, marker, 1)

	_, err = sendGo(t, s.Addr("lmtp"), &smtp.MailOptions{UTF8: true}, "bob@example.test", []string{"alice@example.test"},
		"From: bob@example.test\r\nSubject: Grüße\r\n\r\nhello\r\n")
	if err == nil || !strings.Contains(err.Error(), "554") || !strings.Contains(err.Error(), "Downstream server does not support SMTPUTF8, which this message needs") {
		t.Fatalf("a UTF-8 header to Dovecot: want 554 5.6.7 ... SMTPUTF8, got %v", err)
	}

	marker = fmt.Sprintf("eightbit-%d", time.Now().UnixNano())
	body := "Grüße aus Köln, 10 € pro Stück.\r\n"
	reply, err = sendGo(t, s.Addr("smtp"), &smtp.MailOptions{Body: smtp.Body8BitMIME}, "bob@example.test", []string{"alice@example.test"},
		"From: bob@example.test\r\nSubject: "+marker+"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"+body)
	if err != nil || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("an 8-bit body to Postfix without 8BITMIME: %q, %v", reply, err)
	}
	got := waitMarked(t, "alice's mailbox at Postfix", func() [][]byte { return postfix.Mailbox("alice") }, marker, 1)
	if len(got) != 1 {
		return
	}
	m := got[0]
	for _, c := range m {
		if c >= 0x80 {
			t.Fatalf("the message reached Postfix with 8-bit bytes:\n%s", m)
		}
	}
	if !bytes.Contains(m, []byte("Content-Transfer-Encoding: quoted-printable")) || !bytes.Contains(m, []byte("Content-Type: text/plain; charset=utf-8")) {
		t.Fatalf("the message was not converted to quoted-printable:\n%s", m)
	}
	_, enc, _ := bytes.Cut(m, []byte("\n\n"))
	dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(enc)))
	if err != nil {
		t.Fatal(err)
	}
	// Postfix stores LF line ends.
	if want := strings.ReplaceAll(body, "\r\n", "\n"); string(dec) != want {
		t.Errorf("the converted body decodes to %q; want %q", dec, want)
	}
}

// TestDownstreamDocsExamplesLoad: every TOML example of docs/downstream.md
// passes `smtpd check`, so an admin can paste it.
func TestDownstreamDocsExamplesLoad(t *testing.T) {
	doc, err := os.ReadFile(rootDir + "/docs/downstream.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```toml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) < 3 {
		t.Fatalf("docs/downstream.md has %d TOML examples; want at least 3", len(blocks))
	}
	for i, b := range blocks {
		path := writeFile(t, t.TempDir(), "example.toml", b[1])
		cmd := exec.Command(smtpdBin, "check", "-config", path)
		cmd.Dir = t.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docs/downstream.md example %d does not load: %v\n%s\n--- config:\n%s", i+1, err, out, b[1])
		}
	}
}
