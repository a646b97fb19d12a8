package ratelimit_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/ratelimit"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

const msg = "Subject: hi\r\n\r\nhello\r\n"

// clock is a settable clock for the plugin.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// build returns the plugin on a fake clock.
func build(t *testing.T, settings string) (*ratelimit.Plugin, *clock) {
	t.Helper()
	p := hookstest.Build(t, "ratelimit", settings).(*ratelimit.Plugin)
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	p.SetClock(clk.now)
	return p, clk
}

// newHarness is a submission chain: ratelimit, then rcptok, which lets
// authenticated (relay) clients send anywhere.
func newHarness(t *testing.T, p *ratelimit.Plugin) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("ratelimit", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
}

// connect opens a session from ip and, when user is not "", marks it as
// authenticated as user. hookstest has no AUTH command: the server's
// Session.Auth sets c.AuthUser (and c.Relay) once an auth plugin answers
// OK, so a test sets the same fields directly before MAIL.
func connect(t *testing.T, h *hookstest.Harness, ip, user string) *hookstest.Session {
	t.Helper()
	s := h.Connect(ip)
	hookstest.Expect(t, s.Helo("laptop.example"), 250)
	if user != "" {
		c := s.Conn()
		c.AuthUser, c.Relay = user, true
	}
	return s
}

// mail sends MAIL and, when it is accepted, RSET; it returns the reply.
func mail(s *hookstest.Session, from string) string {
	rep := s.Mail(from)
	if rep.Positive() {
		s.Reset()
	}
	return rep.String()
}

const ok = "250 2.1.0 Sender OK"

func TestSlidingWindow(t *testing.T) {
	p, clk := build(t, "max = 3\nwindow = \"1h\"")
	h := newHarness(t, p)
	s := connect(t, h, "192.0.2.1", "alice@example.test")
	over := "450 4.7.1 Rate limit exceeded for alice@example.test: 3 messages per 1h; try again later"

	// t=0, 10m, 20m: three messages.
	for i := range 3 {
		if got := mail(s, "alice@example.test"); got != ok {
			t.Fatalf("message %d: %q", i+1, got)
		}
		clk.advance(10 * time.Minute)
	}
	// t=30m, 59m59s: over the limit; refusals do not count.
	if got := mail(s, "alice@example.test"); got != over {
		t.Fatalf("message 4: %q; want %q", got, over)
	}
	clk.advance(29*time.Minute + 59*time.Second)
	if got := mail(s, "alice@example.test"); got != over {
		t.Fatalf("just before the first message is an hour old: %q; want %q", got, over)
	}
	// t=1h: the first message leaves the window, one more may go.
	clk.advance(time.Second)
	if got := mail(s, "alice@example.test"); got != ok {
		t.Fatalf("an hour after the first message: %q; want %q", got, ok)
	}
	if got := mail(s, "alice@example.test"); got != over {
		t.Fatalf("right after: %q; want %q", got, over)
	}
	// t=1h10m: the second one leaves too.
	clk.advance(10 * time.Minute)
	if got := mail(s, "alice@example.test"); got != ok {
		t.Fatalf("an hour after the second message: %q; want %q", got, ok)
	}
	// Another connection of the same user shares the count; another user
	// from the same address does not.
	if got := mail(connect(t, h, "198.51.100.7", "alice@example.test"), "alice@example.test"); got != over {
		t.Errorf("alice on a second connection: %q; want %q", got, over)
	}
	// Spellings of the login an auth backend may take for the same user
	// share the count: ASCII case, a trailing dot.
	for _, user := range []string{"Alice@EXAMPLE.test", "alice@example.test.", "ALICE@Example.Test"} {
		want := "450 4.7.1 Rate limit exceeded for " + user + ": 3 messages per 1h; try again later"
		if got := mail(connect(t, h, "198.51.100.8", user), "alice@example.test"); got != want {
			t.Errorf("%s: %q; want %q", user, got, want)
		}
	}
	if got := mail(connect(t, h, "192.0.2.1", "bob@example.test"), "bob@example.test"); got != ok {
		t.Errorf("bob from alice's address: %q; want %q", got, ok)
	}
}

