package smtpproxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

// The real daemons of this package: a private Postfix and a private
// Dovecot LMTP server (quota failures temporary), each started once, on
// first use, and stopped by TestMain.
var (
	postfixOnce, dovecotOnce sync.Once
	postfix                  *queuetest.Postfix
	dovecot                  *queuetest.Dovecot
	postfixErr, dovecotErr   error
)

func TestMain(m *testing.M) {
	code := m.Run()
	var errs []error
	if postfix != nil {
		errs = append(errs, postfix.Stop())
	}
	if dovecot != nil {
		errs = append(errs, dovecot.Stop())
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func startPostfix(t *testing.T) *queuetest.Postfix {
	t.Helper()
	postfixOnce.Do(func() { postfix, postfixErr = queuetest.StartPostfixMain(queuetest.PostfixOptions{}) })
	if postfixErr != nil {
		t.Fatal(postfixErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Postfix maillog:\n%s", postfix.Log())
		}
	})
	return postfix
}

func startDovecot(t *testing.T) *queuetest.Dovecot {
	t.Helper()
	dovecotOnce.Do(func() {
		dovecot, dovecotErr = queuetest.StartDovecotLMTPMain(queuetest.DovecotOptions{QuotaTempfail: true})
	})
	if dovecotErr != nil {
		t.Fatal(dovecotErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Dovecot log:\n%s", dovecot.Log())
		}
	})
	return dovecot
}

// uniqueMessage returns a message with a Message-ID of its own, padded
// to at least size bytes, and that Message-ID.
func uniqueMessage(t *testing.T, size int) (string, string) {
	id := fmt.Sprintf("<%s-%d@client.example.test>", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
	var b strings.Builder
	fmt.Fprintf(&b, "Message-ID: %s\r\nSubject: proxied\r\n\r\nHello.\r\n.a line that starts with a dot\r\n", id)
	for b.Len() < size {
		b.WriteString("padding padding padding padding padding padding padding padding\r\n")
	}
	return b.String(), id
}

// holding returns the messages of a mailbox that contain the Message-ID.
func holding(msgs [][]byte, id string) int {
	n := 0
	for _, m := range msgs {
		if bytes.Contains(m, []byte("Message-ID: "+id)) {
			n++
		}
	}
	return n
}

// TestRealPostfix proxies to a real Postfix smtpd: its own refusals reach
// the client at RCPT, word for word; the good recipient gets the message
// once; a second transaction rides the same downstream connection.
func TestRealPostfix(t *testing.T) {
	pf := startPostfix(t)
	r := startRelay(t, pf.Addr)
	h, _ := proxy(t, host(r.addr))
	s := h.Connect("192.0.2.1")
	msg, id := uniqueMessage(t, 0)
	tr := s.SendAll("a@example.org", []string{"nobody@example.test", "full@example.test", "bob@example.test", "victim@elsewhere.test"}, msg)
	hookstest.Expect(t, tr.Mail, 250)
	hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table")
	hookstest.ExpectReply(t, tr.Rcpt[1], "452 4.2.2 <full@example.test>: Recipient address rejected: Mailbox full")
	hookstest.Expect(t, tr.Rcpt[2], 250)
	// Postfix refuses to relay too; rcptok would have (see
	// TestForeignDomainStaysRefused).
	hookstest.ExpectReply(t, tr.Rcpt[3], "554 5.7.1 <victim@elsewhere.test>: Relay access denied")
	hookstest.Expect(t, tr.Data, 250, "queued as")

	msg2, id2 := uniqueMessage(t, 0)
	hookstest.Expect(t, s.Send("a@example.org", []string{"alice@example.test"}, msg2), 250, "queued as")
	alice := pf.WaitMailbox(t, "alice", 1, 10*time.Second)
	if holding(alice, id2) != 1 {
		t.Errorf("alice's mailbox holds the second message %d times, want 1", holding(alice, id2))
	}
	// Delivered in order by one Postfix: bob's copy is in by now.
	bob := pf.WaitMailbox(t, "bob", 1, 10*time.Second)
	if n := holding(bob, id); n != 1 {
		t.Fatalf("bob's mailbox holds the message %d times, want 1", n)
	}
	for _, m := range bob {
		if bytes.Contains(m, []byte("Message-ID: "+id)) && !bytes.HasSuffix(m, []byte(strings.ReplaceAll(msg, "\r\n", "\n"))) {
			t.Errorf("bob's copy does not end with the message sent:\n%s", m)
		}
	}
	if _, all := r.counts(); all != 1 {
		t.Errorf("%d connections to Postfix for two transactions of one client connection, want 1", all)
	}
	s.Close()
	waitFor(t, "the connection to Postfix is closed after the disconnect", func() bool { open, _ := r.counts(); return open == 0 })
}

// TestRealDovecotLMTP proxies to a real Dovecot LMTP server: an unknown
// user is refused at RCPT with Dovecot's words; a user over quota is
// refused for now after the message and goes to the fallback_queue while
// the other recipient has her copy.
func TestRealDovecotLMTP(t *testing.T) {
	dv := startDovecot(t)
	h, p := proxy(t, host(dv.Addr)+"lmtp = true\nfallback_queue = \"spool\"")
	spool := &hookstest.QueueRecorder{}
	if err := p.SetRoutes(map[string]hooks.Queue{"spool": spool}); err != nil {
		t.Fatal(err)
	}
	msg, id := uniqueMessage(t, 4096) // over tiny's 1 KiB quota
	tr := h.Connect("192.0.2.1").SendAll("a@example.org", []string{"nobody@example.test", "alice@example.test", "tiny@example.test"}, msg)
	hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.1.1 <nobody@example.test> User doesn't exist: nobody@example.test")
	hookstest.Expect(t, tr.Rcpt[1], 250)
	hookstest.Expect(t, tr.Rcpt[2], 250)
	hookstest.Expect(t, tr.Data, 250, "queued as")
	if n := holding(dv.Mailbox("alice"), id); n != 1 {
		t.Errorf("alice's mailbox holds the message %d times, want 1", n)
	}
	if n := holding(dv.Mailbox("tiny"), id); n != 0 {
		t.Errorf("tiny's mailbox, over quota, holds the message %d times", n)
	}
	got := spool.Messages()
	if len(got) != 1 || strings.Join(got[0].Recipients, " ") != "tiny@example.test" || !strings.HasSuffix(string(got[0].Data), msg) {
		t.Fatalf("fallback_queue got %d messages (%+v), want the message for tiny alone", len(got), got)
	}
}

// TestRealPostfixAfterARefusedSender: a plugin after smtpproxy refused
// the sender Postfix had taken; Postfix, which refuses a nested MAIL,
// gets RSET before the next one.
func TestRealPostfixAfterARefusedSender(t *testing.T) {
	pf := startPostfix(t)
	p := hookstest.Build(t, "smtpproxy", host(pf.Addr))
	ok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("smtpproxy", p), hookstest.Plugin("trap", refuseAfterProxy{}), hookstest.Plugin("rcptok", ok))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.test"), 250)
	hookstest.ExpectReply(t, s.Mail("spammer@example.org"), "550 5.7.1 bad sender")
	msg, id := uniqueMessage(t, 0)
	hookstest.Expect(t, s.Send("a@example.org", []string{"alice@example.test"}, msg), 250, "queued as")
	waitFor(t, "alice has the message", func() bool { return holding(pf.Mailbox("alice"), id) == 1 })
}
