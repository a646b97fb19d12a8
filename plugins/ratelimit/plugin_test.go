package ratelimit_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/ratelimit"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/state/statetest"
)

func TestMain(m *testing.M) { statetest.Main(m) }

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

var runs atomic.Int64

// bboltTOML is a [state] table for a bbolt file of the test's own.
func bboltTOML(t *testing.T) string {
	return fmt.Sprintf("\n[state]\npath = %q\n", filepath.Join(t.TempDir(), "state.db"))
}

// redisTOML is a [state] table for the package's redis-server, with a
// prefix of the test's own.
func redisTOML(t *testing.T) string {
	return fmt.Sprintf("\n[state]\nbackend = \"redis\"\naddrs = [%q]\nprefix = \"t%d:\"\n", statetest.Redis(t), runs.Add(1))
}

// backends runs f once with each store: its [state] table's text.
func backends(t *testing.T, f func(t *testing.T, stateTOML string)) {
	t.Run("bbolt", func(t *testing.T) { f(t, bboltTOML(t)) })
	t.Run("redis", func(t *testing.T) { f(t, redisTOML(t)) })
}

// start is the fake clock's first reading: the start of an hour, so that
// the windows' slots begin at the test's zero.
var start = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

// buildOn returns the plugin on a fake clock, with the store stateTOML
// names.
func buildOn(t *testing.T, settings, stateTOML string) (*ratelimit.Plugin, *clock) {
	t.Helper()
	p := hookstest.Build(t, "ratelimit", settings+stateTOML).(*ratelimit.Plugin)
	clk := &clock{t: start}
	p.SetClock(clk.now)
	return p, clk
}

// build is buildOn with a bbolt file of the test's own.
func build(t *testing.T, settings string) (*ratelimit.Plugin, *clock) {
	t.Helper()
	return buildOn(t, settings, bboltTOML(t))
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
	backends(t, func(t *testing.T, stateTOML string) {
		testSlidingWindow(t, stateTOML)
	})
}

// testSlidingWindow: the count over the last hour is this hour-slot's
// messages plus the share of the last slot's still inside the window.
func testSlidingWindow(t *testing.T, stateTOML string) {
	p, clk := buildOn(t, "max = 3\nwindow = \"1h\"", stateTOML)
	h := newHarness(t, p)
	s := connect(t, h, "192.0.2.1", "alice@example.test")
	over := "450 4.7.1 Rate limit exceeded for alice@example.test: 3 messages per 1h; try again later"
	expect := func(when string, want string) {
		t.Helper()
		if got := mail(s, "alice@example.test"); got != want {
			t.Fatalf("%s: %q; want %q", when, got, want)
		}
	}

	// t=0, 10m, 20m: three messages.
	for i := range 3 {
		expect(fmt.Sprintf("message %d", i+1), ok)
		clk.advance(10 * time.Minute)
	}
	// t=30m, 59m59s: over the limit; refusals do not count.
	expect("message 4", over)
	clk.advance(29*time.Minute + 59*time.Second)
	expect("just before the hour", over)
	// t=1h: a new slot, but the whole last one is still in the window.
	clk.advance(time.Second)
	expect("at the hour", over)
	// t=1h30m: half of the last slot's 3 messages still count (1.5): one
	// more may go.
	clk.advance(30 * time.Minute)
	expect("half an hour later", ok)
	expect("half an hour later, again", over)
	// t=2h30m: half of the last slot's one message counts.
	clk.advance(time.Hour)
	expect("an hour later", ok)
	expect("an hour later, again", ok)
	expect("an hour later, a third", over)
	// After two quiet hours nothing is left: three messages again.
	clk.advance(2 * time.Hour)
	for i := range 3 {
		expect(fmt.Sprintf("after a quiet spell, message %d", i+1), ok)
	}
	expect("after a quiet spell, message 4", over)

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
	// IPv6 clients are counted by their /64: another address of it shares
	// the count, another /64 does not.
	mail(connect(t, h, "[2001:db8::1]:4000", ""), "someone@example.org")
	if got, want := mail(connect(t, h, "[2001:db8::2:1]:4000", ""), "someone@example.org"), "450 4.7.1 Rate limit exceeded for 2001:db8::/64: 1 messages per 30m; try again later"; got != want {
		t.Errorf("IPv6, same /64: %q; want %q", got, want)
	}
	if got := mail(connect(t, h, "[2001:db8:0:1::1]:4000", ""), "someone@example.org"); got != ok {
		t.Errorf("IPv6, another /64: %q; want %q", got, ok)
	}
}

