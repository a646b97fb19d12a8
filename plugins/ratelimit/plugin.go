// Package ratelimit caps how many messages, or how many recipients, one
// user, client IP, sender or sender domain may send in a sliding time
// window, with several limits (and windows) at once: Valvula's mod-mquota
// and the rate limits of Haraka's limit plugin (rate_rcpt_host,
// rate_rcpt_sender). Messages are counted at the mail hook, one per MAIL
// FROM; recipients at the rcpt_ok hook, one per accepted RCPT TO. The
// MAIL or RCPT that would go over a limit is deferred with 450 4.7.1, so
// the client's queue retries it later.
//
// Counters live in the state store (package state): the embedded bbolt
// file under data_dir by default, so that they survive a restart, or
// Redis, so that several smtpd processes behind one load balancer share
// them. Each window is counted in fixed slots of the window's length; the
// count over the last window is the current slot's count plus the share
// of the previous slot's that is still inside the window (the sliding
// window estimate of Cloudflare's and nginx's limiters). Counters are
// atomic increments, never read-modify-write.
package ratelimit

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("ratelimit", New) }

// Settings are the keys of a [plugins.ratelimit] table: one limit written
// with max, window and by, or several in limits (not both).
type Settings struct {
	// Max is the most messages one key may send per window.
	Max int `toml:"max"`
	// Window is the length of the sliding window ("1h", the default).
	Window string `toml:"window"`
	// By is what is counted; see Limit.By. Default "user".
	By string `toml:"by"`
	// Limits are several limits, each with its own key, count and window;
	// a message or recipient must fit in all of them.
	Limits []Limit `toml:"limits"`
	// IPv6Prefix groups IPv6 clients by this prefix length when a limit
	// counts by IP address (one host usually holds a whole /64). Default
	// 64; 128 counts each address apart.
	IPv6Prefix int `toml:"ipv6_prefix"`
	// State is the store, from the top-level [state] table.
	State state.Settings `toml:"state"`
}

// Limit is one entry of limits.
type Limit struct {
	// By is what is counted: "user" (the authenticated login, or the
	// client's IP address for a client that did not authenticate), "ip"
	// (the client's IP address, logged in or not), "sender" (the MAIL FROM
	// address) or "sender_domain" (its domain). The null sender <> is not
	// counted by "sender" nor "sender_domain".
	By string `toml:"by"`
	// Count is "messages" (the default: one per MAIL FROM) or
	// "recipients" (one per accepted RCPT TO).
	Count string `toml:"count"`
	// Max is the most messages or recipients per window. Required.
	Max int `toml:"max"`
	// Window is the window's length. Default "1h".
	Window string `toml:"window"`
}

// NoteCount is the transaction note holding how many messages the key of
// the first message limit has sent in its window, this one included
// (the sliding estimate, rounded up).
var NoteCount = notes.NewKey[int]("ratelimit.count")

// What a limit counts by.
const (
	byUser         = "user"
	byIP           = "ip"
	bySender       = "sender"
	bySenderDomain = "sender_domain"
)

// What a limit counts.
const (
	countMessages   = "messages"
	countRecipients = "recipients"
)

// limit is one built limit.
type limit struct {
	by         string
	recipients bool
	max        int64
	window     time.Duration
	name       string // the key prefix: by, count and window
	text       string // the refusal's text with %s for the key shown
}

// Plugin is a ratelimit instance. Its counters are in the store; it is
// safe for concurrent use.
type Plugin struct {
	limits     []limit
	messages   bool // some limit counts messages
	recipients bool // some limit counts recipients
	v6bits     int
	store      state.Store
	instance   string
	log        *slog.Logger
	// now is the clock; tests replace it (export_test.go).
	now func() time.Time
}

var (
	_ hooks.Mail          = (*Plugin)(nil)
	_ hooks.Rcpt          = (*Plugin)(nil)
	_ hooks.RcptOK        = (*Plugin)(nil)
	_ hooks.InstanceNamer = (*Plugin)(nil)
)

