package relay_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/relay"
)

func TestConnect(t *testing.T) {
	p := hookstest.Build(t, "relay", `allow = ["127.0.0.0/8", "::1/128", "192.0.2.10", " 2001:db8::/32 ", "::ffff:198.51.100.0/120", "203.0.113.77/24"]`)
	h := hookstest.New(t, hookstest.Plugin("relay", p), hookstest.Queue())
	for _, tt := range []struct {
		remote string
		relay  bool
	}{
		{"127.0.0.1", true},
		{"127.255.255.254", true},
		{"128.0.0.1", false},
		{"::1", true},
		{"::2", false},
		{"192.0.2.10", true},
		{"192.0.2.11", false},
		{"[2001:db8:1::5]:2525", true},
		{"2001:db9::1", false},
		// A client on a dual-stack socket shows as its IPv4 address.
		{"::ffff:192.0.2.10", true},
		{"198.51.100.7", true},
		{"198.51.101.7", false},
		// Host bits in a prefix are ignored: 203.0.113.77/24 is 203.0.113.0/24.
		{"203.0.113.1", true},
		{"10.0.0.1", false},
	} {
		s := h.Connect(tt.remote)
		if got := s.Greeting().String(); got != "220 mx.example.test ESMTP Sluice ready" {
			t.Errorf("%s: greeting %q; relay must never refuse a connection", tt.remote, got)
		}
		c := s.Conn()
		if c.Relay != tt.relay {
			t.Errorf("%s: Relay = %v; want %v", tt.remote, c.Relay, tt.relay)
		}
		note, ok := relay.NoteClient.Lookup(&c.Notes)
		if tt.relay && (!ok || !note) {
			t.Errorf("%s: note %s = %v, %v; want true", tt.remote, relay.NoteClient, note, ok)
		}
		if !tt.relay && ok {
			t.Errorf("%s: note %s is set; want it absent", tt.remote, relay.NoteClient)
		}
	}
}

func TestDefaultNobody(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("relay", hookstest.Build(t, "relay", ``)))
	s := h.Connect("127.0.0.1")
	hookstest.Expect(t, s.Greeting(), 220)
	if s.Conn().Relay {
		t.Error("Relay = true with an empty allow list")
	}
}

// TestWithRcptok is the usual pairing: relay clients send anywhere, others
// only to the local domains.
func TestWithRcptok(t *testing.T) {
	h := hookstest.New(t,
		hookstest.Plugin("relay", hookstest.Build(t, "relay", `allow = ["192.0.2.0/24"]`)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	msg := "Subject: hi\r\n\r\nhello\r\n"

	inside := h.Connect("192.0.2.25")
	hookstest.Expect(t, inside.Greeting(), 220)
	if got := inside.Send("alice@example.test", []string{"bob@elsewhere.test"}, msg).String(); !regexp.MustCompile(`^250 2\.0\.0 Ok: queued as \w+$`).MatchString(got) {
		t.Errorf("relay client: %q; want 250 queued", got)
	}

	outside := h.Connect("198.51.100.25")
	hookstest.Expect(t, outside.Greeting(), 220)
	if got := outside.Send("alice@example.org", []string{"bob@elsewhere.test"}, msg).String(); got != "550 5.7.1 relaying denied" {
		t.Errorf("stranger: %q; want 550 5.7.1 relaying denied", got)
	}
	hookstest.Expect(t, outside.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)

	q := h.Queued()
	if len(q) != 2 || q[0].Recipients[0] != "bob@elsewhere.test" || q[1].Recipients[0] != "bob@example.test" {
		t.Fatalf("queued %+v", q)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`allow = ["192.0.2.300"]`, `allow: "192.0.2.300" is not an IP address or CIDR prefix`},
		{`allow = ["127.0.0.1", "192.0.2.0/33"]`, `allow: "192.0.2.0/33" is not an IP address or CIDR prefix`},
		{`allow = ["fe80::1%eth0"]`, `allow: "fe80::1%eth0" is not an IP address or CIDR prefix`},
		{`allow = ["mx.example.test"]`, `allow: "mx.example.test" is not an IP address or CIDR prefix`},
		{`allow = ["::ffff:0.0.0.0/90"]`, `allow: "::ffff:0.0.0.0/90" is not an IP address or CIDR prefix`},
		{`allow = [""]`, `allow: "" is not an IP address or CIDR prefix`},
		{`allow = "127.0.0.1"`, `allow: want a list`},
		{`allowed = ["127.0.0.1"]`, `unknown key "allowed"`},
	} {
		hookstest.ExpectBuildError(t, "relay", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "relay", "README.md")
}

// TestAllowFile: the relay clients from a file of networks, reread when
// the plugin is rebuilt (as on SIGHUP).
func TestAllowFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "relayclients")
	os.WriteFile(file, []byte("# office\n192.0.2.0/24\n2001:db8::7\n"), 0o644)
	p := hookstest.Build(t, "relay", fmt.Sprintf("allow = { file = %q }", file))
	h := hookstest.New(t, hookstest.Plugin("relay", p))
	for ip, want := range map[string]bool{"192.0.2.44": true, "2001:db8::7": true, "198.51.100.1": false} {
		s := h.Connect(ip)
		if s.Conn().Relay != want {
			t.Errorf("%s: Relay = %v, want %v", ip, s.Conn().Relay, want)
		}
	}
	os.WriteFile(file, []byte("198.51.100.0/24\n"), 0o644)
	p = hookstest.Build(t, "relay", fmt.Sprintf("allow = { file = %q }", file))
	h = hookstest.New(t, hookstest.Plugin("relay", p))
	if s := h.Connect("198.51.100.1"); !s.Conn().Relay {
		t.Errorf("after the rebuild 198.51.100.1 is not a relay client")
	}
	hookstest.ExpectBuildError(t, "relay", `allow = { file = "/nonexistent/relayclients" }`, "cannot read the table file")
}