// TestCountsTransactions: each MAIL is one message, whatever happens to
// the transaction afterwards; the note gives the count so far.
func TestCountsTransactions(t *testing.T) {
	p, _ := build(t, `max = 4`)
	h := newHarness(t, p)
	s := connect(t, h, "192.0.2.1", "alice@example.test")
	for i := range 2 {
		if got := s.Send("alice@example.test", []string{"friend@example.org"}, msg).String(); !strings.HasPrefix(got, "250 2.0.0 Ok: queued as ") {
			t.Fatalf("message %d: %q", i+1, got)
		}
	}
	// A transaction abandoned with RSET counts, and so does one whose
	// only recipient is refused.
	hookstest.Expect(t, s.Mail("alice@example.test"), 250)
	s.Reset()
	s2 := connect(t, h, "192.0.2.1", "alice@example.test")
	s2.Conn().Relay = false // as if rcptok refused it
	hookstest.Expect(t, s2.Mail("alice@example.test"), 250)
	hookstest.Expect(t, s2.Rcpt("friend@example.org"), 550)
	s2.Reset()

	want := "450 4.7.1 Rate limit exceeded for alice@example.test: 4 messages per 1h; try again later"
	if got := s.Send("alice@example.test", []string{"friend@example.org"}, msg).String(); got != want {
		t.Fatalf("fifth MAIL: %q; want %q", got, want)
	}
	q := h.Queued()
	if len(q) != 2 {
		t.Fatalf("queued %d messages; want 2", len(q))
	}
	for i, m := range q {
		if got := m.Notes[ratelimit.NoteCount.Name()]; got != i+1 {
			t.Errorf("message %d: note %s = %v; want %d", i+1, ratelimit.NoteCount, got, i+1)
		}
	}
}

// TestByUser: with by = "user" (the default) an unauthenticated client is
// counted by its IP address, apart from the users who log in from it.
func TestByUser(t *testing.T) {
	p, _ := build(t, "max = 1\nwindow = \"30m\"\nby = \"user\"")
	h := newHarness(t, p)
	anon := connect(t, h, "192.0.2.1", "")
	if got := mail(anon, "someone@example.org"); got != ok {
		t.Fatalf("first anonymous message: %q", got)
	}
	if got, want := mail(anon, "someone@example.org"), "450 4.7.1 Rate limit exceeded for 192.0.2.1: 1 messages per 30m; try again later"; got != want {
		t.Errorf("second anonymous message: %q; want %q", got, want)
	}
	if got := mail(connect(t, h, "192.0.2.1", "alice@example.test"), "alice@example.test"); got != ok {
		t.Errorf("alice from the same address: %q; want %q", got, ok)
	}
	if got := mail(connect(t, h, "192.0.2.2", ""), "someone@example.org"); got != ok {
		t.Errorf("another address: %q; want %q", got, ok)
	}
	// IPv6 clients are counted by their own address, written canonically.
	v6 := connect(t, h, "[2001:db8::1]:4000", "")
	mail(v6, "someone@example.org")
	if got, want := mail(v6, "someone@example.org"), "450 4.7.1 Rate limit exceeded for 2001:db8::1: 1 messages per 30m; try again later"; got != want {
		t.Errorf("IPv6: %q; want %q", got, want)
	}
}

// TestLoginSpellings: an IDN login counts once whichever form it is
// written in; a Unicode case fold is no spelling of it.
func TestLoginSpellings(t *testing.T) {
	p, _ := build(t, "max = 1")
	h := newHarness(t, p)
	over := func(user string) string {
		return "450 4.7.1 Rate limit exceeded for " + user + ": 1 messages per 1h; try again later"
	}
	for _, tt := range []struct{ user, want string }{
		{"alice@bücher.example", ok},
		{"alice@xn--bcher-kva.example", over("alice@xn--bcher-kva.example")},
		{"ALICE@XN--BCHER-KVA.EXAMPLE.", over("ALICE@XN--BCHER-KVA.EXAMPLE.")},
		{"alice@kernel.test", ok},
		{"alice@\u212Aernel.test", ok},
		{"alice@\u212AERNEL.test", over("alice@\u212AERNEL.test")},
		{"webapp", ok},
		{"WebApp", over("WebApp")},
	} {
		if got := mail(connect(t, h, "192.0.2.1", tt.user), "someone@example.test"); got != tt.want {
			t.Errorf("%s: %q; want %q", tt.user, got, tt.want)
		}
	}
}

// TestByIP: every client of one address shares one count, logged in or
// not.
func TestByIP(t *testing.T) {
	p, _ := build(t, "max = 2\nwindow = \"24h\"\nby = \"ip\"")
	h := newHarness(t, p)
	if got := mail(connect(t, h, "192.0.2.1", "alice@example.test"), "alice@example.test"); got != ok {
		t.Fatal(got)
	}
	if got := mail(connect(t, h, "192.0.2.1", "bob@example.test"), "bob@example.test"); got != ok {
		t.Fatal(got)
	}
	if got, want := mail(connect(t, h, "192.0.2.1", ""), "carol@example.org"), "450 4.7.1 Rate limit exceeded for 192.0.2.1: 2 messages per 24h; try again later"; got != want {
		t.Errorf("third message from 192.0.2.1: %q; want %q", got, want)
	}
	// A dual-stack socket's mapped address is the IPv4 client.
	if got, want := mail(connect(t, h, "[::ffff:192.0.2.1]:4000", ""), "carol@example.org"), "450 4.7.1 Rate limit exceeded for 192.0.2.1: 2 messages per 24h; try again later"; got != want {
		t.Errorf("mapped address: %q; want %q", got, want)
	}
	if got := mail(connect(t, h, "192.0.2.2", "alice@example.test"), "alice@example.test"); got != ok {
		t.Errorf("alice from another address: %q; want %q", got, ok)
	}
}

