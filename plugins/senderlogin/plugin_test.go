package senderlogin_test

import (
	"context"
	"regexp"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/senderlogin"
)

const msg = "Subject: hi\r\n\r\nhello\r\n"

// newHarness is a submission chain: senderlogin, then rcptok, which lets
// authenticated (relay) clients send anywhere.
func newHarness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("senderlogin", hookstest.Build(t, "senderlogin", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `relay_clients_ok = true`)),
		hookstest.Queue())
}

// login marks the session as authenticated as user. hookstest has no AUTH
// command: the server's Session.Auth sets c.AuthUser (and c.Relay) once an
// auth plugin answers OK, so a test sets the same fields directly before
// MAIL. TestThroughAuthHook shows that a real AUTH gives the same result.
func login(s *hookstest.Session, user string) {
	c := s.Conn()
	c.AuthUser, c.Relay = user, true
}

// mail opens a session as user ("" for none) and returns the reply to
// MAIL FROM:<from>, and the connection's mismatch note.
func mail(t *testing.T, h *hookstest.Harness, user, from string) (string, string) {
	t.Helper()
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	if user != "" {
		login(s, user)
	}
	rep := s.Mail(from).String()
	return rep, senderlogin.NoteMismatch.Get(&s.Conn().Notes)
}

const ok = "250 2.1.0 Sender OK"

func refused(from, user string) string {
	return "553 5.7.1 <" + from + ">: Sender address rejected: not owned by user " + user
}

type check struct{ user, from, want string }

func run(t *testing.T, settings string, checks []check) {
	t.Helper()
	h := newHarness(t, settings)
	for _, c := range checks {
		got, note := mail(t, h, c.user, c.from)
		if got != c.want {
			t.Errorf("%s: login %q, MAIL FROM:<%s>: %q; want %q", settings, c.user, c.from, got, c.want)
		}
		switch {
		case got == ok && note != "":
			t.Errorf("%s: login %q, MAIL FROM:<%s>: note %s = %q on an accepted sender", settings, c.user, c.from, senderlogin.NoteMismatch, note)
		case got != ok && note != c.from:
			t.Errorf("%s: login %q, MAIL FROM:<%s>: note %s = %q; want the refused sender", settings, c.user, c.from, senderlogin.NoteMismatch, note)
		}
	}
}

const allowTable = `
[allow]
"alice@example.test" = ["sales@example.test", "*@lists.example.test"]
"webapp" = ["*"]
`

func TestFull(t *testing.T) {
	run(t, "domain = \"example.test\"\n"+allowTable, []check{
		// The login's own address; the domain in any case.
		{"alice@example.test", "alice@example.test", ok},
		{"alice@example.test", "alice@EXAMPLE.Test", ok},
		{"alice@Example.TEST", "alice@example.test", ok},
		// The local part is compared exactly.
		{"alice@example.test", "Alice@example.test", refused("Alice@example.test", "alice@example.test")},
		{"alice@example.test", "alice+news@example.test", refused("alice+news@example.test", "alice@example.test")},
		// Someone else's address, the same name elsewhere.
		{"alice@example.test", "bob@example.test", refused("bob@example.test", "alice@example.test")},
		{"alice@example.test", "alice@example.org", refused("alice@example.org", "alice@example.test")},
		{"alice@example.test", "alice@mail.example.test", refused("alice@mail.example.test", "alice@example.test")},
		// A login without @ is completed with domain.
		{"alice", "alice@example.test", ok},
		{"alice", "alice@example.org", refused("alice@example.org", "alice")},
		// allow: an extra address, a whole domain, any address.
		{"alice@example.test", "sales@example.test", ok},
		{"alice", "sales@example.test", ok},
		{"alice@example.test", "Sales@example.test", refused("Sales@example.test", "alice@example.test")},
		{"alice@example.test", "announce@lists.example.test", ok},
		{"alice@example.test", "announce@LISTS.example.test", ok},
		{"alice@example.test", "announce@x.lists.example.test", refused("announce@x.lists.example.test", "alice@example.test")},
		{"bob@example.test", "sales@example.test", refused("sales@example.test", "bob@example.test")},
		{"webapp", "ceo@example.org", ok},
		{"webapp@example.test", "noreply@example.net", ok},
		// The null sender is always allowed; unauthenticated clients are
		// not this plugin's business.
		{"alice@example.test", "", ok},
		{"", "ceo@example.test", ok},
	})
}

// TestDefaultMode: full is the default, and a login without @ owns
// nothing unless domain is set or allow gives it addresses.
func TestDefaultMode(t *testing.T) {
	run(t, ``, []check{
		{"alice@example.test", "alice@example.test", ok},
		{"alice@example.test", "bob@example.test", refused("bob@example.test", "alice@example.test")},
		{"alice", "alice@example.test", refused("alice@example.test", "alice")},
		{"alice", "", ok},
	})
	// "alice@" is not the login "alice": it gets none of alice's entries.
	run(t, "[allow]\nalice = [\"alice@example.test\"]", []check{
		{"alice@", "alice@example.test", refused("alice@example.test", "alice@")},
	})
	run(t, "[allow]\nalice = [\"alice@example.test\"]", []check{
		{"alice", "alice@example.test", ok},
		{"alice", "alice@example.org", refused("alice@example.org", "alice")},
	})
}

