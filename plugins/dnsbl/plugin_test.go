package dnsbl_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/dnsbl"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// zen is a zone shaped like zen.spamhaus.org's codes.
const zen = `
[[zones]]
zone = "zen.example.test"
codes = { "127.0.0.2" = "SBL", "127.0.0.3" = "CSS", "127.0.0.4-127.0.0.7" = "XBL", "127.0.0.10-127.0.0.11" = "PBL" }
`

func newHarness(t *testing.T, settings string, before ...hooks.Instance) *hookstest.Harness {
	t.Helper()
	list := append(before,
		hookstest.Plugin("dnsbl", hookstest.Build(t, "dnsbl", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	return hookstest.New(t, list...)
}

// dnsTable is the [dns] table of srv with a short timeout.
func dnsTable(srv *dnstest.Server, timeout string) string {
	return fmt.Sprintf("[dns]\nservers = [%q]\ntimeout = %q\n", srv.Addr, timeout)
}

// upToRcpt runs EHLO and MAIL, both accepted, and returns the reply to
// RCPT TO:<rcpt>.
func upToRcpt(t *testing.T, s *hookstest.Session, rcpt string) hooks.Reply {
	t.Helper()
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	return s.Rcpt(rcpt)
}

func TestListedIPv4RefusedAtRcpt(t *testing.T) {
	srv := dnstest.Start(t, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.4`)
	h := newHarness(t, zen+dnsTable(srv, "1s"))
	s := h.Connect("192.0.2.1")
	hookstest.ExpectReply(t, upToRcpt(t, s, "bob@example.test"),
		"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.example.test; listed as XBL")
	// Every recipient but postmaster and abuse.
	hookstest.ExpectReply(t, s.Rcpt("carol@example.test"),
		"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.example.test; listed as XBL")
	hookstest.Expect(t, s.Rcpt("postmaster@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("Abuse@example.test"), 250)

	got := dnsbl.NoteListings.Get(&s.Conn().Notes)
	want := []dnsbl.Listing{{Zone: "zen.example.test", Name: "192.0.2.1", Codes: []netip.Addr{netip.MustParseAddr("127.0.0.4")}, Meanings: []string{"XBL"}, Action: dnsbl.Deny}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("note %s = %+v; want %+v", dnsbl.NoteListings, got, want)
	}
	// The message to postmaster goes through.
	hookstest.Expect(t, s.Data("Subject: x\r\n\r\nbody\r\n"), 250)
	if q := h.Queued(); len(q) != 1 || !slices.Equal(q[0].Recipients, []string{"postmaster@example.test", "Abuse@example.test"}) {
		t.Errorf("queued %+v; want one message to postmaster and abuse", q)
	}
}

func TestListedIPv6(t *testing.T) {
	// 2001:db8::25, nibble by nibble in reverse.
	name := "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example.test."
	srv := dnstest.Start(t, name+` 300 IN A 127.0.0.2`)
	h := newHarness(t, zen+dnsTable(srv, "1s"))
	s := h.Connect("[2001:db8::25]:40000")
	hookstest.ExpectReply(t, upToRcpt(t, s, "bob@example.test"),
		"554 5.7.1 Service unavailable; Client host [2001:db8::25] blocked using zen.example.test; listed as SBL")
	if q := srv.Queries(); len(q) != 1 || q[0] != "A "+name {
		t.Errorf("queries = %q; want A %s", q, name)
	}
}

func TestCodesFilter(t *testing.T) {
	srv := dnstest.Start(t,
		`1.2.0.192.zen.example.test. 300 IN A 127.0.0.9`,       // not in the filter
		`2.2.0.192.zen.example.test. 300 IN A 127.255.255.254`, // the list refused the query
		`3.2.0.192.zen.example.test. 300 IN A 127.0.0.10`,
		`3.2.0.192.zen.example.test. 300 IN A 127.0.0.3`,
		`3.2.0.192.zen.example.test. 300 IN A 127.0.0.8`,
	)
	h := newHarness(t, zen+dnsTable(srv, "1s"))
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		s := h.Connect(ip)
		hookstest.Expect(t, upToRcpt(t, s, "bob@example.test"), 250)
		if got, ok := dnsbl.NoteListings.Lookup(&s.Conn().Notes); ok {
			t.Errorf("%s: note %s = %+v; want none", ip, dnsbl.NoteListings, got)
		}
	}
	// Two codes that count, one that does not.
	s := h.Connect("192.0.2.3")
	hookstest.ExpectReply(t, upToRcpt(t, s, "bob@example.test"),
		"554 5.7.1 Service unavailable; Client host [192.0.2.3] blocked using zen.example.test; listed as PBL, CSS")
	got := dnsbl.NoteListings.Get(&s.Conn().Notes)
	if len(got) != 1 || fmt.Sprint(got[0].Codes) != "[127.0.0.10 127.0.0.3]" {
		t.Errorf("note %s = %+v; want codes 127.0.0.10 and 127.0.0.3", dnsbl.NoteListings, got)
	}

	// With no filter, any 127.0.0.0/8 answer but the error codes counts.
	h = newHarness(t, "[[zones]]\nzone = \"any.example.test\"\n"+dnsTable(srv, "1s"))
	srv.Add(`1.2.0.192.any.example.test. 300 IN A 127.0.0.9`, `2.2.0.192.any.example.test. 300 IN A 127.255.255.254`)
	hookstest.ExpectReply(t, upToRcpt(t, h.Connect("192.0.2.1"), "bob@example.test"),
		"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using any.example.test; listed as 127.0.0.9")
	s = h.Connect("192.0.2.2")
	hookstest.Expect(t, upToRcpt(t, s, "bob@example.test"), 250)
	if got := dnsbl.NoteFailed.Get(&s.Conn().Notes); !slices.Equal(got, []string{"any.example.test"}) {
		t.Errorf("127.255.255.254: note %s = %q; want the zone: the list refused the query", dnsbl.NoteFailed, got)
	}
}

func TestTXTReasonAndMessage(t *testing.T) {
	srv := dnstest.Start(t,
		`1.2.0.192.bl.example.test. 300 IN A 127.0.0.2`,
		"1.2.0.192.bl.example.test. 300 IN TXT \"Listed: see https://bl.example.test/query/192.0.2.1\r\n\"",
		`1.2.0.192.bl2.example.test. 300 IN A 127.0.0.2`,
	)
	// bl2 defers, with its own message.
	const bl2 = `
[[zones]]
zone = "bl2.example.test"
txt = true
action = "defer"
message = "{class} {what} is in {zone} ({code}, {meaning}): {reason}"
codes = { "127.0.0.2" = "spam source" }
`
	h := newHarness(t, `
[[zones]]
zone = "bl.example.test"
txt = true
`+bl2+dnsTable(srv, "1s"))
	s := h.Connect("192.0.2.1")
	// The first zone listing it with the strongest action words the reply;
	// the TXT record's control characters are dropped.
	hookstest.ExpectReply(t, upToRcpt(t, s, "bob@example.test"),
		"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.example.test; Listed: see https://bl.example.test/query/192.0.2.1")
	got := dnsbl.NoteListings.Get(&s.Conn().Notes)
	if len(got) != 2 || got[0].Reason != "Listed: see https://bl.example.test/query/192.0.2.1" || got[1].Action != dnsbl.Defer || got[1].Reason != "" {
		t.Errorf("note %s = %+v", dnsbl.NoteListings, got)
	}

	// The defer zone alone, with its own message; no TXT record: the
	// meaning stands in.
	h = newHarness(t, bl2+dnsTable(srv, "1s"))
	hookstest.ExpectReply(t, upToRcpt(t, h.Connect("192.0.2.1"), "bob@example.test"),
		"451 4.7.1 Client host 192.0.2.1 is in bl2.example.test (127.0.0.2, spam source): listed as spam source")
}

func TestNoteOnlyAndMiss(t *testing.T) {
	srv := dnstest.Start(t, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.2`)
	h := newHarness(t, zen+"action = \"note\"\n"+dnsTable(srv, "1s"))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)
	if got := dnsbl.NoteListings.Get(&s.Conn().Notes); len(got) != 1 || got[0].Action != dnsbl.Note {
		t.Errorf("note only: note %s = %+v", dnsbl.NoteListings, got)
	}
	// A client not listed.
	s = h.Connect("192.0.2.99")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, "Subject: x\r\n\r\nbody\r\n"), 250)
	if _, ok := dnsbl.NoteListings.Lookup(&s.Conn().Notes); ok {
		t.Errorf("miss: note %s is set", dnsbl.NoteListings)
	}
	if q := srv.Queries(); len(q) != 2 || q[1] != "A 99.2.0.192.zen.example.test." {
		t.Errorf("queries = %q", q)
	}
}

