package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/server"
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

func expectLimit(t *testing.T, l *server.AuthLimiter, ip, user string, want server.AuthLimit) {
	t.Helper()
	if got := l.Check(netip.MustParseAddr(ip), user); got != want {
		t.Fatalf("Check(%s, %q) = %v; want %v", ip, user, got, want)
	}
}

// TestAuthLimiterInBolt: with a store the counts are in it, under
// "auth:ip:" and "auth:user:" keys: a limiter with an empty memory (a
// restarted smtpd) on the same file still refuses the IP and slows the
// user; a success clears the user's count in the store, not the IP's.
func TestAuthLimiterInBolt(t *testing.T) {
	settings := state.Settings{Path: filepath.Join(t.TempDir(), "state.db")}
	st := statetest.Open(t, settings)
	l := &server.AuthLimiter{MaxFailures: 3, Store: st}
	ip := netip.MustParseAddr("2001:db8:1:2::7")
	for i := 1; i <= 3; i++ {
		if reached := l.Fail(ip, "Alice"); reached != (i == 3) {
			t.Fatalf("failure %d: reached = %v", i, reached)
		}
	}
	expectCount(t, st, "auth:ip:2001:db8:1:2::/64", "3")
	expectCount(t, st, userHashKey("alice"), "3")
	expectLimit(t, l, "2001:db8:1:2::1", "bob", server.AuthIPLimited)

	// A restart: the store is closed and opened again, the memory is new.
	st.Close()
	st = statetest.Open(t, settings)
	restarted := &server.AuthLimiter{MaxFailures: 3, Store: st}
	expectLimit(t, restarted, "2001:db8:1:2::ffff", "", server.AuthIPLimited)
	expectLimit(t, restarted, "192.0.2.1", "ALICE", server.AuthUserLimited)
	expectLimit(t, restarted, "192.0.2.1", "bob", server.AuthAllowed)

	restarted.Succeed("alice")
	if _, ok, err := st.Get(context.Background(), userHashKey("alice")); ok || err != nil {
		t.Fatalf("the user's count is still in the store after a success (ok %v, err %v)", ok, err)
	}
	expectLimit(t, restarted, "192.0.2.1", "alice", server.AuthAllowed)
	expectLimit(t, restarted, "2001:db8:1:2::1", "alice", server.AuthIPLimited)
}

// TestAuthLimiterSharedInRedis: two limiters (two smtpd processes) on one
// Redis server add up their failures; the window runs from the first
// failure, after which the IP is let in again.
func TestAuthLimiterSharedInRedis(t *testing.T) {
	addr := statetest.StartRedis(t)
	settings := state.Settings{Backend: state.Redis, Addrs: []string{addr}, Prefix: "authlimit-test:"}
	const window = 300 * time.Millisecond
	a := &server.AuthLimiter{MaxFailures: 4, Window: window, Store: statetest.Open(t, settings)}
	b := &server.AuthLimiter{MaxFailures: 4, Window: window, Store: statetest.Open(t, settings)}
	ip := netip.MustParseAddr("198.51.100.9")
	first := time.Now()
	a.Fail(ip, "carol")
	a.Fail(ip, "dave")
	b.Fail(ip, "erin")
	expectLimit(t, a, "198.51.100.9", "", server.AuthAllowed)
	if !b.Fail(ip, "frank") {
		t.Fatal("the fourth failure, the second on b, did not reach the limit of 4 shared with a")
	}
	expectLimit(t, a, "198.51.100.9", "", server.AuthIPLimited)
	expectLimit(t, b, "198.51.100.9", "", server.AuthIPLimited)
	expectCount(t, b.Store, "auth:ip:198.51.100.9", "4")

	deadline := time.Now().Add(5 * time.Second)
	for a.Check(ip, "") != server.AuthAllowed {
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

// TestAuthLimiterStoreErrorFallsBackToMemory: while the store fails, the
// failures are counted and checked in the process's memory (which counted
// the ones before the outage too): guessing is still limited, nobody is
// locked out by the outage itself, the store is not asked again (and
// waited for) within StoreRetry, and the error is logged once, not per
// attempt; the store's return is logged and its counts used again.
func TestAuthLimiterStoreErrorFallsBackToMemory(t *testing.T) {
	var logs hookstest.LogBuffer
	st := &flakyStore{Store: statetest.Open(t, state.Settings{Path: filepath.Join(t.TempDir(), "state.db")})}
	const retry = 500 * time.Millisecond
	l := &server.AuthLimiter{MaxFailures: 5, Store: st, Logger: logs.Logger(), StoreRetry: retry}
	ip := netip.MustParseAddr("203.0.113.5")
	for range 3 {
		l.Fail(ip, "grace")
	}
	st.down.Store(true)
	expectLimit(t, l, "203.0.113.5", "grace", server.AuthAllowed)
	expectLimit(t, l, "203.0.113.6", "heidi", server.AuthAllowed)
	if l.Fail(ip, "grace") {
		t.Fatal("the fourth failure reached the limit of 5")
	}
	if !l.Fail(ip, "grace") {
		t.Fatal("the fifth failure, during the outage, did not reach the limit: guessing is unlimited while the store is down")
	}
	expectLimit(t, l, "203.0.113.5", "", server.AuthIPLimited)
	expectLimit(t, l, "203.0.113.6", "grace", server.AuthUserLimited)
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
	for l.Check(ip, "") != server.AuthAllowed {
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