func TestSameDomain(t *testing.T) {
	run(t, "mode = \"same-domain\"\ndomain = \"example.test\"\n"+allowTable, []check{
		{"alice@example.test", "alice@example.test", ok},
		{"alice@example.test", "bob@example.test", ok},
		{"alice@example.test", "Bob@EXAMPLE.test", ok},
		{"alice", "bob@example.test", ok},
		{"alice@example.test", "bob@example.org", refused("bob@example.org", "alice@example.test")},
		{"alice@example.test", "bob@mail.example.test", refused("bob@mail.example.test", "alice@example.test")},
		{"alice@example.test", "news@lists.example.test", ok},
		{"carol@example.org", "alice@example.test", refused("alice@example.test", "carol@example.org")},
		{"alice@example.test", "", ok},
	})
}

// TestUnicodeDomains: domains compare as A-labels with ASCII-only case
// folding. The Kelvin sign (U+212A) and U+0130 are not 'k' and 'i': a
// sender at "\u212Aernel.test" is not at kernel.test. An IDN matches in
// either form.
func TestUnicodeDomains(t *testing.T) {
	const kelvin = "alice@\u212Aernel.test"
	run(t, "[allow]\n\"carol@kernel.test\" = [\"*@bücher.example\"]", []check{
		{"alice@kernel.test", kelvin, refused(kelvin, "alice@kernel.test")},
		{"alice@kernel.test", "alice@xn--ernel-r74b.test", refused("alice@xn--ernel-r74b.test", "alice@kernel.test")},
		{"alice@info.test", "alice@\u0130nfo.test", refused("alice@\u0130nfo.test", "alice@info.test")},
		// A login whose domain IDNA refuses owns nothing, not even itself.
		{kelvin, "alice@kernel.test", refused("alice@kernel.test", kelvin)},
		{kelvin, kelvin, refused(kelvin, kelvin)},
		// U-label and A-label are one domain.
		{"alice@bücher.example", "alice@xn--bcher-kva.example", ok},
		{"alice@XN--BCHER-KVA.example", "alice@Bücher.example", ok},
		{"alice@bücher.example", "alice@BÜCHER.example", refused("alice@BÜCHER.example", "alice@bücher.example")},
		{"carol@kernel.test", "news@xn--bcher-kva.example", ok},
		{"carol@kernel.test", "news@\u212Aernel.test", refused("news@\u212Aernel.test", "carol@kernel.test")},
	})
	run(t, "mode = \"same-domain\"\ndomain = \"Bücher.example\"", []check{
		{"alice", "bob@xn--bcher-kva.example", ok},
		{"alice@kernel.test", "bob@\u212Aernel.test", refused("bob@\u212Aernel.test", "alice@kernel.test")},
		{"alice@\u0130nfo.test", "bob@\u0130nfo.test", refused("bob@\u0130nfo.test", "alice@\u0130nfo.test")},
	})
}

func TestDisabled(t *testing.T) {
	run(t, "mode = \"disabled\"", []check{
		{"alice@example.test", "bob@example.org", ok},
		{"alice", "ceo@example.test", ok},
	})
}

// TestSend runs whole transactions: the owned sender is queued, the other
// is refused at MAIL and nothing is queued for it; the same connection may
// then go on with its own address.
func TestSend(t *testing.T) {
	h := newHarness(t, ``)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	login(s, "alice@example.test")
	if got, want := s.Send("bob@example.test", []string{"friend@example.org"}, msg).String(), refused("bob@example.test", "alice@example.test"); got != want {
		t.Fatalf("forged sender: %q; want %q", got, want)
	}
	if got := s.Send("alice@example.test", []string{"friend@example.org"}, msg).String(); !regexp.MustCompile(`^250 2\.0\.0 Ok: queued as \w+$`).MatchString(got) {
		t.Fatalf("own sender: %q; want 250 queued", got)
	}
	q := h.Queued()
	if len(q) != 1 || q[0].Sender != "alice@example.test" {
		t.Fatalf("queued %+v", q)
	}
	// The note stays on the connection for later plugins and logs.
	if got := senderlogin.NoteMismatch.Get(&s.Conn().Notes); got != "bob@example.test" {
		t.Errorf("note %s = %q", senderlogin.NoteMismatch, got)
	}
}

// acceptAll is an auth plugin that knows one password.
type acceptAll struct{}

func (acceptAll) Auth(_ context.Context, _ *connection.Connection, _, _, password string) hooks.Result {
	if password == "s3cret" {
		return hooks.Accept("")
	}
	return hooks.Reject("")
}

