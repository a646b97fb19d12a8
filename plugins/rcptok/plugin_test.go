package rcptok_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/rcptok"
)

const (
	accepted = "250 2.1.5 Recipient OK"
	denied   = "550 5.7.1 relaying denied"
)

// want fails the test unless rep is exactly want on the wire.
func want(t *testing.T, what string, rep hooks.Reply, want string) {
	t.Helper()
	if got := rep.String(); got != want {
		t.Errorf("%s: reply %q; want %q", what, got, want)
	}
}

// What the server's address parser answers before any plugin runs.
const (
	badSyntax = "553 5.1.3 Bad address syntax"
	routing   = "553 5.7.1 Source routing with % or ! is not accepted"
)

func TestRcpt(t *testing.T) {
	const settings = `domains = ["example.test", "Upper.Example.", ".sub.example.test", "[192.0.2.1]", "[IPv6:2001:DB8::1]"]`
	tests := []struct {
		rcpt  string
		relay bool // the client may relay (relay plugin or AUTH)
		want  string
	}{
		{"bob@example.test", false, accepted},
		{"Bob@EXAMPLE.TEST", false, accepted},
		{"bob@example.test.", false, badSyntax}, // the parser refuses a trailing dot before any plugin
		{"bob@upper.example", false, accepted},
		{"bob@elsewhere.test", false, denied},
		{"bob@example.test.elsewhere.test", false, denied},
		{"bob@notexample.test", false, denied},
		// RFC 5321 4.5.1: <Postmaster> without a domain is always accepted.
		{"postmaster", false, accepted},
		{"PostMaster", false, accepted},
		{"postmaster@elsewhere.test", false, denied},
		{"postmaster@example.test", false, accepted},
		// ".sub.example.test" matches the subdomains, not sub.example.test.
		{"bob@a.sub.example.test", false, accepted},
		{"bob@a.b.sub.example.test", false, accepted},
		{"bob@sub.example.test", false, denied},
		{"bob@other.example.test", false, denied},
		// Address literals are local only when listed.
		{"bob@[192.0.2.1]", false, accepted},
		{"bob@[192.0.2.2]", false, denied},
		{"bob@[IPv6:2001:db8:0::1]", false, accepted},
		{"bob@[ipv6:2001:db8::2]", false, denied},
		{"bob@[127.0.0.1]", false, denied},
		{"bob@[not-an-ip]", false, badSyntax},
		// Relay tricks aimed at a local domain.
		{"bob%elsewhere.test@example.test", false, routing}, // the parser, before any plugin
		{"elsewhere.test!bob@example.test", false, routing},
		{"@example.test:bob@elsewhere.test", false, denied},
		{"@elsewhere.test:bob@example.test", false, accepted}, // RFC 5321 4.1.1.3: the source route is dropped
		{`"bob@elsewhere.test"@example.test`, false, badSyntax + ": @ in quoted local part"},
		// Malformed.
		{"@example.test", false, badSyntax + ": bad source route"},
		{"bob@", false, badSyntax + ": domain required"},
		{"bob", false, badSyntax + ": domain required"},
		{"", false, badSyntax + ": empty recipient"},
		// A relay client may send anywhere, tricks included.
		{"bob@elsewhere.test", true, accepted},
		{"bob%elsewhere.test@example.test", true, accepted},
		{"bob@example.test", true, accepted},
	}
	p := hookstest.Build(t, "rcptok", settings)
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	for _, tt := range tests {
		s := h.Connect("192.0.2.99")
		s.Conn().Relay = tt.relay
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Mail("alice@example.org"), 250)
		want(t, "RCPT "+tt.rcpt+" relay="+map[bool]string{true: "yes", false: "no"}[tt.relay], s.Rcpt(tt.rcpt), tt.want)
	}
}

// TestUnicodeDomains: domains compare as A-labels with ASCII-only case
// folding. A Unicode case fold (the Kelvin sign U+212A is 'k' to
// strings.ToLower, U+0130 is 'i') must not make a foreign domain local: the
// address would go downstream unchanged, to a domain this server does not
// serve. A genuine IDN matches in either form.
func TestUnicodeDomains(t *testing.T) {
	const settings = `domains = ["kernel.test", "info.test", "bücher.example", "xn--caf-dma.example", ".bücher.test"]`
	tests := []struct {
		rcpt string
		want string
	}{
		{"victim@kernel.test", accepted},
		{"victim@\u212Aernel.test", denied},    // KELVIN SIGN
		{"victim@\u212AERNEL.TEST", denied},    // ... in any case
		{"victim@xn--ernel-r74b.test", denied}, // its A-label
		{"victim@info.test", accepted},
		{"victim@INFO.test", accepted},
		{"victim@\u0130nfo.test", denied}, // CAPITAL I WITH DOT ABOVE
		{"victim@\u0130NFO.TEST", denied},
		{"victim@xn--nfo-eua.test", denied},                  // its A-label
		{"victim@\uFF4Bernel.test", denied},                  // FULLWIDTH k
		{"victim@kernel\u3002test", denied},                  // IDEOGRAPHIC FULL STOP
		{"po\u017Ftmaster", badSyntax + ": domain required"}, // a long s is no s: not <Postmaster>, refused by the parser
		{"bob@bücher.example", accepted},                     // configured as a U-label ...
		{"bob@xn--bcher-kva.example", accepted},              // ... matches its A-label
		{"bob@XN--BCHER-KVA.Example", accepted},
		{"bob@Bücher.example", accepted}, // ASCII case folds
		{"bob@BÜCHER.example", denied},   // Unicode case does not
		{"bob@bucher.example", denied},
		{"bob@café.example", accepted}, // configured as an A-label
		{"bob@xn--caf-dma.example", accepted},
		{"bob@mx.bücher.test", accepted}, // a wildcard U-label
		{"bob@mx.xn--bcher-kva.test", accepted},
		{"bob@xn--bcher-kva.test", denied}, // the wildcard's own domain
	}
	p := hookstest.Build(t, "rcptok", settings)
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	for _, tt := range tests {
		s := h.Connect("192.0.2.99")
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Cmd("MAIL FROM:<alice@example.org> SMTPUTF8"), 250)
		want(t, "RCPT "+tt.rcpt, s.Rcpt(tt.rcpt), tt.want)
	}

	// A domain IDNA refuses is a configuration error, not an entry that
	// never matches.
	for _, d := range []string{"\u212Aernel.test", "xn--ernel-r74b.test", "BÜCHER.example", ".\u0130nfo.test"} {
		hookstest.ExpectBuildError(t, "rcptok", `domains = ["`+d+`"]`, "is not a domain")
	}
}

