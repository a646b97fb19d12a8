// Package karma is qpsmtpd's karma and naughty plugins: it keeps a history
// of good and bad connections per client address, shuts a client with a
// bad record out for a while (the penalty box), lets a client with a good
// record skip the reputation checks, and lets other plugins mark a
// connection naughty so that it is refused later, at one configured hook,
// instead of at once.
//
// A connection is bad when it ends naughty or with more refusals than
// accepted messages, good when it delivered more messages than it was
// refused. Naughty marks come from the karma.naughty note any plugin may
// set, from the refusals of the plugin instances listed in naughty_from
// when they run with enforce = false, and from a client that talked before
// the greeting.
package karma

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("karma", New) }

// Settings are the keys of a [plugins.karma] table.
type Settings struct {
	// RejectAt is the hook where a naughty connection is refused: "mail",
	// "rcpt" (the default, as qpsmtpd's naughty: the log then shows the
	// sender and first recipient) or "data_post" (the message is
	// received, then refused: marks set by content filters count too).
	// A mark set after RejectAt is refused at the next of these hooks.
	RejectAt string `toml:"reject_at"`
	// NaughtyFrom lists plugin instances whose refusals, when they run
	// with enforce = false, mark the connection naughty (the first one's
	// reply is the one the client then gets).
	NaughtyFrom []string `toml:"naughty_from"`
	// EarlyTalkerNaughty marks a client that talked before the greeting
	// (the listener's greeting_delay) naughty. Default true.
	EarlyTalkerNaughty *bool `toml:"earlytalker_naughty"`
	// History is how long a good or bad connection counts. Default 30 days.
	History string `toml:"history"`
	// PenaltyBad is the number of bad connections in History (and more
	// bad than good) that puts a client in the penalty box. Default 5;
	// 0 disables the box.
	PenaltyBad *int `toml:"penalty_bad"`
	// PenaltyTime is how long the penalty box holds a client. Default 1h.
	PenaltyTime string `toml:"penalty_time"`
	// GoodTrust is the number of good connections, with none bad, that
	// makes a client trusted: the connection note connection.NoteWhitelisted
	// is set, and dnsbl, rhsbl and greylist skip it. Default 10; 0
	// trusts nobody.
	GoodTrust *int `toml:"good_trust"`
	// BadMaxRecipients caps the recipients of one transaction from a
	// client with more bad connections than good. Default 5; 0 does not
	// cap.
	BadMaxRecipients *int `toml:"bad_max_recipients"`
	// IPv6Prefix groups IPv6 clients by this prefix length. Default 64.
	IPv6Prefix int `toml:"ipv6_prefix"`
	// State is the store of the histories: the [state] table (an embedded
	// file under data_dir by default, Redis for several front-ends).
	State state.Settings `toml:"state"`
}

// History is what the store remembers of a client, in the connection note
// NoteHistory.
type History struct {
	Good, Bad int64
	// Trusted is a client whose good record made karma whitelist it.
	Trusted bool
}

// Notes karma reads and writes.
var (
	// NoteNaughty marks a connection naughty: any plugin may set it, to
	// the reply text the client will get ("Your HELO name is forged").
	// karma refuses the connection at reject_at and counts it bad.
	NoteNaughty = notes.NewKey[string]("karma.naughty")
	// NoteHistory is the client's record at connect.
	NoteHistory = notes.NewKey[History]("karma.history")
	// NoteScore is the connection's running score: +1 per message
	// queued, -1 per refusal by another plugin.
	NoteScore = notes.NewKey[int]("karma.score")
)

// Plugin is a karma instance. It is safe for concurrent use.
type Plugin struct {
	name        string
	rejectAt    hooks.Hook
	naughtyFrom []string
	earlyTalker bool
	history     time.Duration
	penaltyBad  int64
	penaltyTime time.Duration
	goodTrust   int64
	badMaxRcpt  int
	v6Prefix    int
	store       state.Store
}

var (
	_ hooks.Connect       = (*Plugin)(nil)
	_ hooks.Mail          = (*Plugin)(nil)
	_ hooks.Rcpt          = (*Plugin)(nil)
	_ hooks.DataPost      = (*Plugin)(nil)
	_ hooks.QueuePost     = (*Plugin)(nil)
	_ hooks.Disconnect    = (*Plugin)(nil)
	_ hooks.DenyObserver  = (*Plugin)(nil)
	_ hooks.InstanceNamer = (*Plugin)(nil)
)

