package greylist_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/greylist"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/state/statetest"
	"github.com/sluice-mta/sluice/transaction"
)

func TestMain(m *testing.M) { statetest.Main(m) }

const msg = "Subject: hi\r\n\r\nhello\r\n"

var runs atomic.Int64

// backends runs f once with each store: its [state] table's text.
func backends(t *testing.T, f func(t *testing.T, stateTOML string)) {
	t.Run("bbolt", func(t *testing.T) {
		f(t, fmt.Sprintf("[state]\npath = %q\n", filepath.Join(t.TempDir(), "state.db")))
	})
	t.Run("redis", func(t *testing.T) {
		// A prefix per test: one server serves the whole package.
		f(t, fmt.Sprintf("[state]\nbackend = \"redis\"\naddrs = [%q]\nprefix = \"t%d:\"\n", statetest.Redis(t), runs.Add(1)))
	})
}

// clock is a settable time for the plugin.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// setup builds greylist (with settings and the store) before rcptok, and
// a queue; the plugin's clock starts at a fixed time.
func setup(t *testing.T, settings, stateTOML string) (*hookstest.Harness, *greylist.Plugin, *clock) {
	t.Helper()
	p := hookstest.BuildAs[*greylist.Plugin](t, "greylist", settings+"\n"+stateTOML)
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	p.SetClock(clk.now)
	rcptok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("greylist", p), hookstest.Plugin("rcptok", rcptok), hookstest.Queue())
	return h, p, clk
}

func TestGreylistThenRetry(t *testing.T) {
	backends(t, func(t *testing.T, st string) {
		h, _, clk := setup(t, "", st)
		s := h.Connect("192.0.2.10")
		hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg),
			"451 4.7.1 Greylisted: please try again in 300 seconds")
		clk.add(2 * time.Minute)
		hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg),
			"451 4.7.1 Greylisted: please try again in 180 seconds")
		// Another recipient is another triplet.
		clk.add(3*time.Minute + time.Second)
		tr := s.SendAll("alice@example.org", []string{"bob@example.test", "carol@example.test"}, msg)
		hookstest.Expect(t, tr.Rcpt[0], 250)
		hookstest.ExpectReply(t, tr.Rcpt[1], "451 4.7.1 Greylisted: please try again in 300 seconds")
		hookstest.Expect(t, tr.Data, 250)
		q := h.Queued()
		if len(q) != 1 || len(q[0].Recipients) != 1 || q[0].Recipients[0] != "bob@example.test" {
			t.Fatalf("queued %+v; want one message to bob", q)
		}
		if q[0].Notes["greylist.passed"] != 1 || q[0].Notes["greylist.deferred"] != 1 {
			t.Fatalf("notes %v; want greylist.passed 1 and greylist.deferred 1", q[0].Notes)
		}
		// Known now: accepted at once, from a new connection too, any
		// case of the addresses.
		clk.add(time.Hour)
		hookstest.Expect(t, h.Connect("192.0.2.10").Send("Alice@Example.org", []string{"BOB@example.test"}, msg), 250)
	})
}

func TestTripletExpires(t *testing.T) {
	backends(t, func(t *testing.T, st string) {
		h, _, clk := setup(t, "delay = \"1m\"\nretry_window = \"1h\"\nlifetime = \"2h\"\nauto_whitelist = 0", st)
		s := h.Connect("192.0.2.10")
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 451, "60 seconds")
		// Not retried within delay + retry_window: starts over.
		clk.add(time.Minute + time.Hour + time.Second)
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 451, "60 seconds")
		clk.add(time.Minute)
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
		// A passed triplet is forgotten after lifetime unused...
		clk.add(2*time.Hour + time.Second)
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 451, "60 seconds")
		// ...but renewed while in use.
		clk.add(time.Minute)
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
		for range 4 {
			clk.add(90 * time.Minute)
			hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
		}
	})
}

