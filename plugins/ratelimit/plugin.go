// Package ratelimit caps how many messages one user, or one client IP, may
// send in a sliding time window: Valvula's mod-mquota and the rate limits
// of Haraka's limit plugin. It counts at the mail hook, one message per
// MAIL FROM, and defers the MAIL that would go over the limit with 450
// 4.7.1, so the client's queue retries it later.
//
// Counters live in the process's memory: they are per instance (listeners
// that name the same instance share them), and start from zero when smtpd
// restarts or reloads its configuration.
package ratelimit

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("ratelimit", New) }

// Settings are the keys of a [plugins.ratelimit] table.
type Settings struct {
	// Max is the most messages one key may send per window. Required.
	Max int `toml:"max"`
	// Window is the length of the sliding window ("1h", the default).
	Window string `toml:"window"`
	// By is what is counted: "user" (the default: the authenticated login,
	// or the client's IP address for a client that did not authenticate)
	// or "ip" (the client's IP address, logged in or not).
	By string `toml:"by"`
}

// NoteCount is the transaction note holding how many messages the key has
// sent in the window, this one included.
var NoteCount = notes.NewKey[int]("ratelimit.count")

// Plugin is a ratelimit instance. Its counters are guarded by mu; it is
// safe for concurrent use.
type Plugin struct {
	max    int
	window time.Duration
	byIP   bool
	result string // the refusal's text with %s for the key

	// now is the clock; tests replace it (export_test.go). Times are kept
	// as offsets from base, which are monotonic when the clock is.
	now  func() time.Time
	base time.Time

	mu    sync.Mutex
	keys  map[string]*counter
	swept time.Duration // when keys was last pruned
}

// counter holds the times (offsets from base) of the messages one key sent
// in the last window, oldest first: at most max of them.
type counter struct {
	sent []time.Duration
}

var _ hooks.Mail = (*Plugin)(nil)

// New builds a ratelimit instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Window: "1h", By: "user"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	switch {
	case s.Max == 0:
		return nil, fmt.Errorf("max is missing or zero: set how many messages one user may send per window, e.g. max = 100")
	case s.Max < 0:
		return nil, fmt.Errorf("max = %d: want at least 1", s.Max)
	}
	window, err := time.ParseDuration(strings.TrimSpace(s.Window))
	if err != nil {
		return nil, fmt.Errorf("window = %q: not a duration: write it like \"1h\", \"30m\" or \"24h\"", s.Window)
	}
	if window < time.Second {
		return nil, fmt.Errorf("window = %q: want at least \"1s\"", s.Window)
	}
	p := &Plugin{max: s.Max, window: window, now: time.Now, keys: map[string]*counter{}}
	switch s.By {
	case "user":
	case "ip":
		p.byIP = true
	default:
		return nil, fmt.Errorf("by = %q: want \"user\" or \"ip\"", s.By)
	}
	p.base = p.now()
	p.result = "Rate limit exceeded for %s: " + strconv.Itoa(s.Max) + " messages per " + formatWindow(window) + "; try again later"
	return p, nil
}

// formatWindow writes a duration the way it is written in the config:
// "1h" rather than Go's "1h0m0s".
func formatWindow(d time.Duration) string {
	s := d.String()
	s, _ = strings.CutSuffix(s, "m0s")
	if !strings.HasSuffix(s, "s") {
		s += "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}

// key is what the connection is counted under, and the name the refusal
// shows.
func (p *Plugin) key(c *connection.Connection) (key, shown string) {
	if !p.byIP && c.AuthUser != "" {
		return "user:" + userKey(c.AuthUser), c.AuthUser
	}
	ip := c.RemoteIP()
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return "ip:" + ip.String(), ip.String()
}

// userKey is the form of a login that is counted: ASCII letters in lower
// case and the domain, if any, in mailaddr's canonical form (A-labels). An
// auth backend may take "Alice@EXAMPLE.test" for alice@example.test
// (Dovecot lowercases logins by default); counting each spelling apart
// would multiply the limit. A domain IDNA refuses is kept as written,
// lowered (ASCII only): it is no spelling of a valid domain.
func userKey(user string) string {
	local, d, ok := mailaddr.Split(user)
	if !ok {
		return mailaddr.LowerASCII(user)
	}
	if canon, ok := mailaddr.CanonicalDomain(d); ok {
		d = canon
	}
	return mailaddr.LowerASCII(local + "@" + d)
}

// Mail counts the message, or defers it when the key has sent max
// messages in the last window. A deferred MAIL does not count.
func (p *Plugin) Mail(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	key, shown := p.key(c)
	n, ok := p.take(key)
	if !ok {
		return hooks.Result{
			Code:      hooks.DenySoft,
			ReplyCode: 450,
			Enhanced:  [3]int{4, 7, 1},
			Msg:       fmt.Sprintf(p.result, shown),
		}
	}
	NoteCount.Set(&tx.Notes, n)
	return hooks.Result{}
}

// take records one message for key unless it already has max in the
// window, and returns how many it has with this one.
func (p *Plugin) take(key string) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now().Sub(p.base) // read under the lock: times stay in order
	if now-p.swept >= p.window || now < p.swept {
		p.sweep(now)
	}
	cnt := p.keys[key]
	if cnt == nil {
		cnt = &counter{}
		p.keys[key] = cnt
	}
	cnt.expire(now - p.window)
	if len(cnt.sent) >= p.max {
		return len(cnt.sent), false
	}
	cnt.sent = append(cnt.sent, now)
	return len(cnt.sent), true
}

// expire forgets the messages sent at or before cutoff.
func (c *counter) expire(cutoff time.Duration) {
	i, _ := slices.BinarySearch(c.sent, cutoff+1)
	if i == 0 {
		return
	}
	c.sent = c.sent[i:]
	if cap(c.sent) > 32 && len(c.sent) < cap(c.sent)/4 {
		c.sent = slices.Clone(c.sent) // give back the array a burst left
	}
}

// sweep drops the keys with no message in the window, so memory holds
// only the keys active in the last window or two. It runs at most once per
// window, from take; p.mu is held.
func (p *Plugin) sweep(now time.Duration) {
	cutoff := now - p.window
	for k, c := range p.keys {
		if n := len(c.sent); n == 0 || c.sent[n-1] <= cutoff {
			delete(p.keys, k)
		}
	}
	p.swept = now
}