// New builds a karma instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{RejectAt: "rcpt", History: "720h", PenaltyTime: "1h", IPv6Prefix: 64}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{name: "karma", naughtyFrom: s.NaughtyFrom, earlyTalker: true, penaltyBad: 5, goodTrust: 10, badMaxRcpt: 5, v6Prefix: s.IPv6Prefix}
	switch s.RejectAt {
	case "mail":
		p.rejectAt = hooks.HookMail
	case "rcpt":
		p.rejectAt = hooks.HookRcpt
	case "data_post":
		p.rejectAt = hooks.HookDataPost
	default:
		return nil, fmt.Errorf("reject_at = %q: want \"mail\", \"rcpt\" or \"data_post\"", s.RejectAt)
	}
	var err error
	if p.history, err = positive("history", s.History); err != nil {
		return nil, err
	}
	if p.penaltyTime, err = positive("penalty_time", s.PenaltyTime); err != nil {
		return nil, err
	}
	if s.EarlyTalkerNaughty != nil {
		p.earlyTalker = *s.EarlyTalkerNaughty
	}
	for _, f := range []struct {
		name string
		v    *int
		dst  func(int)
	}{
		{"penalty_bad", s.PenaltyBad, func(n int) { p.penaltyBad = int64(n) }},
		{"good_trust", s.GoodTrust, func(n int) { p.goodTrust = int64(n) }},
		{"bad_max_recipients", s.BadMaxRecipients, func(n int) { p.badMaxRcpt = n }},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 {
			return nil, fmt.Errorf("%s = %d: want 0 (off) or more", f.name, *f.v)
		}
		f.dst(*f.v)
	}
	if p.v6Prefix < 1 || p.v6Prefix > 128 {
		return nil, fmt.Errorf("ipv6_prefix = %d: want 1 to 128", p.v6Prefix)
	}
	if p.store, err = s.State.Open(); err != nil {
		return nil, err
	}
	return p, nil
}

func positive(key, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s = %q: want a duration such as \"1h\" or \"720h\"", key, v)
	}
	return d, nil
}

// SetInstanceName learns the instance name, so that karma does not count
// its own refusals.
func (p *Plugin) SetInstanceName(name string) { p.name = name }

// Close releases the store.
func (p *Plugin) Close() error { return p.store.Close() }

// client is the key of a client address: the address, an IPv6 one cut to
// the prefix.
func (p *Plugin) client(c *connection.Connection) string {
	a := c.Remote.Addr().Unmap()
	if a.Is6() {
		pf, _ := a.Prefix(p.v6Prefix)
		return pf.String()
	}
	return a.String()
}

// key is the store key of one part ("good", "bad", "penalty") of a
// client's record.
func key(kind, client string) string {
	return "karma:" + kind + ":" + client
}

// Connect refuses a client in the penalty box, and reads its record.
func (p *Plugin) Connect(ctx context.Context, c *connection.Connection) hooks.Result {
	// A client a plugin before karma whitelisted (bwl) is not judged:
	// no penalty box, no refusal, no recipient cap. It is still counted.
	if c.Exempt() {
		return hooks.Result{}
	}
	client := p.client(c)
	if until, ok, err := p.store.Get(ctx, key("penalty", client)); err != nil {
		return hooks.Fail(fmt.Errorf("karma: read the penalty box: %w", err))
	} else if ok {
		msg := "Your address has a bad record here: try again later"
		if t, err := strconv.ParseInt(string(until), 10, 64); err == nil {
			msg = fmt.Sprintf("Your address has a bad record here: try again after %s", time.Unix(t, 0).UTC().Format(time.RFC3339))
		}
		return hooks.Result{Code: hooks.DenySoftDisconnect, Msg: msg, Enhanced: [3]int{4, 7, 1}}
	}
	var h History
	for _, f := range []struct {
		kind string
		dst  *int64
	}{{"good", &h.Good}, {"bad", &h.Bad}} {
		v, ok, err := p.store.Get(ctx, key(f.kind, client))
		if err != nil {
			return hooks.Fail(fmt.Errorf("karma: read the history: %w", err))
		}
		if ok {
			*f.dst, _ = strconv.ParseInt(string(v), 10, 64)
		}
	}
	if p.goodTrust > 0 && h.Bad == 0 && h.Good >= p.goodTrust {
		h.Trusted = true
		if _, set := connection.NoteWhitelisted.Lookup(&c.Notes); !set {
			connection.NoteWhitelisted.Set(&c.Notes, fmt.Sprintf("karma: %d good connections, none bad", h.Good))
		}
	}
	NoteHistory.Set(&c.Notes, h)
	return hooks.Result{}
}