// TestThroughAuthHook authenticates with the auth hook, as a real client
// does, instead of setting c.AuthUser.
func TestThroughAuthHook(t *testing.T) {
	h := hookstest.New(t,
		hookstest.Plugin("auth", acceptAll{}),
		hookstest.Plugin("senderlogin", hookstest.Build(t, "senderlogin", ``)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", ``)),
		hookstest.Queue())
	h.StartTLS = true // AUTH only over TLS, as on the wire
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	hookstest.Expect(t, s.AuthPlain("alice@example.test", "s3cret"), 538, "5.7.11") // not before STARTTLS
	hookstest.Expect(t, s.StartTLS(), 220)
	hookstest.Expect(t, s.Helo("laptop.example"), 250, "AUTH PLAIN LOGIN")
	hookstest.Expect(t, s.AuthPlain("alice@example.test", "s3cret"), 235)
	if got, want := s.Mail("bob@example.test").String(), refused("bob@example.test", "alice@example.test"); got != want {
		t.Errorf("forged sender: %q; want %q", got, want)
	}
	hookstest.Expect(t, s.Send("alice@example.test", []string{"friend@example.org"}, msg), 250)

	// Before AUTH, the same forged sender is not senderlogin's business.
	s = h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	hookstest.Expect(t, s.Mail("bob@example.test"), 250, "Sender OK")
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`mode = "strict"`, `mode = "strict": want "full", "same-domain" or "disabled"`},
		{`mode = "Full"`, `mode = "Full": want "full", "same-domain" or "disabled"`},
		{`mode = "same_domain"`, `mode = "same_domain": want "full", "same-domain" or "disabled"`},
		{`domain = "@example.test"`, `domain = "@example.test": want a bare domain such as "example.test"`},
		{`domain = "alice@example.test"`, `domain = "alice@example.test": want a bare domain`},
		{`domain = " "`, `domain = " ": want a bare domain`},
		{`domain = ".example.test"`, `domain = ".example.test": want a bare domain`},
		{"domain = \"\u212Aernel.test\"", `want a bare domain`},
		{"[allow]\n\"alice@\u212Aernel.test\" = [\"*\"]", `: "\u212aernel.test" is not a valid domain`},
		{"[allow]\n\"alice@example.test\" = [\"sales@\u0130nfo.test\"]", "allow.\"alice@example.test\": \"sales@\u0130nfo.test\" is not an address"},
		{"[allow]\n\"alice@example.test\" = [\"sales\"]", `allow."alice@example.test": "sales" is not an address: want "sales@example.test", "*@example.test" (every address of the domain) or "*" (any address)`},
		{"[allow]\n\"alice@example.test\" = [\"@example.test\"]", `allow."alice@example.test": "@example.test" is not an address`},
		{"[allow]\n\"alice@example.test\" = [\"sales@\"]", `allow."alice@example.test": "sales@" is not an address`},
		{"[allow]\n\"alice@example.test\" = [\"alice@*\"]", `allow."alice@example.test": "alice@*" is not an address`},
		{"[allow]\n\"alice@example.test\" = [\"<sales@example.test>\"]", `allow."alice@example.test": "<sales@example.test>" is not an address`},
		{"[allow]\n\"\" = [\"sales@example.test\"]", `allow: an empty login`},
		{"[allow]\n\"alice@example.test\" = \"sales@example.test\"", `allow."alice@example.test": want a list of addresses such as ["sales@example.test"]`},
		{"[allow]\n\"alice@example.test\" = [1]", `allow."alice@example.test": want a list of addresses`},
		{`allow = ["sales@example.test"]`, `settings:1: allow: want a table of login = ["address", ...]: [plugins.senderlogin.allow] "alice@example.test" = ["sales@example.test"]`},
		{`allow = "sales@example.test"`, `allow: want a table of login = ["address", ...]`},
		{`mode = 1`, `mode: expected a string, got an integer`},
		{`allowed = {}`, `unknown key "allowed"`},
	} {
		hookstest.ExpectBuildError(t, "senderlogin", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md
// through the config loader (which refuses keys the plugin did not
// decode) and checks that its allow table is in force.
func TestReadmeExample(t *testing.T) {
	p := hookstest.BuildFromReadme(t, "senderlogin", "README.md")
	h := hookstest.New(t, hookstest.Plugin("senderlogin", p), hookstest.Queue())
	for _, tt := range []check{
		{"alice@example.test", "alice@example.test", ok},
		{"alice", "alice@example.test", ok},
		{"alice@example.test", "sales@example.test", ok},
		{"alice@example.test", "bob@example.test", refused("bob@example.test", "alice@example.test")},
		{"bob@example.test", "news@lists.example.test", ok},
		{"bob@example.test", "sales@example.test", refused("sales@example.test", "bob@example.test")},
	} {
		if got, _ := mail(t, h, tt.user, tt.from); got != tt.want {
			t.Errorf("README example: login %q, MAIL FROM:<%s>: %q; want %q", tt.user, tt.from, got, tt.want)
		}
	}
}