func TestClientNetworks(t *testing.T) {
	backends(t, func(t *testing.T, st string) {
		h, _, clk := setup(t, "", st)
		for _, tc := range []struct{ first, retry, other string }{
			{"192.0.2.10", "192.0.2.200", "192.0.3.10"},
			{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"},
			{"::ffff:198.51.100.1", "198.51.100.77", "198.51.101.1"},
		} {
			from := "x" + strconv.Itoa(int(runs.Add(1))) + "@example.org"
			hookstest.Expect(t, h.Connect(tc.first).Send(from, []string{"b@example.test"}, msg), 451)
			clk.add(6 * time.Minute)
			hookstest.Expect(t, h.Connect(tc.other).Send(from, []string{"b@example.test"}, msg), 451, "300 seconds")
			hookstest.Expect(t, h.Connect(tc.retry).Send(from, []string{"b@example.test"}, msg), 250)
		}
	})
	h, _, _ := setup(t, "ipv4_prefix = 32", fmt.Sprintf("[state]\npath = %q\n", filepath.Join(t.TempDir(), "s.db")))
	hookstest.Expect(t, h.Connect("192.0.2.10").Send("a@example.org", []string{"b@example.test"}, msg), 451)
}

func TestAutoWhitelist(t *testing.T) {
	backends(t, func(t *testing.T, st string) {
		h, _, clk := setup(t, "auto_whitelist = 2", st)
		for _, from := range []string{"a@example.org", "b@example.org"} {
			hookstest.Expect(t, h.Connect("192.0.2.10").Send(from, []string{"b@example.test"}, msg), 451)
		}
		// A third sender, before the network has passed twice: greylisted.
		hookstest.Expect(t, h.Connect("192.0.2.11").Send("c@example.org", []string{"b@example.test"}, msg), 451)
		clk.add(5 * time.Minute)
		for _, from := range []string{"a@example.org", "b@example.org"} {
			hookstest.Expect(t, h.Connect("192.0.2.10").Send(from, []string{"b@example.test"}, msg), 250)
		}
		// Two retries passed: the network is whitelisted, new triplets pass at once.
		s := h.Connect("192.0.2.99")
		hookstest.Expect(t, s.Send("new@example.org", []string{"someone@example.test"}, msg), 250)
		q := h.Queued()
		if got := q[len(q)-1].Notes["greylist.skipped"]; got != "auto-whitelisted" {
			t.Fatalf("greylist.skipped = %v; want \"auto-whitelisted\"", got)
		}
		// Another network is not.
		hookstest.Expect(t, h.Connect("192.0.3.1").Send("new@example.org", []string{"someone@example.test"}, msg), 451)
	})
}

// senderWhitelist marks every sender whitelisted, as bwl does.
type senderWhitelist struct{}

func (senderWhitelist) Mail(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	transaction.NoteWhitelisted.Set(&tx.Notes, "sender list")
	return hooks.Result{}
}

func TestSkipped(t *testing.T) {
	dir := t.TempDir()
	st := fmt.Sprintf("[state]\npath = %q\n", filepath.Join(dir, "state.db"))
	h, _, _ := setup(t, "", st)
	for _, tc := range []struct {
		name string
		set  func(c *connection.Connection)
	}{
		{"relay", func(c *connection.Connection) { c.Relay = true }},
		{"auth", func(c *connection.Connection) { c.AuthUser = "alice" }},
		{"whitelisted client", func(c *connection.Connection) { connection.NoteWhitelisted.Set(&c.Notes, "client list") }},
	} {
		s := h.Connect("192.0.2.10")
		tc.set(s.Conn())
		hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
		q := h.Queued()
		if got := q[len(q)-1].Notes["greylist.skipped"]; got != tc.name {
			t.Errorf("greylist.skipped = %v; want %q", got, tc.name)
		}
	}
	// A whitelisted sender, noted by a plugin before greylist.
	p := hookstest.BuildAs[*greylist.Plugin](t, "greylist", st)
	h2 := hookstest.New(t, hookstest.Plugin("bwl", senderWhitelist{}), hookstest.Plugin("greylist", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)), hookstest.Queue())
	hookstest.Expect(t, h2.Connect("192.0.2.10").Send("a@example.org", []string{"b@example.test"}, msg), 250)
	if got := h2.Queued()[0].Notes["greylist.skipped"]; got != "whitelisted sender" {
		t.Errorf("greylist.skipped = %v; want \"whitelisted sender\"", got)
	}
	// And nobody else: the same triplet from a plain client is greylisted.
	hookstest.Expect(t, h.Connect("192.0.2.10").Send("a@example.org", []string{"b@example.test"}, msg), 451)
}

// A store that cannot be reached defers the recipient (local error): it
// never lets mail through unchecked.
func TestStoreDown(t *testing.T) {
	h, _, _ := setup(t, "", "[state]\nbackend = \"redis\"\naddrs = [\"127.0.0.1:1\"]\ntimeout = \"200ms\"\n")
	var logs hookstest.LogBuffer
	h.Logger = logs.Logger()
	hookstest.Expect(t, h.Connect("192.0.2.10").Send("a@example.org", []string{"b@example.test"}, msg), 451, "4.3.0")
	if got := logs.String(); !strings.Contains(got, "greylist: state: redis") {
		t.Errorf("log %q; want the store's error", got)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{`delay = "100ms"`, `delay = 100ms: want a duration of at least "1s"`},
		{"delay = \"2h\"\nretry_window = \"1h\"", "retry_window = 1h0m0s: want a duration at least as long as delay"},
		{`lifetime = "1h"`, "lifetime = 1h0m0s: want a duration at least as long as retry_window"},
		{`auto_whitelist = -1`, "auto_whitelist = -1"},
		{`ipv4_prefix = 33`, "ipv4_prefix = 33: want 8 to 32"},
		{`ipv6_prefix = 8`, "ipv6_prefix = 8: want 16 to 128"},
		{`delay = "5 minutes"`, "delay"},
		{"[state]\nbackend = \"memcached\"", `backend = "memcached"`},
	} {
		hookstest.ExpectBuildError(t, "greylist", tc.settings, tc.want)
	}
}

