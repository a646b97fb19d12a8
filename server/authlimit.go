package server

import (
	"container/list"
	"crypto/sha256"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// AuthLimiter counts failed AUTH attempts per client IP and per user name
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
type AuthLimiter struct {
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

	mu      sync.Mutex
	windows map[string]*list.Element // of *failWindow, in order
	order   list.List                // oldest window first: start never decreases
}

type failWindow struct {
	key   string
	start time.Time
	n     int
}

// AuthLimit is what the limiter lets an AUTH attempt do.
type AuthLimit int

const (
	// AuthAllowed: check the credentials as usual.
	AuthAllowed AuthLimit = iota
	// AuthUserLimited: the user name is past the limit: wait Delay, then
	// check; a wrong password gets the lockout 535 and the connection is
	// closed at once.
	AuthUserLimited
	// AuthIPLimited: the client IP is past the limit: wait Delay, answer
	// the lockout 535 and close, without checking the credentials.
	AuthIPLimited
)

const defaultMaxTracked = 100_000

func (l *AuthLimiter) settings() (max int, win time.Duration, tracked int) {
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
		return "ip " + p.String()
	}
	return "ip " + ip.String()
}

// userKey is the user name, case-folded and hashed: a key's size is fixed
// however long the name a client sends.
func userKey(user string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(user)))
	return "user " + string(sum[:16])
}

// over reports whether key has used up its failures. l.mu is held.
func (l *AuthLimiter) over(key string, now time.Time, max int, win time.Duration) bool {
	e := l.windows[key]
	if e == nil {
		return false
	}
	w := e.Value.(*failWindow)
	return now.Sub(w.start) < win && w.n >= max
}

// Check says what an AUTH attempt from ip for user may do now. The IP's
// limit comes first.
func (l *AuthLimiter) Check(ip netip.Addr, user string) AuthLimit {
	max, win, _ := l.settings()
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.over(ipKey(ip), now, max, win):
		return AuthIPLimited
	case user != "" && l.over(userKey(user), now, max, win):
		return AuthUserLimited
	}
	return AuthAllowed
}

// Fail records a failed attempt from ip for user (an empty user counts
// for the IP only) and reports whether the IP or the user name has now
// reached the limit.
func (l *AuthLimiter) Fail(ip netip.Addr, user string) bool {
	max, win, tracked := l.settings()
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windows == nil {
		l.windows = map[string]*list.Element{}
	}
	// Windows are in the order they started: the expired ones are at the
	// front.
	for e := l.order.Front(); e != nil && now.Sub(e.Value.(*failWindow).start) >= win; e = l.order.Front() {
		l.drop(e)
	}
	keys := [2]string{ipKey(ip), ""}
	if user != "" {
		keys[1] = userKey(user)
	}
	reached := false
	for _, k := range keys {
		if k == "" {
			continue
		}
		e := l.windows[k]
		if e == nil {
			for len(l.windows) >= tracked {
				l.drop(l.order.Front())
			}
			e = l.order.PushBack(&failWindow{key: k, start: now})
			l.windows[k] = e
		}
		w := e.Value.(*failWindow)
		w.n++
		if w.n >= max {
			reached = true
		}
	}
	return reached
}

// Succeed clears user's count after a successful AUTH. The IP's count
// stays.
func (l *AuthLimiter) Succeed(user string) {
	if user == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.windows[userKey(user)]; e != nil {
		l.drop(e)
	}
}

// Tracked returns how many IPs and user names are being counted.
func (l *AuthLimiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.windows)
}

// drop forgets one window. l.mu is held.
func (l *AuthLimiter) drop(e *list.Element) {
	delete(l.windows, e.Value.(*failWindow).key)
	l.order.Remove(e)
}

func (l *AuthLimiter) delay() time.Duration {
	if l.Delay <= 0 {
		return 2 * time.Second
	}
	return l.Delay
}