// TestWindowText: the refusal writes the window as the config does.
func TestWindowText(t *testing.T) {
	for _, tt := range []struct{ window, text string }{
		{"1h", "1h"}, {"60m", "1h"}, {"30m", "30m"}, {"1h30m", "1h30m"}, {"90s", "1m30s"},
		{"45s", "45s"}, {"24h", "24h"}, {"10m", "10m"}, {"1h0m30s", "1h0m30s"}, {"1.5s", "1.5s"},
	} {
		p, _ := build(t, fmt.Sprintf("max = 1\nwindow = %q", tt.window))
		h := newHarness(t, p)
		s := connect(t, h, "192.0.2.1", "alice")
		mail(s, "alice@example.test")
		want := "450 4.7.1 Rate limit exceeded for alice: 1 messages per " + tt.text + "; try again later"
		if got := mail(s, "alice@example.test"); got != want {
			t.Errorf("window = %q: %q; want %q", tt.window, got, want)
		}
	}
}

// TestPrune: keys with nothing in the window are dropped, so memory holds
// only the recently active ones.
func TestPrune(t *testing.T) {
	p, clk := build(t, "max = 5\nwindow = \"10m\"\nby = \"ip\"")
	for i := range 1000 {
		if _, ok := p.Take(fmt.Sprintf("ip:192.0.2.%d/%d", i%250, i)); !ok {
			t.Fatal("refused a first message")
		}
	}
	if got := p.Keys(); got != 1000 {
		t.Fatalf("%d keys; want 1000", got)
	}
	// keysAfter lets d pass, takes a message for key and counts the keys.
	keysAfter := func(d time.Duration, key string) int {
		clk.advance(d)
		p.Take(key)
		return p.Keys()
	}
	if got := keysAfter(5*time.Minute, "ip:198.51.100.1"); got != 1001 {
		t.Fatalf("%d keys half a window later; want 1001 (nothing expired yet)", got)
	}
	if got := keysAfter(5*time.Minute, "ip:198.51.100.2"); got != 2 {
		t.Fatalf("%d keys a window later; want 2 (the two recent ones)", got)
	}
	if got := keysAfter(20*time.Minute, "ip:198.51.100.3"); got != 1 {
		t.Fatalf("%d keys after a quiet spell; want 1", got)
	}
}

// TestConcurrent: many connections of one user at once get exactly max
// messages through (run with -race).
func TestConcurrent(t *testing.T) {
	p, _ := build(t, `max = 50`)
	h := newHarness(t, p)
	var accepted, refused atomic.Int32
	var wg sync.WaitGroup
	sessions := make([]*hookstest.Session, 20)
	for i := range sessions {
		sessions[i] = connect(t, h, fmt.Sprintf("192.0.2.%d", i+1), "alice@example.test")
	}
	for _, s := range sessions {
		wg.Go(func() {
			for range 10 {
				rep := s.Mail("alice@example.test")
				switch {
				case rep.Code == 250:
					accepted.Add(1)
					s.Reset()
				case rep.Code == 450:
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if accepted.Load() != 50 || refused.Load() != 150 {
		t.Errorf("accepted %d, refused %d; want 50 and 150", accepted.Load(), refused.Load())
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{``, `max is missing or zero: set how many messages one user may send per window, e.g. max = 100`},
		{`max = 0`, `max is missing or zero`},
		{`max = -3`, `max = -3: want at least 1`},
		{`max = "100"`, `max: expected an integer, got a string`},
		{"max = 10\nwindow = \"1 hour\"", `window = "1 hour": not a duration: write it like "1h", "30m" or "24h"`},
		{"max = 10\nwindow = \"60\"", `window = "60": not a duration`},
		{"max = 10\nwindow = \"\"", `window = "": not a duration`},
		{"max = 10\nwindow = \"0s\"", `window = "0s": want at least "1s"`},
		{"max = 10\nwindow = \"-1h\"", `window = "-1h": want at least "1s"`},
		{"max = 10\nwindow = 3600", `window: expected a duration such as "30s", got an integer`},
		{"max = 10\nby = \"login\"", `by = "login": want "user" or "ip"`},
		{"max = 10\nby = \"IP\"", `by = "IP": want "user" or "ip"`},
		{"max = 10\nlimit = 5", `unknown key "limit"`},
	} {
		hookstest.ExpectBuildError(t, "ratelimit", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md
// through the config loader (which refuses keys the plugin did not
// decode).
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "ratelimit", "README.md")
}
