// The tests of a plugin drive whole SMTP sessions through a chain with
// hooks/hookstest: no socket, no sleeps, and the replies are exactly what a
// client would get. Each assertion compares whole replies and whole
// messages, so a changed code, text or header makes a test fail.
package example_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/example"
	_ "github.com/sluice-mta/sluice/plugins/rcptok" // registers rcptok for Build
)

// newHarness builds the chain a listener would run: example, then rcptok
// (which accepts the local recipients), then a queue that records what it
// takes.
func newHarness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("example", hookstest.Build(t, "example", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test", "bücher.example", "kernel.test"]`)),
		hookstest.Queue())
}

// want fails the test unless rep is exactly want on the wire.
func want(t *testing.T, what string, rep hooks.Reply, want string) {
	t.Helper()
	if got := rep.String(); got != want {
		t.Errorf("%s: reply %q; want %q", what, got, want)
	}
}

func TestRcpt(t *testing.T) {
	h := newHarness(t, `deny_recipients = ["spamtrap@example.test", "Old.Address@Example.TEST", "trap@bücher.example", "trap@kernel.test"]`)
	for _, tt := range []struct{ rcpt, want string }{
		{"bob@example.test", "250 2.1.5 Recipient OK"},
		{"spamtrap@example.test", "550 5.1.1 no such user"},
		{"SpamTrap@Example.Test", "550 5.1.1 no such user"},
		{"old.address@example.test", "550 5.1.1 no such user"},
		// An IDN in either form, in any ASCII case.
		{"trap@bücher.example", "550 5.1.1 no such user"},
		{"TRAP@XN--BCHER-KVA.example", "550 5.1.1 no such user"},
		{"bob@xn--bcher-kva.example", "250 2.1.5 Recipient OK"},
		// A Unicode case fold is not the listed address: the Kelvin sign
		// is no k. example declines it; rcptok refuses it as not local.
		{"trap@\u212Aernel.test", "550 5.7.1 relaying denied"},
		{"trap@kernel.test", "550 5.1.1 no such user"},
		// Not refused by example: rcptok decides.
		{"spamtrap@elsewhere.test", "550 5.7.1 relaying denied"},
	} {
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Cmd("MAIL FROM:<alice@example.org> SMTPUTF8"), 250) // the IDN recipients need it
		want(t, "RCPT "+tt.rcpt, s.Rcpt(tt.rcpt), tt.want)
	}
}

// TestMessage runs a whole transaction and checks the queued message byte
// for byte: Sluice's Received field on top, the message as sent, and the
// example header at the end of the header section.
func TestMessage(t *testing.T) {
	h := newHarness(t, `deny_recipients = ["spamtrap@example.test"]`)
	s := h.Connect("192.0.2.1")
	// Greeting runs the connect hook.
	want(t, "greeting", s.Greeting(), "220 mx.example.test ESMTP Sluice ready")
	// EHLO's reply lists the extensions on lines of their own.
	want(t, "EHLO", s.Helo("client.example"), "250 mx.example.test Hello client.example\nPIPELINING\n8BITMIME\nENHANCEDSTATUSCODES\nCHUNKING\nSMTPUTF8\nSIZE 26214400")
	want(t, "MAIL", s.Mail("alice@example.org"), "250 2.1.0 Sender OK")
	want(t, "RCPT", s.Rcpt("spamtrap@example.test"), "550 5.1.1 no such user")
	want(t, "RCPT", s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	if got := example.NoteDenied.Get(&s.Transaction().Notes); got != 1 {
		t.Errorf("note %s = %d; want 1", example.NoteDenied, got)
	}
	rep := s.Data("Subject: hello\r\n\r\nbody\r\n")

	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages; want 1", len(q))
	}
	want(t, "end of DATA", rep, "250 2.0.0 Ok: queued as "+q[0].QueueID)
	wantData := "Received: from client.example ([192.0.2.1])\r\n" +
		"\tby mx.example.test (Sluice) with ESMTP id " + q[0].QueueID + "\r\n" +
		"\tfor <bob@example.test>; Fri, 02 Jan 2026 03:04:05 +0000\r\n" +
		"Subject: hello\r\n" +
		"X-Sluice-Example: conn=" + s.Conn().ID + " helo=client.example\r\n" +
		"\r\n" +
		"body\r\n"
	if got := string(q[0].Data); got != wantData {
		t.Errorf("queued\n%q\nwant\n%q", got, wantData)
	}
	if got := q[0].Notes[example.NoteDenied.Name()]; got != 1 {
		t.Errorf("queued note %s = %v; want 1", example.NoteDenied, got)
	}
}

