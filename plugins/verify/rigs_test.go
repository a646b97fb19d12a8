package verify_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

// The real downstreams, each started once for the package at its first
// use and stopped by TestMain (stopRigs).
var (
	postfixOnce, dovecotOnce sync.Once
	postfix                  *queuetest.Postfix
	dovecot                  *queuetest.Dovecot
	postfixErr, dovecotErr   error
)

func startPostfix(t *testing.T) *queuetest.Postfix {
	t.Helper()
	postfixOnce.Do(func() { postfix, postfixErr = queuetest.StartPostfixMain(queuetest.PostfixOptions{}) })
	if postfixErr != nil {
		t.Fatal(postfixErr)
	}
	return postfix
}

func startDovecot(t *testing.T) *queuetest.Dovecot {
	t.Helper()
	dovecotOnce.Do(func() { dovecot, dovecotErr = queuetest.StartDovecotLMTPMain(queuetest.DovecotOptions{}) })
	if dovecotErr != nil {
		t.Fatal(dovecotErr)
	}
	return dovecot
}

func stopRigs() {
	if postfix != nil {
		postfix.Stop()
	}
	if dovecot != nil {
		dovecot.Stop()
	}
}

// TestPostfix probes a real Postfix smtpd: its refusals reach the client
// word for word, its acceptances are cached, and it receives no message.
func TestPostfix(t *testing.T) {
	pf := startPostfix(t)
	p := build(t, fmt.Sprintf("method = \"smtp\"\nhost = %q\nhelo = \"front.example.test\"", pf.Addr))
	s := chain(t, p)
	unknown := "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"
	full := "452 4.2.2 <full@example.test>: Recipient address rejected: Mailbox full"
	for round := range 2 {
		hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
		hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
		hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), unknown)
		hookstest.ExpectReply(t, s.Rcpt("full@example.test"), full)
		// Postfix's 554 5.7.1 for another domain is refused with 550
		// (554 is no RCPT reply) and Postfix's words.
		hookstest.ExpectReply(t, s.Rcpt("x@other.test"), "550 5.7.1 <x@other.test>: Relay access denied")
		// The first round asks for all five; the second only for the
		// 452, which is not cached.
		expectAsked(t, p, []int64{5, 6}[round])
	}
	hookstest.Expect(t, s.Data("Subject: hi\r\n\r\nhello\r\n"), 250)
	if m := pf.Mailbox("alice"); len(m) != 0 {
		t.Fatalf("alice's Maildir at Postfix holds %d messages from the probes; want none", len(m))
	}
}

// TestDovecotLMTP probes a real Dovecot LMTP server, over TCP and its
// unix socket.
func TestDovecotLMTP(t *testing.T) {
	dv := startDovecot(t)
	for _, host := range []string{dv.Addr, "unix:" + dv.Socket} {
		t.Run(host, func(t *testing.T) {
			p := build(t, fmt.Sprintf("method = \"lmtp\"\nhost = %q", host))
			s := chain(t, p)
			for range 2 {
				hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
				hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"),
					"550 5.1.1 <nobody@example.test> User doesn't exist: nobody@example.test")
				expectAsked(t, p, 2)
			}
			if m := dv.Mailbox("alice@example.test"); len(m) != 0 {
				t.Fatalf("alice's Maildir at Dovecot holds %d messages from the probes; want none", len(m))
			}
		})
	}
}

// TestDovecotUserdb looks recipients up in a real Dovecot's userdb.
func TestDovecotUserdb(t *testing.T) {
	dv := startDovecot(t)
	p := build(t, fmt.Sprintf("method = \"dovecot\"\nhost = %q\nrecipient_delimiter = \"+\"", "unix:"+dv.UserdbSocket))
	s := chain(t, p)
	for range 2 {
		hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
		hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"),
			"550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")
		expectAsked(t, p, 2)
	}
	// Dovecot lowercases the name it looks up (auth_username_format %Lu);
	// the extension is cut off first.
	hookstest.ExpectReply(t, s.Rcpt("Bob@example.test"), "250 2.1.5 Recipient OK")
	hookstest.ExpectReply(t, s.Rcpt("alice+news@example.test"), "250 2.1.5 Recipient OK")
	hookstest.ExpectReply(t, s.Rcpt("nobody+news@example.test"),
		"550 5.1.1 <nobody+news@example.test>: Recipient address rejected: User unknown")
	expectAsked(t, p, 5)

	// Without recipient_delimiter, alice+news is no user.
	p = build(t, fmt.Sprintf("method = \"dovecot\"\nhost = %q", "unix:"+dv.UserdbSocket))
	hookstest.Expect(t, chain(t, p).Rcpt("alice+news@example.test"), 550, "User unknown")

	// The auth client socket is not the userdb socket: deferred, with the
	// reason in the log.
	p = build(t, fmt.Sprintf("method = \"dovecot\"\nhost = %q", "unix:"+dv.Socket))
	hookstest.Expect(t, chain(t, p).Rcpt("alice@example.test"), 450, "4.4.1")
}

// BenchmarkPostfixProbe measures one uncached check against a real
// Postfix: "known" reuses a kept connection (MAIL, RCPT, RSET), "unknown"
// opens one each time (a refusal closes it), "cached" asks nothing.
// The test Postfix runs with in_flow_delay = 0: with Postfix's default a
// run of probes (no DATA) uses up cleanup's tokens and every MAIL past
// about the hundredth waits 1s.
func BenchmarkPostfixProbe(b *testing.B) {
	pf, err := queuetest.StartPostfixMain(queuetest.PostfixOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pf.Stop() })
	for _, tc := range []struct{ name, rcpt, ttl string }{
		{"known", "alice@example.test", "0s"},
		{"unknown", "nobody@example.test", "0s"},
		{"cached", "alice@example.test", "1h"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := build(b, fmt.Sprintf("host = %q\npositive_ttl = %q\nnegative_ttl = %q", pf.Addr, tc.ttl, tc.ttl))
			for b.Loop() {
				if r := p.Rcpt(context.Background(), nil, nil, tc.rcpt); r.Code != hooks.Declined && r.Code != hooks.Deny {
					b.Fatalf("result %+v", r)
				}
			}
		})
	}
}
