// Package authlimit is the brute-force limiter of SMTP AUTH: it counts
// failed attempts per client IP and per user name within a window, in
// memory or in a shared state store, and says whether the next attempt
// may be checked, must wait, or is refused unchecked.
package authlimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/fixedwindow"
	"github.com/sluice-mta/sluice/state"
)

// Limiter counts failed AUTH attempts per client IP and per user name
// within a window, against password guessing. One limiter is shared by
// every listener of a server, so a client cannot spread its guesses over
// ports.
//
// The two counts are enforced differently, so that nobody can lock a user
// out by guessing wrong in the user's name (Postfix's anvil and Dovecot's
// auth penalty likewise act on the client, never on the account):
//
//   - a client IP past the limit (IPv6 counted per /64, IPv4 and
//     IPv4-mapped IPv6 per address) is refused without its password being
//     checked: after Delay it gets 535 and the connection is closed.
//   - a user name past the limit (case-insensitive) is slowed down: every
//     AUTH for it, from any IP, waits Delay and is then checked. The right
//     password still succeeds; a wrong one gets 535 and the connection is
//     closed, so a guesser gets one guess per connection, each costing the
//     delay.
//
// A successful AUTH clears its user name's count, not its IP's (a client
// that fails for many users and knows one password must not reset its
// count with it).
//
// The counts are kept in this process's memory, or, when Store is set, in
// a state store (package state): with Redis, several smtpd processes
// behind one load balancer share them; with the bbolt file they survive a
// restart. The store's keys are "auth:ip:<address or /64>" and
// "auth:user:<hex of the name's hash>", counters that expire Window after
// their first failure. The memory counts are kept beside the store's: when
// the store fails (Redis is down), the attempt is counted and checked in
// memory, and so are the attempts of the next StoreRetry, so that an
// outage neither locks anybody out, nor lets guessing go on unlimited, nor
// makes every AUTH wait for the store's timeout; the error is logged once
// per outage, not per attempt.
type Limiter struct {
	// MaxFailures is how many failures a client IP or a user name may have
	// within Window: the failure that reaches it gets 535 after Delay and
	// the connection is closed; after it the IP is refused and the user
	// slowed until Window has passed since the first failure. Defaults 5
	// and 15 minutes.
	MaxFailures int
	Window      time.Duration
	// Delay is how long a refused client waits for its 535, and how long
	// every AUTH for a user past the limit waits to be checked. Default 2s.
	Delay time.Duration
	// MaxTracked caps how many IPs and user names are counted at once;
	// default 100,000 (about 15 MB at most). When the table is full of
	// unexpired windows, the oldest window is dropped to make room: the
	// newest (the guessing that is going on now) stays counted, where
	// refusing to track new keys would let a client that filled the table
	// guess from any new address without limit.
	MaxTracked int
	// Store, when not nil, keeps the counts, shared by every process that
	// uses it; the limiter does not close it. Nil: memory only.
	Store state.Store
	// Logger logs the store's errors; nil is slog.Default().
	Logger *slog.Logger
	// StoreRetry is how long after a store error the limiter counts in
	// memory only, without asking the store (a Redis server that is down
	// would make every AUTH wait for its timeout). Default 5s.
	StoreRetry time.Duration

	// storeDown is set from the store's first error to its next answer,
	// downLogged when that outage was logged; lastLogged is when a store
	// error was last logged.
	storeMu    sync.Mutex
	storeDown  bool
	downLogged bool
	lastLogged time.Time
	retryAt    time.Time // while storeDown, the store is skipped until then

	mu       sync.Mutex
	failures fixedwindow.Counter[string] // by ipKey and userKey
}

// Limit is what the limiter lets an AUTH attempt do.
type Limit int

const (
	// Allowed: check the credentials as usual.
	Allowed Limit = iota
	// UserLimited: the user name is past the limit: wait Delay, then
	// check; a wrong password gets the lockout 535 and the connection is
	// closed at once.
	UserLimited
	// IPLimited: the client IP is past the limit: wait Delay, answer
	// the lockout 535 and close, without checking the credentials.
	IPLimited
)

const defaultMaxTracked = 100_000

// storeTimeout bounds one call to the store (Redis has its own timeout,
// [state] timeout, below it).
const storeTimeout = 5 * time.Second

// storeLogEvery is the least time between two logged store errors, when
// the store keeps failing and answering in turn.
const storeLogEvery = time.Minute

func (l *Limiter) settings() (max int, win time.Duration, tracked int) {
	max, win, tracked = l.MaxFailures, l.Window, l.MaxTracked
	if max <= 0 {
		max = 5
	}
	if win <= 0 {
		win = 15 * time.Minute
	}
	if tracked <= 0 {
		tracked = defaultMaxTracked
	}
	return max, win, tracked
}

