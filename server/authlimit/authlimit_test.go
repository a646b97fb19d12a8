package authlimit_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/logbuf"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/state/statetest"
)

// userHashKey is the store key of a user name's count, computed here
// the way the docs say: "auth:user:" and the hex of the first 16 bytes
// of the SHA-256 of the case-folded name.
func userHashKey(user string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(user)))
	return "auth:user:" + hex.EncodeToString(sum[:16])
}

// expectCount asserts the counter under key in the store.
func expectCount(t *testing.T, st state.Store, key, want string) {
	t.Helper()
	v, ok, err := st.Get(context.Background(), key)
	if err != nil || !ok || string(v) != want {
		t.Fatalf("store %s = %q, %v, %v; want %q", key, v, ok, err, want)
	}
}

func expectLimit(t *testing.T, l *authlimit.Limiter, ip, user string, want authlimit.Limit) {
	t.Helper()
	if got := l.Check(netip.MustParseAddr(ip), user); got != want {
		t.Fatalf("Check(%s, %q) = %v; want %v", ip, user, got, want)
	}
}

// TestLimiterInBolt: with a store the counts are in it, under
// "auth:ip:" and "auth:user:" keys: a limiter with an empty memory (a
// restarted smtpd) on the same file still refuses the IP and slows the
// user; a success clears the user's count in the store, not the IP's.
func TestLimiterInBolt(t *testing.T) {
	settings := state.Settings{Path: filepath.Join(t.TempDir(), "state.db")}
	st := statetest.Open(t, settings)
	l := &authlimit.Limiter{MaxFailures: 3, Store: st}
	ip := netip.MustParseAddr("2001:db8:1:2::7")
	for i := 1; i <= 3; i++ {
		if reached := l.Fail(ip, "Alice"); reached != (i == 3) {
			t.Fatalf("failure %d: reached = %v", i, reached)
		}
	}
	expectCount(t, st, "auth:ip:2001:db8:1:2::/64", "3")
	expectCount(t, st, userHashKey("alice"), "3")
	expectLimit(t, l, "2001:db8:1:2::1", "bob", authlimit.IPLimited)

	// A restart: the store is closed and opened again, the memory is new.
	st.Close()
	st = statetest.Open(t, settings)
	restarted := &authlimit.Limiter{MaxFailures: 3, Store: st}
	expectLimit(t, restarted, "2001:db8:1:2::ffff", "", authlimit.IPLimited)
	expectLimit(t, restarted, "192.0.2.1", "ALICE", authlimit.UserLimited)
	expectLimit(t, restarted, "192.0.2.1", "bob", authlimit.Allowed)

	restarted.Succeed("alice")
	if _, ok, err := st.Get(context.Background(), userHashKey("alice")); ok || err != nil {
		t.Fatalf("the user's count is still in the store after a success (ok %v, err %v)", ok, err)
	}
	expectLimit(t, restarted, "192.0.2.1", "alice", authlimit.Allowed)
	expectLimit(t, restarted, "2001:db8:1:2::1", "alice", authlimit.IPLimited)
}