func TestRelayClientsOK(t *testing.T) {
	for _, tt := range []struct {
		settings string
		want     string
	}{
		{`domains = ["example.test"]`, accepted}, // default true
		{"domains = [\"example.test\"]\nrelay_clients_ok = true", accepted},
		{"domains = [\"example.test\"]\nrelay_clients_ok = false", denied},
	} {
		h := hookstest.New(t, hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", tt.settings)), hookstest.Queue())
		s := h.Connect("192.0.2.99")
		s.Conn().Relay = true
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Mail("alice@example.test"), 250)
		want(t, tt.settings, s.Rcpt("bob@elsewhere.test"), tt.want)
		// A local recipient is accepted either way.
		want(t, tt.settings, s.Rcpt("carol@example.test"), accepted)
	}
}

func TestRelayedNote(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)), hookstest.Queue())
	msg := "Subject: hi\r\n\r\nbody\r\n"

	s := h.Connect("192.0.2.99")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)
	s.Conn().Relay = true
	hookstest.Expect(t, s.Send("bob@example.test", []string{"carol@example.test", "dave@elsewhere.test"}, msg), 250)

	q := h.Queued()
	if len(q) != 2 {
		t.Fatalf("queued %d messages; want 2", len(q))
	}
	if v, ok := q[0].Notes[rcptok.NoteRelayed.Name()]; ok {
		t.Errorf("inbound message: note %s = %v; want it unset", rcptok.NoteRelayed, v)
	}
	if v := q[1].Notes[rcptok.NoteRelayed.Name()]; v != true {
		t.Errorf("relayed message: note %s = %v; want true", rcptok.NoteRelayed, v)
	}
	if got := strings.Join(q[1].Recipients, ","); got != "carol@example.test,dave@elsewhere.test" {
		t.Errorf("recipients = %s", got)
	}
	if !strings.HasSuffix(string(q[1].Data), "\r\n"+msg) {
		t.Errorf("queued message %q does not end with the message sent", q[1].Data)
	}
}

func TestRcpthosts(t *testing.T) {
	p := hookstest.Build(t, "rcptok", `rcpthosts = "testdata/rcpthosts"
domains = ["inline.test"]`)
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	for rcpt, w := range map[string]string{
		"bob@example.test":         accepted,
		"bob@mixed.example.test":   accepted,
		"bob@inline.test":          accepted,
		"bob@www.hosted.test":      accepted,
		"bob@hosted.test":          denied,
		"bob@[192.0.2.1]":          accepted,
		"bob@comment.test":         denied,
		"bob@every.hosted.test.":   badSyntax,
		"bob@example.test.invalid": denied,
	} {
		s := h.Connect("192.0.2.99")
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Mail("alice@example.org"), 250)
		want(t, rcpt, s.Rcpt(rcpt), w)
	}
}

func TestBadSettings(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "rcpthosts")
	if err := os.WriteFile(bad, []byte("# comment\nexample.test\nuser@example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nothere")
	for _, tt := range []struct{ settings, want string }{
		{`domains = ["exa mple.test"]`, `domains: "exa mple.test" is not a domain`},
		{`domains = ["*.example.test"]`, `domains: "*.example.test": write ".example.test" to match every subdomain`},
		{`domains = ["bob@example.test"]`, `domains: "bob@example.test" is not a domain`},
		{`domains = [""]`, `domains: "" is not a domain`},
		{`domains = ["example..test"]`, `domains: "example..test" is not a domain`},
		{`domains = ["[192.0.2.300]"]`, `domains: "[192.0.2.300]" is not an address literal`},
		{`domains = "example.test"`, `domains: want a list`},
		{`domain = ["example.test"]`, `unknown key "domain"`},
		{`rcpthosts = "` + missing + `"`, `rcpthosts: cannot read the file: open ` + missing},
		{`rcpthosts = "` + bad + `"`, `rcpthosts: ` + bad + `:3: "user@example.test" is not a domain`},
		{`relay_clients_ok = false`, `domains and rcpthosts are both empty`},
	} {
		hookstest.ExpectBuildError(t, "rcptok", tt.settings, tt.want)
	}
	// No local domain, but relay clients: a submission-only listener.
	hookstest.Build(t, "rcptok", ``)
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "rcptok", "README.md")
}