func TestDNSFailure(t *testing.T) {
	srv := dnstest.Start(t)
	srv.ServFail("1.2.0.192.zen.example.test.")
	srv.Hang("2.2.0.192.zen.example.test.")
	for _, tt := range []struct {
		settings, ip, want string
	}{
		{``, "192.0.2.1", "250 2.1.5 Recipient OK"},
		{``, "192.0.2.2", "250 2.1.5 Recipient OK"},
		{`dns_failure = "defer"`, "192.0.2.1", "451 4.4.3 Service temporarily unavailable; cannot check client host [192.0.2.1] against zen.example.test; try again later"},
		{`dns_failure = "defer"`, "192.0.2.2", "451 4.4.3 Service temporarily unavailable; cannot check client host [192.0.2.2] against zen.example.test; try again later"},
	} {
		h := newHarness(t, tt.settings+zen+dnsTable(srv, "300ms"))
		start := time.Now()
		s := h.Connect(tt.ip)
		hookstest.ExpectReply(t, upToRcpt(t, s, "bob@example.test"), tt.want)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s %s: the reply took %v; want it within the 300ms lookup timeout", tt.settings, tt.ip, d)
		}
		if got := dnsbl.NoteFailed.Get(&s.Conn().Notes); !slices.Equal(got, []string{"zen.example.test"}) {
			t.Errorf("%s %s: note %s = %q", tt.settings, tt.ip, dnsbl.NoteFailed, got)
		}
	}
}