// New builds a ratelimit instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{IPv6Prefix: 64}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.IPv6Prefix < 16 || s.IPv6Prefix > 128 {
		return nil, fmt.Errorf("ipv6_prefix = %d: want 16 to 128 (64 is usual)", s.IPv6Prefix)
	}
	specs := s.Limits
	if len(specs) > 0 {
		if s.Max != 0 || s.Window != "" || s.By != "" {
			return nil, fmt.Errorf("set max, window and by for one limit, or limits for several, not both")
		}
	} else {
		if s.Max == 0 {
			return nil, fmt.Errorf("max is missing or zero: set how many messages one user may send per window, e.g. max = 100 (or several limits with limits = [...])")
		}
		specs = []Limit{{By: s.By, Max: s.Max, Window: s.Window}}
	}
	p := &Plugin{v6bits: s.IPv6Prefix, instance: "ratelimit", log: slog.Default(), now: time.Now}
	for i, spec := range specs {
		l, err := buildLimit(spec)
		if err != nil {
			if len(s.Limits) > 0 {
				return nil, fmt.Errorf("limits[%d]: %w", i, err)
			}
			return nil, err
		}
		p.limits = append(p.limits, l)
		p.messages = p.messages || !l.recipients
		p.recipients = p.recipients || l.recipients
	}
	st, err := s.State.Open()
	if err != nil {
		return nil, err
	}
	p.store = st
	return p, nil
}

// buildLimit checks one limit's settings and fills in the defaults.
func buildLimit(s Limit) (limit, error) {
	if s.Window == "" {
		s.Window = "1h"
	}
	if s.By == "" {
		s.By = byUser
	}
	if s.Count == "" {
		s.Count = countMessages
	}
	switch {
	case s.Max == 0:
		return limit{}, fmt.Errorf("max is missing or zero: set how many %s one key may send per window, e.g. max = 100", s.Count)
	case s.Max < 0:
		return limit{}, fmt.Errorf("max = %d: want at least 1", s.Max)
	}
	window, err := time.ParseDuration(strings.TrimSpace(s.Window))
	if err != nil {
		return limit{}, fmt.Errorf("window = %q: not a duration: write it like \"1h\", \"30m\" or \"24h\"", s.Window)
	}
	if window < time.Second {
		return limit{}, fmt.Errorf("window = %q: want at least \"1s\"", s.Window)
	}
	switch s.By {
	case byUser, byIP, bySender, bySenderDomain:
	default:
		return limit{}, fmt.Errorf("by = %q: want \"user\", \"ip\", \"sender\" or \"sender_domain\"", s.By)
	}
	if s.Count != countMessages && s.Count != countRecipients {
		return limit{}, fmt.Errorf("count = %q: want \"messages\" or \"recipients\"", s.Count)
	}
	shown := formatWindow(window)
	return limit{
		by: s.By, recipients: s.Count == countRecipients, max: int64(s.Max), window: window,
		name: s.By + ":" + s.Count + ":" + strconv.FormatInt(int64(window/time.Millisecond), 10),
		text: "Rate limit exceeded for %s: " + strconv.Itoa(s.Max) + " " + s.Count + " per " + shown + "; try again later",
	}, nil
}

// SetInstanceName keeps each instance's counters apart in a shared store.
func (p *Plugin) SetInstanceName(name string) { p.instance = name }

// Close releases the plugin's handle of the store.
func (p *Plugin) Close() error { return p.store.Close() }

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

// key is what a limit counts the transaction under, and the name the
// refusal shows; ok is false when the limit does not apply (the null
// sender has no sender to count by).
func (p *Plugin) key(l *limit, c *connection.Connection, sender string) (key, shown string, ok bool) {
	switch l.by {
	case bySender, bySenderDomain:
		sender = strings.TrimSuffix(strings.TrimPrefix(sender, "<"), ">")
		local, domain, hasAt := mailaddr.Split(sender)
		if sender == "" || !hasAt {
			return "", "", false
		}
		if canon, ok := mailaddr.CanonicalDomain(domain); ok {
			domain = canon
		} else {
			domain = mailaddr.LowerASCII(domain)
		}
		if l.by == bySenderDomain {
			return domain, domain, true
		}
		return mailaddr.LowerASCII(local) + "@" + domain, sender, true
	case byUser:
		if c.AuthUser != "" {
			return "user:" + userKey(c.AuthUser), c.AuthUser, true
		}
	}
	ip := c.RemoteIP().Unmap().WithZone("")
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	if ip.Is6() && p.v6bits < 128 {
		pfx, _ := ip.Prefix(p.v6bits)
		return "ip:" + pfx.String(), pfx.String(), true
	}
	return "ip:" + ip.String(), ip.String(), true
}

// countedAs is the key a limit counts a transaction under, and the name
// its refusal shows.
type countedAs struct{ key, shown string }