// naughty returns the reply of a naughty connection, "" when it is not.
func (p *Plugin) naughty(c *connection.Connection, tx *transaction.Transaction) string {
	if msg, ok := NoteNaughty.Lookup(&c.Notes); ok {
		return msg
	}
	if p.earlyTalker && c.EarlyTalker {
		return "Talked before the greeting"
	}
	for _, n := range []*notes.Notes{&c.Notes, txNotes(tx)} {
		if n == nil {
			continue
		}
		for _, d := range hooks.NoteWouldRefuse.Get(n) {
			if slices.Contains(p.naughtyFrom, d.Plugin) {
				return hooks.ReplyFor(d.Hook, d.Result).Msg
			}
		}
	}
	return ""
}

func txNotes(tx *transaction.Transaction) *notes.Notes {
	if tx == nil {
		return nil
	}
	return &tx.Notes
}

// refuse refuses a naughty connection at hook, from reject_at on.
func (p *Plugin) refuse(hook hooks.Hook, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if c.Exempt() || order(hook) < order(p.rejectAt) {
		return hooks.Result{}
	}
	msg := p.naughty(c, tx)
	if msg == "" {
		return hooks.Result{}
	}
	NoteNaughty.Set(&c.Notes, msg) // counted bad at disconnect
	return hooks.Result{Code: hooks.Deny, Msg: msg, Enhanced: [3]int{5, 7, 1}}
}

func order(h hooks.Hook) int {
	switch h {
	case hooks.HookMail:
		return 1
	case hooks.HookRcpt:
		return 2
	default:
		return 3
	}
}

// Mail refuses a naughty connection when reject_at is mail.
func (p *Plugin) Mail(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	return p.refuse(hooks.HookMail, c, tx)
}

// Rcpt refuses a naughty connection from reject_at = "rcpt" on, and caps
// the recipients of a client with a bad record.
func (p *Plugin) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if r := p.refuse(hooks.HookRcpt, c, tx); r.Code != hooks.Declined {
		return r
	}
	if h := NoteHistory.Get(&c.Notes); p.badMaxRcpt > 0 && h.Bad > h.Good && len(tx.Recipients) >= p.badMaxRcpt && !c.Exempt() {
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 452, Msg: "Too many recipients for an address with a bad record", Enhanced: [3]int{4, 5, 3}}
	}
	return hooks.Result{}
}

// DataPost refuses a naughty connection whatever reject_at: a mark set
// late (by a content filter) still counts.
func (p *Plugin) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return p.refuse(hooks.HookDataPost, c, tx)
}

// Denied counts another plugin's refusal against the connection.
func (p *Plugin) Denied(_ context.Context, c *connection.Connection, d hooks.Decision) {
	if d.Plugin != p.name {
		notes.Add(&c.Notes, NoteScore, -1)
	}
}

// QueuePost counts a queued message for the connection.
func (p *Plugin) QueuePost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) {
	if tx.QueueID != "" {
		notes.Add(&c.Notes, NoteScore, 1)
	}
}

// Disconnect writes the connection into the client's record and puts a
// client with too bad a record in the penalty box.
func (p *Plugin) Disconnect(ctx context.Context, c *connection.Connection) {
	if c.Relay || c.AuthUser != "" {
		return
	}
	score := NoteScore.Get(&c.Notes)
	_, naughty := NoteNaughty.Lookup(&c.Notes)
	if !naughty && score == 0 {
		return // neither good nor bad
	}
	client := p.client(c)
	switch {
	case naughty || score < 0:
		bad, err := p.store.Incr(ctx, key("bad", client), 1, p.history)
		if err != nil {
			return // the record is best effort; the next connection reads what is there
		}
		good := NoteHistory.Get(&c.Notes).Good
		if p.penaltyBad > 0 && bad >= p.penaltyBad && bad > good {
			until := time.Now().Add(p.penaltyTime).Unix()
			p.store.Set(ctx, key("penalty", client), []byte(strconv.FormatInt(until, 10)), p.penaltyTime)
		}
	case score > 0:
		p.store.Incr(ctx, key("good", client), 1, p.history)
	}
}
