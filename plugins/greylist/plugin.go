// Package greylist defers the first delivery attempt of each new
// (client network, sender, recipient) triplet with 451 4.7.1: a real mail
// server retries after a while and is then accepted; much spamware never
// does. It is qpsmtpd's greylisting (denysoft_greylist), Haraka's
// greylist and Postfix's postgrey, built in.
//
// Its state is in the store of the [state] table (package state): a file
// under data_dir by default, surviving a restart, or a Redis server that
// several smtpd processes share, so that a retry reaching another
// front-end is still recognised.
package greylist

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("greylist", New) }

// Settings are the keys of a [plugins.greylist] table.
type Settings struct {
	// Delay is how long a new triplet is deferred: a retry sooner is
	// deferred again. Default "5m".
	Delay time.Duration `toml:"delay"`
	// RetryWindow is how long after the delay a retry is still
	// recognised; a triplet not retried by then is forgotten and starts
	// over. Default "24h".
	RetryWindow time.Duration `toml:"retry_window"`
	// Lifetime is how long a triplet that passed, and a client network
	// whitelisted automatically, stay known since they were last seen.
	// Default "36d" is written "864h".
	Lifetime time.Duration `toml:"lifetime"`
	// AutoWhitelist whitelists a client network after this many
	// successful retries (of different triplets) within Lifetime: its
	// later mail is not greylisted at all. Default 5; 0 turns it off.
	AutoWhitelist int `toml:"auto_whitelist"`
	// IPv4Prefix and IPv6Prefix are how many leading bits of the client's
	// address make one client network: a sender's retry from another
	// machine of the same pool is still a retry. Defaults 24 and 64.
	IPv4Prefix int `toml:"ipv4_prefix"`
	IPv6Prefix int `toml:"ipv6_prefix"`
	// DeferAt is where triplets are checked: "rcpt" (the default: each
	// recipient is deferred on its own; list greylist before the plugin
	// that accepts recipients) or "data" (the recipients the chain
	// accepted are checked at DATA, which is deferred when any is new:
	// list greylist anywhere, and only mail to valid recipients makes
	// triplets).
	DeferAt string `toml:"defer_at"`
	// State is the store, from the top-level [state] table; a
	// [plugins.NAME.state] table overrides it for this instance.
	State state.Settings `toml:"state"`
}

// Defaults.
const (
	DefaultDelay         = 5 * time.Minute
	DefaultRetryWindow   = 24 * time.Hour
	DefaultLifetime      = 36 * 24 * time.Hour
	DefaultAutoWhitelist = 5
)

// NoteSkipped (transaction) says why greylist let the transaction's
// recipients through unchecked: "relay", "auth", "whitelisted client",
// "whitelisted sender" or "auto-whitelisted".
var NoteSkipped = notes.NewKey[string]("greylist.skipped")

// NoteDeferred (transaction) counts the recipients greylist deferred.
var NoteDeferred = notes.NewKey[int]("greylist.deferred")

// NotePassed (transaction) counts the recipients whose triplet was
// retried in time and is now known.
var NotePassed = notes.NewKey[int]("greylist.passed")

// Plugin is a greylist instance. Its state is in the store; it is safe for
// concurrent use.
type Plugin struct {
	delay, window, lifetime time.Duration
	auto                    int
	v4bits, v6bits          int
	atData                  bool
	store                   state.Store
	// now is the clock; tests replace it (export_test.go).
	now func() time.Time
}

var (
	_ hooks.Rcpt = (*Plugin)(nil)
	_ hooks.Data = (*Plugin)(nil)
)