func TestCache(t *testing.T) {
	srv := dnstest.Start(t,
		`1.2.0.192.bl.example.test. 300 IN A 127.0.0.2`,
		dnstest.TXT("1.2.0.192.bl.example.test.", "go away"),
	)
	h := newHarness(t, "[[zones]]\nzone = \"bl.example.test\"\ntxt = true\n"+dnsTable(srv, "1s"))
	for range 2 {
		hookstest.ExpectReply(t, upToRcpt(t, h.Connect("192.0.2.1"), "bob@example.test"),
			"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.example.test; go away")
		hookstest.Expect(t, upToRcpt(t, h.Connect("192.0.2.9"), "bob@example.test"), 250)
	}
	want := []string{"A 1.2.0.192.bl.example.test.", "TXT 1.2.0.192.bl.example.test.", "A 9.2.0.192.bl.example.test."}
	if q := srv.Queries(); !slices.Equal(q, want) {
		t.Errorf("queries = %q; want %q: the second connections are answered from the cache", q, want)
	}

	// A zero TTL is not cached; nor is anything with cache_ttl = "0s".
	srv.Add(`3.2.0.192.bl.example.test. 0 IN A 127.0.0.2`)
	h = newHarness(t, "cache_ttl = \"0s\"\n[[zones]]\nzone = \"bl.example.test\"\n"+dnsTable(srv, "1s"))
	for range 2 {
		hookstest.Expect(t, upToRcpt(t, h.Connect("192.0.2.1"), "bob@example.test"), 554)
	}
	if q := srv.Queries(); len(q) != len(want)+2 {
		t.Errorf("cache_ttl = \"0s\": %d queries; want 2 more", len(q)-len(want))
	}
}

// whitelister marks every client (or sender) whitelisted, as bwl does.
type whitelister struct{ relay bool }

func (w whitelister) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	if w.relay {
		c.Relay = true
	} else {
		connection.NoteWhitelisted.Set(&c.Notes, "client 192.0.2.0/24")
	}
	return hooks.Result{}
}