// TestLimiterSharedInRedis: two limiters (two smtpd processes) on one
// Redis server add up their failures; the window runs from the first
// failure, after which the IP is let in again.
func TestLimiterSharedInRedis(t *testing.T) {
	addr := statetest.StartRedis(t)
	settings := state.Settings{Backend: state.Redis, Addrs: []string{addr}, Prefix: "authlimit-test:"}
	const window = 300 * time.Millisecond
	a := &authlimit.Limiter{MaxFailures: 4, Window: window, Store: statetest.Open(t, settings)}
	b := &authlimit.Limiter{MaxFailures: 4, Window: window, Store: statetest.Open(t, settings)}
	ip := netip.MustParseAddr("198.51.100.9")
	first := time.Now()
	a.Fail(ip, "carol")
	a.Fail(ip, "dave")
	b.Fail(ip, "erin")
	expectLimit(t, a, "198.51.100.9", "", authlimit.Allowed)
	if !b.Fail(ip, "frank") {
		t.Fatal("the fourth failure, the second on b, did not reach the limit of 4 shared with a")
	}
	expectLimit(t, a, "198.51.100.9", "", authlimit.IPLimited)
	expectLimit(t, b, "198.51.100.9", "", authlimit.IPLimited)
	expectCount(t, b.Store, "auth:ip:198.51.100.9", "4")

	deadline := time.Now().Add(5 * time.Second)
	for a.Check(ip, "") != authlimit.Allowed {
		if time.Now().After(deadline) {
			t.Fatalf("the IP is still refused 5s after a window of %v", window)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if since := time.Since(first); since < window {
		t.Fatalf("the IP was let in %v after its first failure, before the window of %v", since, window)
	}
}

// flakyStore is a real store that can be made to fail, as Redis does when
// it goes down.
type flakyStore struct {
	state.Store
	down   atomic.Bool
	failed atomic.Int32 // calls answered with an error
}

var errDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (f *flakyStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if f.down.Load() {
		f.failed.Add(1)
		return nil, false, errDown
	}
	return f.Store.Get(ctx, key)
}

func (f *flakyStore) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	if f.down.Load() {
		f.failed.Add(1)
		return 0, errDown
	}
	return f.Store.Incr(ctx, key, delta, ttl)
}

func (f *flakyStore) Delete(ctx context.Context, key string) error {
	if f.down.Load() {
		f.failed.Add(1)
		return errDown
	}
	return f.Store.Delete(ctx, key)
}

// TestLimiterStoreErrorFallsBackToMemory: while the store fails, the
// failures are counted and checked in the process's memory (which counted
// the ones before the outage too): guessing is still limited, nobody is
// locked out by the outage itself, the store is not asked again (and
// waited for) within StoreRetry, and the error is logged once, not per
// attempt; the store's return is logged and its counts used again.
func TestLimiterStoreErrorFallsBackToMemory(t *testing.T) {
	var logs logbuf.Buffer
	st := &flakyStore{Store: statetest.Open(t, state.Settings{Path: filepath.Join(t.TempDir(), "state.db")})}
	const retry = 500 * time.Millisecond
	l := &authlimit.Limiter{MaxFailures: 5, Store: st, Logger: slog.New(slog.NewTextHandler(&logs, nil)), StoreRetry: retry}
	ip := netip.MustParseAddr("203.0.113.5")
	for range 3 {
		l.Fail(ip, "grace")
	}
	st.down.Store(true)
	expectLimit(t, l, "203.0.113.5", "grace", authlimit.Allowed)
	expectLimit(t, l, "203.0.113.6", "heidi", authlimit.Allowed)
	if l.Fail(ip, "grace") {
		t.Fatal("the fourth failure reached the limit of 5")
	}
	if !l.Fail(ip, "grace") {
		t.Fatal("the fifth failure, during the outage, did not reach the limit: guessing is unlimited while the store is down")
	}
	expectLimit(t, l, "203.0.113.5", "", authlimit.IPLimited)
	expectLimit(t, l, "203.0.113.6", "grace", authlimit.UserLimited)
	l.Succeed("heidi")
	if n := st.failed.Load(); n != 1 {
		t.Errorf("the failing store was asked %d times within StoreRetry; want once", n)
	}
	log := logs.String()
	if n := strings.Count(log, "level=ERROR"); n != 1 ||
		!strings.Contains(log, `msg="AUTH failure counts: the state store failed; counting in this process's memory until it answers" err="dial tcp 127.0.0.1:6379: connect: connection refused"`) {
		t.Fatalf("want the store error logged once, got %d ERROR lines:\n%s", n, log)
	}

	st.down.Store(false)
	// After StoreRetry the store is asked again: it has the three
	// failures before the outage.
	deadline := time.Now().Add(5 * time.Second)
	for l.Check(ip, "") != authlimit.Allowed {
		if time.Now().After(deadline) {
			t.Fatalf("the limiter still counts in memory 5s after the store came back (StoreRetry %v)", retry)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="AUTH failure counts: the state store answers again"`) {
		t.Fatalf("the store's return is not logged:\n%s", logs.String())
	}
	expectCount(t, st, "auth:ip:203.0.113.5", "3")
}

// TestLimiterGroupsIPv6By64: one IPv6 host holds a whole /64; an
// IPv4-mapped address is its IPv4 one.
func TestLimiterGroupsIPv6By64(t *testing.T) {
	l := &authlimit.Limiter{}
	for i := 0; i < 5; i++ {
		l.Fail(netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1)), "")
		l.Fail(netip.MustParseAddr("::ffff:192.0.2.7"), "")
	}
	for ip, want := range map[string]authlimit.Limit{
		"2001:db8:1:2:ffff:ffff:ffff:ffff": authlimit.IPLimited,
		"2001:db8:1:3::1":                  authlimit.Allowed,
		"192.0.2.7":                        authlimit.IPLimited,
		"::ffff:192.0.2.7":                 authlimit.IPLimited,
		"192.0.2.8":                        authlimit.Allowed,
	} {
		if got := l.Check(netip.MustParseAddr(ip), "someone"); got != want {
			t.Errorf("Check(%s) = %v, want %v", ip, got, want)
		}
	}
}

// TestLimiterIsBounded: a table full of live windows drops the oldest;
// it never grows past MaxTracked.
func TestLimiterIsBounded(t *testing.T) {
	l := &authlimit.Limiter{MaxTracked: 100}
	ip := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 5; i++ {
		l.Fail(ip, "victim")
	}
	if l.Check(netip.MustParseAddr("192.0.2.2"), "victim") != authlimit.UserLimited {
		t.Fatal("five failures did not limit the user")
	}
	for i := 0; i < 10_000; i++ {
		l.Fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), fmt.Sprint("user", i))
		if n := l.Tracked(); n > 100 {
			t.Fatalf("tracking %d keys, over MaxTracked 100", n)
		}
	}
	if l.Check(ip, "victim") != authlimit.Allowed {
		t.Error("the oldest windows were not the ones dropped")
	}
	last := netip.AddrFrom4([4]byte{10, 0, 39, 15}) // i = 9999
	for i := 0; i < 4; i++ {
		l.Fail(last, "")
	}
	if l.Check(last, "") != authlimit.IPLimited {
		t.Error("the newest window was dropped")
	}
}