// TestNotes checks the connection notes across transactions.
func TestNotes(t *testing.T) {
	h := newHarness(t, ``)
	s := h.Connect("192.0.2.1")
	s.Greeting()
	c := s.Conn()
	if got := example.NoteConn.Get(&c.Notes); got != c.ID {
		t.Errorf("note %s = %q; want the connection id %q", example.NoteConn, got, c.ID)
	}

	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, "Subject: 1\r\n\r\n1\r\n"), 250)
	if got := example.NoteHelo.Get(&c.Notes); got != "client.example.test" {
		t.Errorf("note %s = %q", example.NoteHelo, got)
	}
	// A second greeting replaces the name; RSET ends a transaction that
	// was never queued, and it counts too.
	hookstest.Expect(t, s.Helo("other.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	s.Reset()
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, "Subject: 2\r\n\r\n2\r\n"), 250)

	if got := example.NoteHelo.Get(&c.Notes); got != "other.example" {
		t.Errorf("note %s = %q; want the latest name", example.NoteHelo, got)
	}
	if got := example.NoteTransactions.Get(&c.Notes); got != 3 {
		t.Errorf("note %s = %d; want 3", example.NoteTransactions, got)
	}
	q := h.Queued()
	if len(q) != 2 || !strings.Contains(string(q[1].Data), "\r\nX-Sluice-Example: conn="+c.ID+" helo=other.example\r\n") {
		t.Errorf("queued %q", q)
	}
	if _, ok := q[1].Notes[example.NoteDenied.Name()]; ok {
		t.Errorf("transaction note %s leaked into the next transaction", example.NoteDenied)
	}
}

func TestHeaderSetting(t *testing.T) {
	for _, tt := range []struct{ settings, field string }{
		{`header = "X-Trace"`, "\r\nX-Trace: conn="},
		{`header = ""`, ""}, // no header
	} {
		h := newHarness(t, tt.settings)
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, "Subject: x\r\n\r\nx\r\n"), 250)
		data := string(h.Queued()[0].Data)
		if tt.field == "" {
			if strings.Contains(data, "conn=") {
				t.Errorf("%s: a header was added: %q", tt.settings, data)
			}
		} else if !strings.Contains(data, tt.field) {
			t.Errorf("%s: no %q in %q", tt.settings, tt.field, data)
		}
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`deny_recipients = ["spamtrap"]`, `deny_recipients: "spamtrap" is not an address: want "user@domain"`},
		{`deny_recipients = ["@example.test"]`, `deny_recipients: "@example.test" is not an address`},
		{`deny_recipients = ["<a@example.test>"]`, `deny_recipients: "<a@example.test>" is not an address`},
		{`deny_recipients = ["a@example..test"]`, `deny_recipients: "a@example..test" is not an address`},
		{"deny_recipients = [\"a@\u212Aernel.test\"]", `deny_recipients: "a@\u212aernel.test" is not an address`},
		{`header = "X Example"`, `header = "X Example": want a header field name`},
		{`header = "X-Example:"`, `header = "X-Example:": want a header field name`},
		{`deny_recipients = "spamtrap@example.test"`, `deny_recipients: expected a list of strings, got a string`},
		{`headers = "X-Example"`, `unknown key "headers"`},
	} {
		hookstest.ExpectBuildError(t, "example", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md,
// so the example cannot name a key that does not exist.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "example", "README.md")
}