// ipKey groups an IPv6 client by its /64 (one host usually holds a whole
// /64), an IPv4 client, mapped or not, by its address.
func ipKey(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return "auth:ip:" + p.String()
	}
	return "auth:ip:" + ip.String()
}

// userKey is the user name, case-folded and hashed: a key's size is fixed
// however long the name a client sends.
func userKey(user string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(user)))
	return "auth:user:" + hex.EncodeToString(sum[:16])
}

// Check says what an AUTH attempt from ip for user may do now. The IP's
// limit comes first.
func (l *Limiter) Check(ip netip.Addr, user string) Limit {
	max, win, _ := l.settings()
	switch {
	case l.isOver(ipKey(ip), max, win):
		return IPLimited
	case user != "" && l.isOver(userKey(user), max, win):
		return UserLimited
	}
	return Allowed
}

// isOver reports whether key has used up its failures: in the store when
// there is one and it answers, else in memory.
func (l *Limiter) isOver(key string, max int, win time.Duration) bool {
	if l.useStore() {
		n, err := l.storeGet(key)
		l.storeResult(err)
		if err == nil {
			return n >= int64(max)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures.Count(key, time.Now(), win) >= max
}

// storeGet reads key's counter from the store; a missing key is 0.
func (l *Limiter) storeGet(key string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	v, ok, err := l.Store.Get(ctx, key)
	if err != nil || !ok {
		return 0, err
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s holds %q, not a count", key, v)
	}
	return n, nil
}

// Fail records a failed attempt from ip for user (an empty user counts
// for the IP only) and reports whether the IP or the user name has now
// reached the limit.
func (l *Limiter) Fail(ip netip.Addr, user string) bool {
	max, win, tracked := l.settings()
	keys := []string{ipKey(ip)}
	if user != "" {
		keys = append(keys, userKey(user))
	}
	counts := l.failMemory(keys, win, tracked)
	reached := false
	for i, k := range keys {
		n := int64(counts[i])
		if l.useStore() {
			ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
			sn, err := l.Store.Incr(ctx, k, 1, win)
			cancel()
			l.storeResult(err)
			if err == nil {
				n = sn
			}
		}
		if n >= int64(max) {
			reached = true
		}
	}
	return reached
}

// failMemory counts a failure for each key in memory and returns the
// counts.
func (l *Limiter) failMemory(keys []string, win time.Duration, tracked int) []int {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := make([]int, len(keys))
	for i, k := range keys {
		counts[i] = l.failures.Add(k, now, win, tracked)
	}
	return counts
}

// Succeed clears user's count after a successful AUTH. The IP's count
// stays.
func (l *Limiter) Succeed(user string) {
	if user == "" {
		return
	}
	key := userKey(user)
	if l.useStore() {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		err := l.Store.Delete(ctx, key)
		cancel()
		l.storeResult(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures.Forget(key)
}

// useStore reports whether to ask the store: there is one, and it has not
// failed within StoreRetry.
func (l *Limiter) useStore() bool {
	if l.Store == nil {
		return false
	}
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	return !l.storeDown || !time.Now().Before(l.retryAt)
}

// storeResult logs a store error once per outage (and at most once a
// minute), and the store's first answer after one.
func (l *Limiter) storeResult(err error) {
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	log := l.Logger
	if log == nil {
		log = slog.Default()
	}
	switch {
	case err == nil && l.storeDown:
		l.storeDown = false
		if l.downLogged {
			log.Info("AUTH failure counts: the state store answers again")
		}
	case err != nil && l.storeDown:
		l.retryAt = time.Now().Add(l.storeRetry())
	case err != nil && !l.storeDown:
		l.storeDown = true
		l.retryAt = time.Now().Add(l.storeRetry())
		l.downLogged = false
		if now := time.Now(); l.lastLogged.IsZero() || now.Sub(l.lastLogged) >= storeLogEvery {
			l.lastLogged, l.downLogged = now, true
			log.Error("AUTH failure counts: the state store failed; counting in this process's memory until it answers", "err", err)
		}
	}
}

// Tracked returns how many IPs and user names are being counted in
// memory.
func (l *Limiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures.Len()
}

func (l *Limiter) storeRetry() time.Duration {
	if l.StoreRetry <= 0 {
		return 5 * time.Second
	}
	return l.StoreRetry
}

// EffectiveDelay is Delay, or its default of 2s when Delay is not set:
// how long a limited attempt waits.
func (l *Limiter) EffectiveDelay() time.Duration {
	if l.Delay <= 0 {
		return 2 * time.Second
	}
	return l.Delay
}