// applicable yields the limits that count recipients (or, with
// recipients false, messages) and apply to the transaction, each with
// what it counts the transaction as.
func (p *Plugin) applicable(c *connection.Connection, sender string, recipients bool) iter.Seq2[*limit, countedAs] {
	return func(yield func(*limit, countedAs) bool) {
		for i := range p.limits {
			l := &p.limits[i]
			if l.recipients != recipients {
				continue
			}
			if key, shown, ok := p.key(l, c, sender); ok && !yield(l, countedAs{key, shown}) {
				return
			}
		}
	}
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

// slots are the store keys of the current and the previous slot of a
// limit's window for key, and the weight of the previous slot: the share
// of it still inside the window, in [0, 1].
func (p *Plugin) slots(l *limit, key string) (cur, prev string, weight float64) {
	now := p.now().UnixNano()
	w := int64(l.window)
	slot := now / w
	elapsed := now - slot*w
	base := "ratelimit:" + p.instance + ":" + l.name + ":" + key + ":"
	return base + strconv.FormatInt(slot, 10), base + strconv.FormatInt(slot-1, 10), 1 - float64(elapsed)/float64(w)
}

// count is the estimate of the key's count over the last window, given
// the current slot's count: cur plus the previous slot's count weighted by
// the share of that slot still inside the window.
func (p *Plugin) count(ctx context.Context, prevKey string, weight float64, cur int64) (float64, error) {
	v, found, err := p.store.Get(ctx, prevKey)
	if err != nil || !found {
		return float64(cur), err
	}
	prev, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return float64(cur), nil // not ours to fix: it expires
	}
	return float64(cur) + float64(prev)*weight, nil
}

// taken is one counter increment, to undo when a later limit refuses.
type taken struct {
	key string
	ttl time.Duration
}

// Mail counts the message against every message limit, or defers it when
// one of them is reached. A deferred MAIL does not count.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	if !p.messages {
		return hooks.Result{}
	}
	var done []taken
	undo := func() {
		ctx := context.WithoutCancel(ctx) // a blown hook deadline must not leave the count taken
		for _, t := range done {
			if _, err := p.store.Incr(ctx, t.key, -1, t.ttl); err != nil {
				p.log.Warn("ratelimit: cannot take back a count", "instance", p.instance, "err", err)
			}
		}
	}
	first := true
	for l, k := range p.applicable(c, from, false) {
		cur, prev, weight := p.slots(l, k.key)
		n, err := p.store.Incr(ctx, cur, 1, 2*l.window)
		if err != nil {
			undo()
			return hooks.Fail(fmt.Errorf("ratelimit: %w", err))
		}
		done = append(done, taken{cur, 2 * l.window})
		total, err := p.count(ctx, prev, weight, n)
		if err != nil {
			undo()
			return hooks.Fail(fmt.Errorf("ratelimit: %w", err))
		}
		if total > float64(l.max) {
			undo()
			return p.refusal(l, k.shown)
		}
		if first {
			NoteCount.Set(&tx.Notes, int(math.Ceil(total)))
			first = false
		}
	}
	return hooks.Result{}
}

// Rcpt defers a recipient when a recipient limit has no room left for
// it. It counts nothing: RcptOK counts the recipients the chain accepted.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if !p.recipients {
		return hooks.Result{}
	}
	for l, k := range p.applicable(c, tx.Sender, true) {
		cur, prev, weight := p.slots(l, k.key)
		var n int64
		v, found, err := p.store.Get(ctx, cur)
		if err == nil && found {
			n, _ = strconv.ParseInt(string(v), 10, 64)
		}
		var total float64
		if err == nil {
			total, err = p.count(ctx, prev, weight, n)
		}
		if err != nil {
			return hooks.Fail(fmt.Errorf("ratelimit: %w", err))
		}
		if total+1 > float64(l.max) {
			return p.refusal(l, k.shown)
		}
	}
	return hooks.Result{}
}

// RcptOK counts an accepted recipient against every recipient limit.
func (p *Plugin) RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) {
	if !p.recipients {
		return
	}
	for l, k := range p.applicable(c, tx.Sender, true) {
		cur, _, _ := p.slots(l, k.key)
		if _, err := p.store.Incr(ctx, cur, 1, 2*l.window); err != nil {
			p.log.Warn("ratelimit: cannot count a recipient", "instance", p.instance, "err", err)
		}
	}
}

func (p *Plugin) refusal(l *limit, shown string) hooks.Result {
	return hooks.Result{
		Code:      hooks.DenySoft,
		ReplyCode: 450,
		Enhanced:  [3]int{4, 7, 1},
		Msg:       fmt.Sprintf(l.text, shown),
	}
}