// TestIPv6Prefix: ipv6_prefix sets how IPv6 clients are grouped; 128
// counts each address apart.
func TestIPv6Prefix(t *testing.T) {
	for _, tt := range []struct {
		prefix int
		shown  string
	}{{128, "2001:db8::1"}, {48, "2001:db8::/48"}} {
		p, _ := build(t, fmt.Sprintf("max = 1\nby = \"ip\"\nipv6_prefix = %d", tt.prefix))
		h := newHarness(t, p)
		mail(connect(t, h, "[2001:db8::1]:4000", ""), "someone@example.org")
		want := "450 4.7.1 Rate limit exceeded for " + tt.shown + ": 1 messages per 1h; try again later"
		if got := mail(connect(t, h, "[2001:db8::1]:4001", ""), "someone@example.org"); got != want {
			t.Errorf("ipv6_prefix = %d: %q; want %q", tt.prefix, got, want)
		}
		other := mail(connect(t, h, "[2001:db8:0:1::1]:4000", ""), "someone@example.org")
		if want := map[int]string{128: ok, 48: strings.Replace(want, "for 2001:db8::1", "for 2001:db8::/48", 1)}[tt.prefix]; other != want {
			t.Errorf("ipv6_prefix = %d, another /64: %q; want %q", tt.prefix, other, want)
		}
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

// TestConcurrent: many connections of one user at once get exactly max
// messages through (run with -race).
func TestConcurrent(t *testing.T) {
	backends(t, testConcurrent)
}

func testConcurrent(t *testing.T, stateTOML string) {
	p, _ := buildOn(t, `max = 50`, stateTOML)
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
		{``, `max is missing or zero: set how many messages one user may send per window, e.g. max = 100 (or several limits with limits = [...])`},
		{`max = 0`, `max is missing or zero`},
		{`max = -3`, `max = -3: want at least 1`},
		{`max = "100"`, `max: expected an integer, got a string`},
		{"max = 10\nwindow = \"1 hour\"", `window = "1 hour": not a duration: write it like "1h", "30m" or "24h"`},
		{"max = 10\nwindow = \"60\"", `window = "60": not a duration`},
		{"max = 10\nwindow = \"0s\"", `window = "0s": want at least "1s"`},
		{"max = 10\nwindow = \"-1h\"", `window = "-1h": want at least "1s"`},
		{"max = 10\nwindow = 3600", `window: expected a duration such as "30s", got an integer`},
		{"max = 10\nby = \"login\"", `by = "login": want "user", "ip", "sender" or "sender_domain"`},
		{"max = 10\nby = \"IP\"", `by = "IP": want "user", "ip", "sender" or "sender_domain"`},
		{"max = 10\nlimits = [{ max = 5 }]", `set max, window and by for one limit, or limits for several, not both`},
		{"limits = [{ max = 5 }, { by = \"ip\" }]", `limits[1]: max is missing or zero: set how many messages one key may send per window`},
		{"limits = [{ max = 5, count = \"bytes\" }]", `limits[0]: count = "bytes": want "messages" or "recipients"`},
		{"limits = [{ max = 5, window = \"1d\" }]", `limits[0]: window = "1d": not a duration`},
		{"limits = [{ max = 5, per = \"ip\" }]", `unknown key`},
		{"max = 10\nipv6_prefix = 130", `ipv6_prefix = 130: want 16 to 128 (64 is usual)`},
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

// TestSeveralLimits: a message must fit in every limit; the first one it
// does not fit in is named, and a refused message counts in none.
func TestSeveralLimits(t *testing.T) {
	p, clk := build(t, `limits = [
		{ by = "ip", max = 2, window = "1m" },
		{ by = "ip", max = 3, window = "1h" },
	]`)
	h := newHarness(t, p)
	perMinute := "450 4.7.1 Rate limit exceeded for 192.0.2.1: 2 messages per 1m; try again later"
	perHour := "450 4.7.1 Rate limit exceeded for 192.0.2.1: 3 messages per 1h; try again later"
	s := connect(t, h, "192.0.2.1", "")
	for _, step := range []struct {
		advance time.Duration
		want    string
	}{
		{0, ok}, {0, ok}, {0, perMinute}, // two a minute
		{2 * time.Minute, ok},       // the third of the hour
		{2 * time.Minute, perHour},  // the hour is full
		{59 * time.Minute, perHour}, // t=1h3m: 95% of the last hour-slot's 3 still count
		{30 * time.Minute, ok},      // t=1h33m: 45% of them (1.35) count
		{0, perHour},
	} {
		clk.advance(step.advance)
		if got := mail(s, "someone@example.org"); got != step.want {
			t.Fatalf("at %v: %q; want %q", clk.now().Sub(start), got, step.want)
		}
	}
}

// TestRecipients: count = "recipients" counts the recipients the chain
// accepted (rcpt_ok), checked at each RCPT: a recipient refused by a
// later plugin does not count.
func TestRecipients(t *testing.T) {
	p, _ := build(t, `limits = [
		{ by = "sender_domain", count = "recipients", max = 3, window = "1h" },
		{ by = "sender_domain", max = 10, window = "1h" },
	]`)
	h := newHarness(t, p)
	over := "450 4.7.1 Rate limit exceeded for example.org: 3 recipients per 1h; try again later"
	s := connect(t, h, "192.0.2.1", "")
	hookstest.Expect(t, s.Mail("alice@Example.ORG"), 250)
	hookstest.Expect(t, s.Rcpt("a@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("someone@elsewhere.example"), 550) // rcptok: not counted
	hookstest.Expect(t, s.Rcpt("b@example.test"), 250)
	hookstest.Expect(t, s.Rcpt("c@example.test"), 250)
	if got := s.Rcpt("d@example.test").String(); got != over {
		t.Fatalf("fourth recipient: %q; want %q", got, over)
	}
	s.Reset()
	// Another sender of the domain, from elsewhere, shares the count;
	// another domain does not.
	s2 := connect(t, h, "198.51.100.1", "")
	hookstest.Expect(t, s2.Mail("bob@example.org"), 250)
	if got := s2.Rcpt("a@example.test").String(); got != over {
		t.Errorf("bob@example.org: %q; want %q", got, over)
	}
	s2.Reset()
	hookstest.Expect(t, s2.Mail("carol@example.net"), 250)
	hookstest.Expect(t, s2.Rcpt("a@example.test"), 250)
	s2.Reset()
	// The null sender has no domain to count by: limits by sender or
	// sender domain pass it.
	hookstest.Expect(t, s2.Mail(""), 250)
	for _, r := range []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test"} {
		hookstest.Expect(t, s2.Rcpt(r), 250)
	}
}

// TestBySender: by = "sender" counts the MAIL FROM address, its local
// part in ASCII lower case and its domain canonical.
func TestBySender(t *testing.T) {
	p, _ := build(t, "max = 1\nby = \"sender\"")
	h := newHarness(t, p)
	s := connect(t, h, "192.0.2.1", "")
	if got := mail(s, "news@bücher.example"); got != ok {
		t.Fatal(got)
	}
	want := "450 4.7.1 Rate limit exceeded for NEWS@xn--bcher-kva.example: 1 messages per 1h; try again later"
	if got := mail(connect(t, h, "192.0.2.9", ""), "NEWS@xn--bcher-kva.example"); got != want {
		t.Errorf("the same sender spelled otherwise: %q; want %q", got, want)
	}
	if got := mail(s, "other@bücher.example"); got != ok {
		t.Errorf("another sender: %q; want %q", got, ok)
	}
}

// TestSurvivesRestart: with the embedded store the counts are in the
// file: a plugin built again on it (smtpd restarted or reloaded) goes on
// counting.
func TestSurvivesRestart(t *testing.T) {
	stateTOML := bboltTOML(t)
	p, _ := buildOn(t, "max = 2\nby = \"ip\"", stateTOML)
	h := newHarness(t, p)
	for range 2 {
		if got := mail(connect(t, h, "192.0.2.1", ""), "a@example.org"); got != ok {
			t.Fatal(got)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p2, _ := buildOn(t, "max = 2\nby = \"ip\"", stateTOML)
	want := "450 4.7.1 Rate limit exceeded for 192.0.2.1: 2 messages per 1h; try again later"
	if got := mail(connect(t, newHarness(t, p2), "192.0.2.1", ""), "a@example.org"); got != want {
		t.Errorf("after the restart: %q; want %q", got, want)
	}
}

// TestSharedRedis: two instances on one Redis (two smtpd processes
// behind one load balancer) share the counts; an instance of another
// name counts apart.
func TestSharedRedis(t *testing.T) {
	stateTOML := redisTOML(t)
	a, _ := buildOn(t, "max = 3\nby = \"ip\"", stateTOML)
	b, _ := buildOn(t, "max = 3\nby = \"ip\"", stateTOML)
	ha, hb := newHarness(t, a), newHarness(t, b)
	for i, h := range []*hookstest.Harness{ha, hb, ha} {
		if got := mail(connect(t, h, "192.0.2.1", ""), "a@example.org"); got != ok {
			t.Fatalf("message %d: %q", i+1, got)
		}
	}
	want := "450 4.7.1 Rate limit exceeded for 192.0.2.1: 3 messages per 1h; try again later"
	if got := mail(connect(t, hb, "192.0.2.1", ""), "a@example.org"); got != want {
		t.Errorf("fourth message, on the second: %q; want %q", got, want)
	}
	c, _ := buildOn(t, "max = 3\nby = \"ip\"", stateTOML)
	hc := hookstest.New(t, hookstest.Plugin("ratelimit_outbound", c), hookstest.Queue())
	if got := mail(connect(t, hc, "192.0.2.1", ""), "a@example.org"); got != ok {
		t.Errorf("another instance: %q; want %q", got, ok)
	}
}

// TestStoreDown: a store that cannot be reached defers the MAIL (a local
// error); it never lets mail through uncounted.
func TestStoreDown(t *testing.T) {
	p, _ := buildOn(t, "max = 3", "\n[state]\nbackend = \"redis\"\naddrs = [\"127.0.0.1:1\"]\ntimeout = \"200ms\"\n")
	h := newHarness(t, p)
	var logs hookstest.LogBuffer
	h.Logger = logs.Logger()
	hookstest.Expect(t, connect(t, h, "192.0.2.1", "").Mail("a@example.org"), 451, "4.3.0")
	if got := logs.String(); !strings.Contains(got, "ratelimit: state: redis") {
		t.Errorf("log %q; want the store's error", got)
	}
}

// BenchmarkMail is what counting costs a MAIL: one limit, a new key each
// time (a counter created), in each store. bbolt writes (and fsyncs) its
// file once per count.
//
//	go test -run '^$' -bench Mail ./plugins/ratelimit/
func BenchmarkMail(b *testing.B) {
	for _, backend := range []struct{ name, toml string }{
		{"bbolt", fmt.Sprintf("\n[state]\npath = %q\n", filepath.Join(b.TempDir(), "state.db"))},
		{"redis", fmt.Sprintf("\n[state]\nbackend = \"redis\"\naddrs = [%q]\nprefix = \"bench%d:\"\n", statetest.Redis(b), runs.Add(1))},
	} {
		b.Run(backend.name, func(b *testing.B) {
			p := hookstest.Build(b, "ratelimit", "max = 1000000\nby = \"sender\""+backend.toml).(*ratelimit.Plugin)
			h := hookstest.New(b, hookstest.Plugin("ratelimit", p), hookstest.Queue())
			h.Logger = slog.New(slog.DiscardHandler)
			s := h.Connect("192.0.2.1")
			s.Helo("client.example")
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if rep := s.Mail(fmt.Sprintf("u%d@example.org", i)); rep.Code != 250 {
					b.Fatal(rep)
				}
				s.Reset()
			}
		})
		// 20 connections at once, as the bench's sessions: bbolt's
		// writes of concurrent counts share a commit.
		b.Run(backend.name+"/parallel", func(b *testing.B) {
			p := hookstest.Build(b, "ratelimit", "max = 1000000\nby = \"sender\""+backend.toml).(*ratelimit.Plugin)
			h := hookstest.New(b, hookstest.Plugin("ratelimit", p), hookstest.Queue())
			h.Logger = slog.New(slog.DiscardHandler)
			var next atomic.Int64
			b.SetParallelism(10)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := h.Connect("192.0.2.1")
				s.Helo("client.example")
				for pb.Next() {
					if rep := s.Mail(fmt.Sprintf("p%d@example.org", next.Add(1))); rep.Code != 250 {
						b.Error(rep)
						return
					}
					s.Reset()
				}
			})
		})
	}
}