func TestReadmeExample(t *testing.T) {
	p := hookstest.BuildFromReadme(t, "greylist", "README.md").(*greylist.Plugin)
	p.Close()
}

// BenchmarkRcpt measures one greylist decision per recipient: "known" is
// a triplet that passed (the steady state: one read), "new" a triplet
// seen for the first time (a read and a set-if-absent).
func BenchmarkRcpt(b *testing.B) {
	for _, backend := range []string{"bbolt", "redis"} {
		b.Run(backend, func(b *testing.B) {
			st := fmt.Sprintf("[state]\npath = %q\n", filepath.Join(b.TempDir(), "state.db"))
			if backend == "redis" {
				st = fmt.Sprintf("[state]\nbackend = \"redis\"\naddrs = [%q]\nprefix = \"b%d:\"\n", statetest.Redis(b), runs.Add(1))
			}
			p := hookstest.BuildAs[*greylist.Plugin](b, "greylist", "auto_whitelist = 0\n"+st)
			b.Cleanup(func() { p.Close() })
			ctx := context.Background()
			c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.10:4000"))
			tx := transaction.New(b.TempDir(), 0)
			tx.Sender = "alice@example.org"
			clk := &clock{t: time.Now()}
			p.SetClock(clk.now)
			if r := p.Rcpt(ctx, c, tx, "known@example.test"); r.Code != hooks.DenySoft {
				b.Fatalf("first attempt: %+v", r)
			}
			clk.add(greylist.DefaultDelay)
			if r := p.Rcpt(ctx, c, tx, "known@example.test"); r.Code != hooks.Declined {
				b.Fatalf("retry: %+v", r)
			}
			b.Run("known", func(b *testing.B) {
				for b.Loop() {
					if r := p.Rcpt(ctx, c, tx, "known@example.test"); r.Code != hooks.Declined {
						b.Fatalf("%+v", r)
					}
				}
			})
			b.Run("new", func(b *testing.B) {
				i := 0
				for b.Loop() {
					i++
					if r := p.Rcpt(ctx, c, tx, "r"+strconv.Itoa(i)+"@example.test"); r.Code != hooks.DenySoft {
						b.Fatalf("%+v", r)
					}
				}
			})
		})
	}
}

// TestDeferAtData: with defer_at = "data" greylist goes after rcptok:
// recipients rcptok refuses make no triplet, and DATA is deferred while
// any accepted recipient's triplet is new.
func TestDeferAtData(t *testing.T) {
	backends(t, func(t *testing.T, st string) {
		p := hookstest.BuildAs[*greylist.Plugin](t, "greylist", "defer_at = \"data\"\n"+st)
		clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
		p.SetClock(clk.now)
		rcptok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
		h := hookstest.New(t, hookstest.Plugin("rcptok", rcptok), hookstest.Plugin("greylist", p), hookstest.Queue())
		s := h.Connect("192.0.2.10")

		tr := s.SendAll("alice@example.org", []string{"bob@example.test", "x@elsewhere.example"}, msg)
		hookstest.Expect(t, tr.Rcpt[0], 250)
		hookstest.ExpectReply(t, tr.Rcpt[1], "550 5.7.1 relaying denied")
		hookstest.ExpectReply(t, tr.Data, "451 4.7.1 Greylisted: please try again in 300 seconds")
		// After the delay bob's triplet passes; carol's is new, so the
		// message waits for her too, and then goes to both.
		clk.add(5*time.Minute + time.Second)
		tr = s.SendAll("alice@example.org", []string{"bob@example.test", "carol@example.test"}, msg)
		hookstest.ExpectReply(t, tr.Data, "451 4.7.1 Greylisted: please try again in 300 seconds")
		clk.add(5*time.Minute + time.Second)
		hookstest.Expect(t, s.SendAll("alice@example.org", []string{"bob@example.test", "carol@example.test"}, msg).Data, 250)
		q := h.Queued()
		if len(q) != 1 || len(q[0].Recipients) != 2 {
			t.Fatalf("queued %+v; want one message to bob and carol", q)
		}
		if q[0].Notes["greylist.passed"] != 1 {
			t.Errorf("notes %v; want greylist.passed 1 (carol's retry; bob's passed before)", q[0].Notes)
		}
	})
	hookstest.ExpectBuildError(t, "greylist", `defer_at = "mail"`, `defer_at = "mail": want "rcpt" or "data"`)
}