// New builds a greylist instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Delay: DefaultDelay, RetryWindow: DefaultRetryWindow, Lifetime: DefaultLifetime,
		AutoWhitelist: DefaultAutoWhitelist, IPv4Prefix: 24, IPv6Prefix: 64}
	if err := decode(&s); err != nil {
		return nil, err
	}
	switch {
	case s.Delay < time.Second:
		return nil, fmt.Errorf("delay = %v: want a duration of at least \"1s\" (\"5m\" is usual; a bare number is nanoseconds)", s.Delay)
	case s.RetryWindow < s.Delay:
		return nil, fmt.Errorf("retry_window = %v: want a duration at least as long as delay (%v): senders retry over hours", s.RetryWindow, s.Delay)
	case s.Lifetime < s.RetryWindow:
		return nil, fmt.Errorf("lifetime = %v: want a duration at least as long as retry_window (%v); \"864h\" is 36 days", s.Lifetime, s.RetryWindow)
	case s.AutoWhitelist < 0:
		return nil, fmt.Errorf("auto_whitelist = %d: want 0 (off) or the number of successful retries that whitelist a client", s.AutoWhitelist)
	case s.IPv4Prefix < 8 || s.IPv4Prefix > 32:
		return nil, fmt.Errorf("ipv4_prefix = %d: want 8 to 32 (24 is usual)", s.IPv4Prefix)
	case s.IPv6Prefix < 16 || s.IPv6Prefix > 128:
		return nil, fmt.Errorf("ipv6_prefix = %d: want 16 to 128 (64 is usual)", s.IPv6Prefix)
	case s.DeferAt != "" && s.DeferAt != "rcpt" && s.DeferAt != "data":
		return nil, fmt.Errorf("defer_at = %q: want \"rcpt\" or \"data\"", s.DeferAt)
	}
	st, err := s.State.Open()
	if err != nil {
		return nil, err
	}
	return &Plugin{delay: s.Delay, window: s.RetryWindow, lifetime: s.Lifetime, auto: s.AutoWhitelist,
		v4bits: s.IPv4Prefix, v6bits: s.IPv6Prefix, atData: s.DeferAt == "data", store: st, now: time.Now}, nil
}

// Close releases the plugin's handle of the store.
func (p *Plugin) Close() error { return p.store.Close() }

// skip says why a transaction is not greylisted, or "".
func skip(c *connection.Connection, tx *transaction.Transaction) string {
	switch {
	case c.Relay:
		return "relay"
	case c.AuthUser != "":
		return "auth"
	}
	if w, ok := connection.NoteWhitelisted.Lookup(&c.Notes); ok && w != "" {
		return "whitelisted client"
	}
	if w, ok := transaction.NoteWhitelisted.Lookup(&tx.Notes); ok && w != "" {
		return "whitelisted sender"
	}
	return ""
}

// Rcpt defers a recipient whose triplet is new or retried too early
// (with defer_at = "rcpt").
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if p.atData {
		return hooks.Result{}
	}
	return p.check(ctx, c, tx, []string{rcpt})
}

// Data defers the message when the triplet of any recipient the chain
// accepted is new or retried too early (with defer_at = "data").
func (p *Plugin) Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if !p.atData {
		return hooks.Result{}
	}
	return p.check(ctx, c, tx, tx.Recipients)
}

// check records the triplets of rcpts and defers when one must wait,
// for the longest wait.
func (p *Plugin) check(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpts []string) hooks.Result {
	// Checked again here: a plugin may have set a note after MAIL.
	if why := skip(c, tx); why != "" {
		NoteSkipped.Set(&tx.Notes, why)
		return hooks.Result{}
	}
	if len(rcpts) == 0 {
		return hooks.Result{}
	}
	network := p.network(c.RemoteIP())
	// The network's whitelisting is read once for all the recipients;
	// a retry among them that whitelists it lets the rest through.
	white, err := p.whitelisted(ctx, network)
	if err != nil {
		return hooks.Fail(fmt.Errorf("greylist: %w", err))
	}
	sender := strings.ToLower(tx.Sender)
	var wait time.Duration
	deferred := 0
	for _, rcpt := range rcpts {
		if white {
			NoteSkipped.Set(&tx.Notes, "auto-whitelisted")
			continue
		}
		w, whitened, err := p.decide(ctx, tx, network, sender, strings.ToLower(rcpt))
		white = whitened
		if err != nil {
			return hooks.Fail(fmt.Errorf("greylist: %w", err))
		}
		if w > 0 {
			deferred++
			wait = max(wait, w)
		}
	}
	if deferred == 0 {
		return hooks.Result{}
	}
	notes.Add(&tx.Notes, NoteDeferred, deferred)
	secs := int64((wait + time.Second - 1) / time.Second)
	return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1},
		Msg: fmt.Sprintf("Greylisted: please try again in %d seconds", secs)}
}