func TestSkipped(t *testing.T) {
	srv := dnstest.Start(t, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.2`)
	for _, w := range []whitelister{{}, {relay: true}} {
		h := newHarness(t, zen+dnsTable(srv, "1s"), hookstest.Plugin("bwl", w))
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, upToRcpt(t, s, "bob@example.test"), 250)
		if _, ok := dnsbl.NoteListings.Lookup(&s.Conn().Notes); ok {
			t.Errorf("%+v: note set", w)
		}
	}
	if q := srv.Queries(); len(q) != 0 {
		t.Errorf("queries = %q; want none for skipped clients", q)
	}
}

// TestStartedAtConnect: the query reaches the DNS server before the
// client has said anything past the greeting.
func TestStartedAtConnect(t *testing.T) {
	srv := dnstest.Start(t, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.2`)
	h := newHarness(t, zen+dnsTable(srv, "1s"))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Greeting(), 220)
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Queries()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no query reached the DNS server within 5s of the connection")
		}
		time.Sleep(time.Millisecond)
	}
	hookstest.Expect(t, upToRcpt(t, s, "bob@example.test"), 554)
}

func TestRejectAt(t *testing.T) {
	srv := dnstest.Start(t, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.2`)
	const text = "Service unavailable; Client host [192.0.2.1] blocked using zen.example.test; listed as SBL"
	h := newHarness(t, "reject_at = \"connect\"\n"+zen+dnsTable(srv, "1s"))
	hookstest.ExpectReply(t, h.Connect("192.0.2.1").Greeting(), "554 5.7.1 "+text)

	h = newHarness(t, "reject_at = \"helo\"\n"+zen+dnsTable(srv, "1s"))
	hookstest.ExpectReply(t, h.Connect("192.0.2.1").Helo("client.example.org"), "554 5.7.1 "+text)

	h = newHarness(t, "reject_at = \"mail\"\n"+zen+dnsTable(srv, "1s"))
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.ExpectReply(t, s.Mail("alice@example.org"), "554 5.7.1 "+text)

	h = newHarness(t, "whitelist_recipients = [\"@example.test\"]\n"+zen+dnsTable(srv, "1s"))
	hookstest.Expect(t, upToRcpt(t, h.Connect("192.0.2.1"), "bob@example.test"), 250)
	h = newHarness(t, "whitelist_recipients = []\n"+zen+dnsTable(srv, "1s"))
	hookstest.Expect(t, upToRcpt(t, h.Connect("192.0.2.1"), "postmaster@example.test"), 554)
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{``, `zones: none is set`},
		{"[[zones]]\nzone = \"\"", `zones[0]: zone = "": want a DNS zone`},
		{"[[zones]]\nzone = \"localhost\"", `zone = "localhost": want a DNS zone`},
		{"[[zones]]\nzone = \"a.example\"\n[[zones]]\nzone = \"A.example.\"", `zones[1]: zone "A.example." is listed twice`},
		{"[[zones]]\nzone = \"a.example\"\naction = \"reject\"", `action = "reject": want "deny", "defer" or "note"`},
		{"[[zones]]\nzone = \"a.example\"\ncodes = { \"127.0.0.300\" = \"x\" }", `codes: "127.0.0.300": want an IPv4 answer`},
		{"[[zones]]\nzone = \"a.example\"\ncodes = { \"127.0.0.7-127.0.0.4\" = \"x\" }", `codes: "127.0.0.7-127.0.0.4"`},
		{"[[zones]]\nzone = \"a.example\"\nmessage = \"a\\r\\nb\"", `a reply text is one line`},
		{"reject_at = \"data\"\n[[zones]]\nzone = \"a.example\"", `reject_at = "data": want "connect", "helo", "mail", "rcpt"`},
		{"dns_failure = \"reject\"\n[[zones]]\nzone = \"a.example\"", `dns_failure = "reject": want "accept" or "defer"`},
		{"whitelist_recipients = [\"\"]\n[[zones]]\nzone = \"a.example\"", `whitelist_recipients: "": want a local part`},
		{"cache_ttl = \"-1s\"\n[[zones]]\nzone = \"a.example\"", `cache_ttl = -1s`},
		{"[[zones]]\nzone = \"a.example\"\n[dns]\nservers = [\"ns.example\"]", `"ns.example" is not an IP address`},
		{"zone = \"a.example\"", `unknown key "zone"`},
	} {
		hookstest.ExpectBuildError(t, "dnsbl", tt.settings, tt.want)
	}
}

func TestReadme(t *testing.T) {
	for _, ex := range hookstest.ReadmeExamples(t, "README.md") {
		if !strings.Contains(ex, "[plugins.dnsbl]") {
			t.Errorf("README example without [plugins.dnsbl]")
		}
	}
	hookstest.BuildFromReadme(t, "dnsbl", "README.md")
}
