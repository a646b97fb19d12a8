package helo_test

import (
	"slices"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/helo"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

const msg = "Subject: hi\r\n\r\nhello\r\n"

// dns answers for the forward and reverse checks.
func dns(t *testing.T) *dnstest.Server {
	srv := dnstest.Start(t,
		"mail.good.example. A 192.0.2.1",
		"other.example. A 198.51.100.9",
		"1.2.0.192.in-addr.arpa. PTR mail.good.example.",
		"4.2.0.192.in-addr.arpa. PTR other.example.",
	)
	srv.ServFail("broken.example.")
	srv.ServFail("3.2.0.192.in-addr.arpa.")
	return srv
}

func newHarness(t *testing.T, settings string) *hookstest.Harness {
	return hookstest.New(t,
		hookstest.Plugin("helo", hookstest.Build(t, "helo", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
}

// TestReplies: every reply at MAIL (the default reject_at), and the note.
func TestReplies(t *testing.T) {
	srv := dns(t)
	for _, tt := range []struct {
		settings, client, name string
		want                   string // the reply to MAIL
		problems               []string
	}{
		// The defaults.
		{``, "192.0.2.1", "mail.good.example", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "MAIL.Good.Example.", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "bücher.example", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "host_1.corp.example", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "[192.0.2.1]", "250 2.1.0 Sender OK", nil},
		{``, "2001:db8::1", "[IPv6:2001:db8::1]", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "192.0.2.1", "501 5.5.2 <192.0.2.1>: Helo command rejected: Invalid name; an address goes in brackets", []string{"bare_ip"}},
		{``, "2001:db8::1", "2001:db8::1", "501 5.5.2 <2001:db8::1>: Helo command rejected: Invalid name; an address goes in brackets", []string{"bare_ip"}},
		{``, "192.0.2.1", "-bad.example", "501 5.5.2 <-bad.example>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "a..example", "501 5.5.2 <a..example>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "192.0.2", "501 5.5.2 <192.0.2>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "[192.0.2.300]", "501 5.5.2 <[192.0.2.300]>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "host!.example", "501 5.5.2 <host!.example>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "[IPv6:::ffff:192.0.2.1]", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "[ipv6:192.0.2.1]", "501 5.5.2 <[ipv6:192.0.2.1]>: Helo command rejected: Invalid name", []string{"invalid"}},
		{``, "192.0.2.1", "MX.example.test.", "550 5.7.1 <MX.example.test.>: Helo command rejected: You are not me", []string{"ours"}},
		{``, "192.0.2.1", "mx.example.test", "550 5.7.1 <mx.example.test>: Helo command rejected: You are not me", []string{"ours"}},
		{``, "192.0.2.1", "[127.0.0.1]", "550 5.7.1 <[127.0.0.1]>: Helo command rejected: You are not me", []string{"ours", "literal"}},
		{``, "192.0.2.1", "127.0.0.1", "550 5.7.1 <127.0.0.1>: Helo command rejected: You are not me", []string{"ours", "bare_ip"}},
		{`local_names = ["mail.example.test"]`, "192.0.2.1", "Mail.Example.Test", "550 5.7.1 <Mail.Example.Test>: Helo command rejected: You are not me", []string{"ours"}},
		{`local_addresses = ["203.0.113.25"]`, "192.0.2.1", "[203.0.113.25]", "550 5.7.1 <[203.0.113.25]>: Helo command rejected: You are not me", []string{"ours", "literal"}},
		// A client on this host may use its names.
		{``, "127.0.0.1", "mx.example.test", "250 2.1.0 Sender OK", nil},
		{`ours = "defer"`, "192.0.2.1", "mx.example.test", "450 4.7.1 <mx.example.test>: Helo command rejected: You are not me", []string{"ours"}},
		{`ours = "off"`, "192.0.2.1", "mx.example.test", "250 2.1.0 Sender OK", nil},
		{``, "192.0.2.1", "[198.51.100.7]", "250 2.1.0 Sender OK", []string{"literal"}},
		{`literal = "deny"`, "192.0.2.1", "[198.51.100.7]", "550 5.7.1 <[198.51.100.7]>: Helo command rejected: Address literal is not your address", []string{"literal"}},
		{``, "192.0.2.1", "localhost", "250 2.1.0 Sender OK", []string{"not_fqdn"}},
		{`require_fqdn = "deny"`, "192.0.2.1", "localhost", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname", []string{"not_fqdn"}},
		{`require_fqdn = "defer"`, "192.0.2.1", "PC-01", "450 4.5.2 <PC-01>: Helo command rejected: need fully-qualified hostname", []string{"not_fqdn"}},
		{`invalid = "note"`, "192.0.2.1", "-bad.example", "250 2.1.0 Sender OK", []string{"invalid"}},
		{`bare_ip = "defer"`, "192.0.2.1", "192.0.2.1", "450 4.5.2 <192.0.2.1>: Helo command rejected: Invalid name; an address goes in brackets", []string{"bare_ip"}},
		// DNS.
		{`forward = "deny"`, "192.0.2.1", "mail.good.example", "250 2.1.0 Sender OK", nil},
		{`forward = "deny"`, "192.0.2.1", "other.example", "550 5.7.1 <other.example>: Helo command rejected: Host name does not resolve to your address", []string{"forward_mismatch"}},
		{`forward = "deny"`, "192.0.2.1", "nx.example", "550 5.7.1 <nx.example>: Helo command rejected: Host not found", []string{"forward_not_found"}},
		{`forward = "deny"`, "192.0.2.1", "broken.example", "450 4.7.1 <broken.example>: Helo command rejected: Host not found", []string{"forward_tempfail"}},
		{`forward = "defer"`, "192.0.2.1", "nx.example", "450 4.7.1 <nx.example>: Helo command rejected: Host not found", []string{"forward_not_found"}},
		{`forward = "note"`, "192.0.2.1", "broken.example", "250 2.1.0 Sender OK", []string{"forward_tempfail"}},
		{`reverse = "deny"`, "192.0.2.1", "mail.good.example", "250 2.1.0 Sender OK", nil},
		{`reverse = "deny"`, "192.0.2.4", "mail.good.example", "550 5.7.1 <mail.good.example>: Helo command rejected: Host name is not your reverse DNS name", []string{"reverse_mismatch"}},
		{`reverse = "deny"`, "192.0.2.2", "mail.good.example", "550 5.7.1 <mail.good.example>: Helo command rejected: Host name is not your reverse DNS name", []string{"reverse_mismatch"}},
		{`reverse = "deny"`, "192.0.2.3", "mail.good.example", "450 4.7.1 <mail.good.example>: Helo command rejected: Reverse DNS lookup failed", []string{"reverse_tempfail"}},
		{"forward = \"note\"\nreverse = \"deny\"", "192.0.2.4", "other.example", "250 2.1.0 Sender OK", []string{"forward_mismatch"}},
		// A name without a dot is never looked up.
		{"forward = \"deny\"\nreverse = \"deny\"", "192.0.2.1", "localhost", "250 2.1.0 Sender OK", []string{"not_fqdn"}},
	} {
		h := newHarness(t, tt.settings+"\n"+srv.TOML())
		s := h.Connect(tt.client)
		hookstest.Expect(t, s.Helo(tt.name), 250) // reject_at = "mail": EHLO passes
		if got := s.Mail("alice@example.org").String(); got != tt.want {
			t.Errorf("%s, %s from %s: MAIL got %q; want %q", tt.settings, tt.name, tt.client, got, tt.want)
		}
		if got := helo.NoteProblems.Get(&s.Conn().Notes); !slices.Equal(got, tt.problems) {
			t.Errorf("%s, %s from %s: note %s = %q; want %q", tt.settings, tt.name, tt.client, helo.NoteProblems, got, tt.problems)
		}
	}
}

// TestRejectAtHelo: the refusal answers the EHLO itself, and the client
// must greet again before MAIL; a good name then passes.
func TestRejectAtHelo(t *testing.T) {
	h := newHarness(t, `reject_at = "helo"`)
	s := h.Connect("192.0.2.1")
	hookstest.ExpectReply(t, s.Helo("192.0.2.1"), "501 5.5.2 <192.0.2.1>: Helo command rejected: Invalid name; an address goes in brackets")
	hookstest.ExpectReply(t, s.Cmd("HELO mx.example.test"), "550 5.7.1 <mx.example.test>: Helo command rejected: You are not me")
	hookstest.Expect(t, s.Mail("alice@example.org"), 503, "Send EHLO")
	hookstest.Expect(t, s.Helo("[192.0.2.1]"), 250)
	if _, ok := helo.NoteProblems.Lookup(&s.Conn().Notes); ok {
		t.Errorf("note %s left from an earlier EHLO", helo.NoteProblems)
	}
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)
	if n := len(h.Queued()); n != 1 {
		t.Errorf("%d messages queued; want 1", n)
	}
}

// TestRejectAtRcpt: each recipient is refused but postmaster's.
func TestRejectAtRcpt(t *testing.T) {
	h := newHarness(t, `reject_at = "rcpt"`)
	s := h.Connect("192.0.2.1")
	tr := s.SendAll("alice@example.org", []string{"bob@example.test", "Postmaster@example.test", "carol@example.test"}, msg)
	hookstest.Expect(t, tr.Mail, 250)
	hookstest.Expect(t, tr.Data, 250)
	hookstest.Expect(t, s.Helo("mx.example.test"), 250)
	tr = s.SendAll("alice@example.org", []string{"bob@example.test", "Postmaster@example.test", "carol@example.test"}, msg)
	hookstest.Expect(t, tr.Mail, 250)
	want := "550 5.7.1 <mx.example.test>: Helo command rejected: You are not me"
	hookstest.ExpectReply(t, tr.Rcpt[0], want)
	hookstest.Expect(t, tr.Rcpt[1], 250)
	hookstest.ExpectReply(t, tr.Rcpt[2], want)
	hookstest.Expect(t, tr.Data, 250)
	q := h.Queued()
	if len(q) != 2 || !slices.Equal(q[1].Recipients, []string{"Postmaster@example.test"}) {
		t.Errorf("queued %+v; want the second message to postmaster only", q)
	}
}

// TestSpared: relay clients, authenticated and whitelisted ones are not
// judged.
func TestSpared(t *testing.T) {
	h := newHarness(t, `reject_at = "mail"`)
	for _, spare := range []func(c *connection.Connection){
		func(c *connection.Connection) { c.Relay = true },
		func(c *connection.Connection) { c.AuthUser = "alice" },
		func(c *connection.Connection) { connection.NoteWhitelisted.Set(&c.Notes, "client 192.0.2.1") },
	} {
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Helo("mx.example.test"), 250)
		spare(s.Conn())
		hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)
	}
	if n := len(h.Queued()); n != 3 {
		t.Errorf("%d messages queued; want 3", n)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`reject_at = "data"`, `reject_at = "data": want "helo", "mail" or "rcpt"`},
		{`invalid = "reject"`, `invalid = "reject": want "off", "note", "defer" or "deny"`},
		{`bare_ip = "yes"`, `bare_ip = "yes": want "off"`},
		{`forward = true`, `forward`},
		{`local_names = ["[192.0.2.1]"]`, `local_names: "[192.0.2.1]" is not a domain name`},
		{`local_addresses = ["mx.example"]`, `local_addresses: "mx.example" is not an IP address`},
		{"forward = \"deny\"\n[dns]\nservers = [\"not an address\"]", `not an address`},
		{`fqdn = "deny"`, `unknown key "fqdn"`},
	} {
		hookstest.ExpectBuildError(t, "helo", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "helo", "README.md")
}