// network is the client's network: its address under the prefix.
func (p *Plugin) network(ip netip.Addr) string {
	bits := p.v6bits
	if ip.Is4() {
		bits = p.v4bits
	}
	pfx, err := ip.Prefix(bits)
	if err != nil {
		return ip.String()
	}
	return pfx.String()
}

// Keys in the store. A triplet's value is "g" and the time it was first
// seen (greylisted), or "p" and the time it passed; a whitelisted
// network's is the time it was whitelisted; the pass counter is an
// integer.
func tripletKey(network, sender, rcpt string) string {
	return "greylist:t:" + network + "|" + sender + "|" + rcpt
}
func whiteKey(network string) string  { return "greylist:w:" + network }
func passesKey(network string) string { return "greylist:n:" + network }

// whitelisted reports whether the client network is auto-whitelisted.
func (p *Plugin) whitelisted(ctx context.Context, network string) (bool, error) {
	if p.auto == 0 {
		return false, nil
	}
	v, ok, err := p.store.Get(ctx, whiteKey(network))
	if err != nil {
		return false, err
	}
	t, valid := parseTime(v)
	return ok && valid && p.now().Sub(t) < p.lifetime, nil
}

// decide returns how long the client must still wait, 0 to let the
// recipient through, and whether a passed retry whitelisted the client
// network.
func (p *Plugin) decide(ctx context.Context, tx *transaction.Transaction, network, sender, rcpt string) (time.Duration, bool, error) {
	now := p.now()
	key := tripletKey(network, sender, rcpt)
	v, ok, err := p.store.Get(ctx, key)
	if err != nil {
		return 0, false, err
	}
	if !ok {
		// A new triplet. Of two front-ends seeing it at once, one
		// stores it; the other reads what that one stored.
		stored, err := p.store.SetIfAbsent(ctx, key, stamp('g', now), p.delay+p.window)
		if err != nil || stored {
			return p.delay, false, err
		}
		if v, ok, err = p.store.Get(ctx, key); err != nil {
			return 0, false, err
		}
	}
	kind, t, valid := parseValue(v)
	switch {
	case !ok || !valid:
		// Gone since (expired) or unreadable: start over.
	case kind == 'p' && now.Sub(t) < p.lifetime:
		if now.Sub(t) > p.lifetime/2 {
			// Known and in use: renew it, at most twice a lifetime.
			if err := p.store.Set(ctx, key, stamp('p', now), p.lifetime); err != nil {
				return 0, false, err
			}
		}
		return 0, false, nil
	case kind == 'g' && now.Sub(t) < p.delay:
		return p.delay - now.Sub(t), false, nil // too early
	case kind == 'g' && now.Sub(t) <= p.delay+p.window:
		white, err := p.pass(ctx, tx, key, network, now)
		return 0, white, err
	}
	if err := p.store.Set(ctx, key, stamp('g', now), p.delay+p.window); err != nil {
		return 0, false, err
	}
	return p.delay, false, nil
}

// pass records a successful retry, and whitelists the client network
// after enough of them; it reports whether it did.
func (p *Plugin) pass(ctx context.Context, tx *transaction.Transaction, key, network string, now time.Time) (bool, error) {
	if err := p.store.Set(ctx, key, stamp('p', now), p.lifetime); err != nil {
		return false, err
	}
	notes.Add(&tx.Notes, NotePassed, 1)
	if p.auto == 0 {
		return false, nil
	}
	n, err := p.store.Incr(ctx, passesKey(network), 1, p.lifetime)
	if err != nil || n < int64(p.auto) {
		return false, err
	}
	err = p.store.Set(ctx, whiteKey(network), strconv.AppendInt(nil, now.UnixNano(), 10), p.lifetime)
	return err == nil, err
}

func stamp(kind byte, t time.Time) []byte {
	return strconv.AppendInt([]byte{kind}, t.UnixNano(), 10)
}

func parseValue(v []byte) (kind byte, t time.Time, ok bool) {
	if len(v) < 2 || (v[0] != 'g' && v[0] != 'p') {
		return 0, time.Time{}, false
	}
	t, ok = parseTime(v[1:])
	return v[0], t, ok
}

func parseTime(v []byte) (time.Time, bool) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}
