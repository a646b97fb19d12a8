package rhsbl_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/rhsbl"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// dbl is a zone shaped like dbl.spamhaus.org's codes.
const dbl = `
[[zones]]
zone = "dbl.example.test"
codes = { "127.0.1.2" = "spam domain", "127.0.1.4" = "phish domain", "127.0.1.102" = "abused legit spam" }
`

func records() []string {
	return []string{
		`spam.example.dbl.example.test. 300 IN A 127.0.1.2`,
		`phish.example.dbl.example.test. 300 IN A 127.0.1.4`,
		`odd.example.dbl.example.test. 300 IN A 127.0.1.99`,
	}
}

func newHarness(t *testing.T, srv *dnstest.Server, settings string, before ...hooks.Instance) *hookstest.Harness {
	t.Helper()
	settings += fmt.Sprintf("[dns]\nservers = [%q]\ntimeout = \"300ms\"\n", srv.Addr)
	list := append(before,
		hookstest.Plugin("rhsbl", hookstest.Build(t, "rhsbl", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	return hookstest.New(t, list...)
}

func TestSender(t *testing.T) {
	srv := dnstest.Start(t, records()...)
	h := newHarness(t, srv, dbl)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.Expect(t, s.Mail("alice@Spam.Example"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"),
		"554 5.7.1 Service unavailable; Sender address [alice@Spam.Example] blocked using dbl.example.test; listed as spam domain")
	hookstest.Expect(t, s.Rcpt("postmaster@example.test"), 250)
	got := rhsbl.NoteListings.Get(&s.Transaction().Notes)
	if len(got) != 1 || got[0].Name != "spam.example" || got[0].Zone != "dbl.example.test" || fmt.Sprint(got[0].Codes) != "[127.0.1.2]" {
		t.Errorf("note %s = %+v", rhsbl.NoteListings, got)
	}
	hookstest.Expect(t, s.Data("Subject: x\r\n\r\nbody\r\n"), 250)

	// The next transaction, from a domain listed nowhere, or with a code
	// the filter does not count.
	for _, from := range []string{"alice@ham.example", "alice@odd.example"} {
		hookstest.Expect(t, s.Send(from, []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)
	}
	q := h.Queued()
	if len(q) != 3 {
		t.Fatalf("queued %d messages; want 3", len(q))
	}
	if _, ok := q[1].Notes[rhsbl.NoteListings.Name()]; ok {
		t.Errorf("ham.example: note %s set", rhsbl.NoteListings)
	}
}

func TestHelo(t *testing.T) {
	srv := dnstest.Start(t, records()...)
	h := newHarness(t, srv, dbl)
	s := h.Connect("192.0.2.1")
	// A HELO name listed nowhere (only the name itself is looked up, not
	// its parents).
	hookstest.Expect(t, s.Helo("mail.phish.example"), 250)
	s2 := h.Connect("192.0.2.1")
	hookstest.Expect(t, s2.Helo("phish.example"), 250)
	// The null sender: the HELO name only.
	hookstest.Expect(t, s2.Mail(""), 250)
	hookstest.ExpectReply(t, s2.Rcpt("bob@example.test"),
		"554 5.7.1 Service unavailable; Helo command [phish.example] blocked using dbl.example.test; listed as phish domain")
	hookstest.Expect(t, s.Send("alice@ham.example", []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)

	// A sender and a HELO name both listed: the sender's reply.
	s3 := h.Connect("192.0.2.1")
	hookstest.Expect(t, s3.Helo("phish.example"), 250)
	hookstest.Expect(t, s3.Mail("alice@spam.example"), 250)
	hookstest.ExpectReply(t, s3.Rcpt("bob@example.test"),
		"554 5.7.1 Service unavailable; Sender address [alice@spam.example] blocked using dbl.example.test; listed as spam domain")
	if got := rhsbl.NoteListings.Get(&s3.Transaction().Notes); len(got) != 2 || got[0].Name != "spam.example" || got[1].Name != "phish.example" {
		t.Errorf("note %s = %+v; want the sender's listing, then the HELO name's", rhsbl.NoteListings, got)
	}

	// check = ["sender"]: the HELO name is not looked up; an address
	// literal never is.
	n := len(srv.Queries())
	h = newHarness(t, srv, "check = [\"sender\"]\n"+dbl)
	hookstest.Expect(t, h.Connect("192.0.2.1").Send("", []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)
	s4 := h.Connect("192.0.2.1")
	hookstest.Expect(t, s4.Helo("[192.0.2.1]"), 250)
	if q := srv.Queries(); len(q) != n {
		t.Errorf("queries %q; want none", q[n:])
	}
}

// TestHeloAgain: the same HELO name again while its lookups are under way
// (EHLO after STARTTLS) does not ask the lists again; they are asked
// again once they have ended.
func TestHeloAgain(t *testing.T) {
	const q = "A slow.example.dbl.example.test."
	srv := dnstest.Start(t, records()...)
	srv.Hang("slow.example.dbl.example.test.")
	asked := func() int { return len(slices.DeleteFunc(srv.Queries(), func(s string) bool { return s != q })) }
	h := newHarness(t, srv, dbl)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("slow.example"), 250)
	hookstest.Expect(t, s.Helo("slow.example"), 250)
	hookstest.Expect(t, s.Send("alice@ham.example", []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)
	if n := asked(); n != 1 {
		t.Errorf("%q asked %d times while its lookup was under way; want once", q, n)
	}
	time.Sleep(400 * time.Millisecond) // past the lookup timeout
	hookstest.Expect(t, s.Helo("slow.example"), 250)
	for deadline := time.Now().Add(2 * time.Second); asked() < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := asked(); n != 2 {
		t.Errorf("%q asked %d times after the first lookup ended; want twice", q, n)
	}
}

func TestRejectAtMailAndTXT(t *testing.T) {
	srv := dnstest.Start(t, append(records(), dnstest.TXT("spam.example.dbl.example.test.", "https://example.test/dbl/spam.example"))...)
	h := newHarness(t, srv, "reject_at = \"mail\"\n"+dbl+"txt = true\naction = \"defer\"\n")
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.ExpectReply(t, s.Mail("alice@spam.example"),
		"451 4.7.1 Service unavailable; Sender address [alice@spam.example] blocked using dbl.example.test; https://example.test/dbl/spam.example")
}

type relayer struct{}

func (relayer) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	c.Relay = true
	return hooks.Result{}
}

func TestSkipped(t *testing.T) {
	srv := dnstest.Start(t, records()...)
	h := newHarness(t, srv, dbl, hookstest.Plugin("relay", relayer{}))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("spam.example"), 250)
	hookstest.Expect(t, s.Mail("alice@spam.example"), 250)
	hookstest.Expect(t, s.Rcpt("bob@example.test"), 250)
	if q := srv.Queries(); len(q) != 0 {
		t.Errorf("queries = %q; want none for a relay client", q)
	}
}

func TestDNSFailure(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Hang("slow.example.dbl.example.test.")
	srv.ServFail("broken.example.dbl.example.test.")
	for _, tt := range []struct{ settings, from, want string }{
		{``, "alice@slow.example", "250 2.1.5 Recipient OK"},
		{``, "alice@broken.example", "250 2.1.5 Recipient OK"},
		{`dns_failure = "defer"` + "\n", "alice@slow.example", "451 4.4.3 Service temporarily unavailable; cannot check sender address [alice@slow.example] against dbl.example.test; try again later"},
	} {
		h := newHarness(t, srv, tt.settings+dbl)
		s := h.Connect("192.0.2.1")
		start := time.Now()
		hookstest.Expect(t, s.Helo("client.example.org"), 250)
		hookstest.Expect(t, s.Mail(tt.from), 250)
		hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), tt.want)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: %v; want the reply within the 300ms timeout", tt.from, d)
		}
		if got := rhsbl.NoteFailed.Get(&s.Transaction().Notes); !slices.Equal(got, []string{"dbl.example.test " + tt.from[6:]}) {
			t.Errorf("%s: note %s = %q", tt.from, rhsbl.NoteFailed, got)
		}
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{``, `zones: none is set`},
		{"check = [\"client\"]\n[[zones]]\nzone = \"a.example\"", `check: "client": want "sender" or "helo"`},
		{"check = []\n[[zones]]\nzone = \"a.example\"", `check = []`},
		{"reject_at = \"connect\"\n[[zones]]\nzone = \"a.example\"", `reject_at = "connect": want "mail", "rcpt"`},
		{"dns_failure = \"x\"\n[[zones]]\nzone = \"a.example\"", `dns_failure = "x"`},
		{"[[zones]]\nzone = \"a.example\"\naction = \"x\"", `zones[0]: action = "x"`},
	} {
		hookstest.ExpectBuildError(t, "rhsbl", tt.settings, tt.want)
	}
}

func TestReadme(t *testing.T) {
	hookstest.BuildFromReadme(t, "rhsbl", "README.md")
}
