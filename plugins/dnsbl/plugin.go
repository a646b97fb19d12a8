// Package dnsbl looks the client's IP address up in DNS block lists
// (RFC 5782): qpsmtpd's dnsbl, Haraka's dnsbl, Postfix's
// reject_rbl_client. The lookups start at connect, in the background, and
// are collected at the hook that decides (rcpt by default, so that
// postmaster@ and abuse@ can still be written to): a list that answers
// while the client says EHLO and MAIL adds no latency.
//
// Each zone has a codes filter (which 127.0.0.x answers count, and what
// each means), an optional TXT reason, a reply text and an action (deny,
// defer or note). Answers are cached for their DNS TTL, bounded by
// cache_ttl. A lookup that fails or times out lets the mail through
// unless dns_failure = "defer".
//
// The DNS client is miekg/dns, asking the servers of the shared [dns]
// table (see dns.go for why not net.Resolver). rhsbl uses this package's
// Lists for domains.
package dnsbl

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("dnsbl", New) }

// Settings are the keys of a [plugins.dnsbl] table.
type Settings struct {
	// ListSettings are the zones, whitelist_recipients, dns_failure and
	// the cache, as rhsbl has them.
	ListSettings
	// RejectAt is the hook that collects the lookups and refuses a
	// listed client: "connect", "helo", "mail" or "rcpt" (default).
	RejectAt string `toml:"reject_at"`
	// DNS is the resolver's settings: the top-level [dns] table, or
	// [plugins.dnsbl.dns] for this instance only. Its timeout bounds
	// each lookup.
	DNS resolver.Settings `toml:"dns"`
}

// ListSettings are the keys dnsbl and rhsbl share.
type ListSettings struct {
	// Zones are the lists to ask, each a [[plugins.NAME.zones]] table.
	Zones []ZoneSettings `toml:"zones"`
	// WhitelistRecipients are the recipients a listed client or sender
	// may still write to, at rcpt: a local part ("postmaster", any
	// domain), an address, or "@domain". Default ["postmaster", "abuse"].
	WhitelistRecipients []string `toml:"whitelist_recipients"`
	// DNSFailure is what a failed lookup does: "accept" (default: as if
	// not listed) or "defer" (451 4.4.3).
	DNSFailure string `toml:"dns_failure"`
	// CacheTTL bounds how long an answer is kept (each is kept for its
	// DNS TTL, at most this). Default "10m"; "0s" turns the cache off.
	CacheTTL time.Duration `toml:"cache_ttl"`
	// CacheSize is the most answers kept. Default 10000.
	CacheSize int `toml:"cache_size"`
}

// DefaultListSettings are ListSettings' defaults.
func DefaultListSettings() ListSettings {
	return ListSettings{WhitelistRecipients: []string{"postmaster", "abuse"}, DNSFailure: "accept", CacheTTL: 10 * time.Minute, CacheSize: 10000}
}

// Checker is what ListSettings build: the lists with their DNS client and
// cache, the recipients a listing spares, and whether a failed lookup
// defers.
type Checker struct {
	Lists    *Lists
	RcptOK   RecipientWhitelist
	DeferDNS bool
}

// Build checks the settings and builds their Checker, asking the servers
// of dnsSettings.
func (s ListSettings) Build(dnsSettings resolver.Settings) (Checker, error) {
	var k Checker
	var err error
	if k.RcptOK, err = parseRecipientWhitelist(s.WhitelistRecipients); err != nil {
		return Checker{}, err
	}
	switch s.DNSFailure {
	case "accept":
	case "defer":
		k.DeferDNS = true
	default:
		return Checker{}, fmt.Errorf("dns_failure = %q: want \"accept\" or \"defer\"", s.DNSFailure)
	}
	if k.Lists, err = NewLists(s.Zones, dnsSettings, s.CacheTTL, s.CacheSize); err != nil {
		return Checker{}, err
	}
	return k, nil
}

// Stage is the hook at which a plugin collects its lookups and refuses.
type Stage int

// The stages, in the order of the conversation.
const (
	AtConnect Stage = iota
	AtHelo
	AtMail
	AtRcpt
)

// ParseStage reads a reject_at setting, one of allowed.
func ParseStage(value string, allowed ...Stage) (Stage, error) {
	names := map[Stage]string{AtConnect: "connect", AtHelo: "helo", AtMail: "mail", AtRcpt: "rcpt"}
	var want []string
	for _, s := range allowed {
		if names[s] == value {
			return s, nil
		}
		want = append(want, `"`+names[s]+`"`)
	}
	return 0, fmt.Errorf("reject_at = %q: want %s", value, strings.Join(want, ", "))
}

// RecipientWhitelist is a whitelist_recipients setting.
type RecipientWhitelist []string

// parseRecipientWhitelist checks and lowers a whitelist_recipients
// setting.
func parseRecipientWhitelist(entries []string) (RecipientWhitelist, error) {
	w := make(RecipientWhitelist, 0, len(entries))
	for _, e := range entries {
		if e == "" || e == "@" || strings.ContainsAny(e, " \t<>") {
			return nil, fmt.Errorf("whitelist_recipients: %q: want a local part (\"postmaster\"), an address or \"@domain\"", e)
		}
		w = append(w, strings.ToLower(e))
	}
	return w, nil
}

// Match reports whether rcpt is on the list.
func (w RecipientWhitelist) Match(rcpt string) bool {
	local, domain, _ := mailaddr.Split(rcpt)
	for _, e := range w {
		switch {
		case strings.HasPrefix(e, "@"):
			if mailaddr.EqualDomains(e[1:], domain) {
				return true
			}
		case strings.Contains(e, "@"):
			if strings.EqualFold(e, rcpt) {
				return true
			}
		default:
			if strings.EqualFold(e, local) {
				return true
			}
		}
	}
	return false
}

// Plugin is one dnsbl instance; safe for concurrent use.
type Plugin struct {
	check Checker
	at    Stage
	state notes.Key[*connState]
}

var (
	_ hooks.Connect    = (*Plugin)(nil)
	_ hooks.Helo       = (*Plugin)(nil)
	_ hooks.Ehlo       = (*Plugin)(nil)
	_ hooks.Mail       = (*Plugin)(nil)
	_ hooks.Rcpt       = (*Plugin)(nil)
	_ hooks.Disconnect = (*Plugin)(nil)
)

// New builds an instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{ListSettings: DefaultListSettings(), RejectAt: "rcpt"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{state: notes.NewKey[*connState]("dnsbl.pending")}
	var err error
	if p.at, err = ParseStage(s.RejectAt, AtConnect, AtHelo, AtMail, AtRcpt); err != nil {
		return nil, err
	}
	if p.check, err = s.Build(s.DNS); err != nil {
		return nil, err
	}
	return p, nil
}

// SetInstanceName keys the instance's per-connection state by its name,
// so two instances of dnsbl in one chain keep theirs apart.
func (p *Plugin) SetInstanceName(name string) {
	p.state = notes.NewKey[*connState](name + ".pending")
}

// connState is one connection's lookups, in a connection note.
type connState struct {
	cancel    context.CancelFunc
	pending   *Pending
	collected bool
	verdict   Verdict
}

// String keeps a dump of the notes short.
func (s *connState) String() string { return "dnsbl lookups" }

// Skip reports whether a client is exempt from reputation checks: a relay
// client, an authenticated user, a whitelisted client or (tx not nil)
// sender.
func Skip(c *connection.Connection, tx *transaction.Transaction) bool {
	if c.Exempt() {
		return true
	}
	if tx == nil {
		return false
	}
	_, white := transaction.NoteWhitelisted.Lookup(&tx.Notes)
	return white
}

// Connect starts the lookups of the client's address and, with
// reject_at = "connect", waits for them.
func (p *Plugin) Connect(ctx context.Context, c *connection.Connection) hooks.Result {
	if Skip(c, nil) || !c.RemoteIP().IsValid() {
		return hooks.Result{}
	}
	// The lookups outlive this hook's context: they run until they end
	// or the connection does (Disconnect cancels them).
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ip := c.RemoteIP()
	st := &connState{cancel: cancel, pending: p.check.Lists.Start(lctx, ReverseIP(ip), ip.String())}
	p.state.Set(&c.Notes, st)
	if p.at == AtConnect {
		return p.decide(ctx, c, nil)
	}
	return hooks.Result{}
}

// Helo refuses a listed client with reject_at = "helo".
func (p *Plugin) Helo(ctx context.Context, c *connection.Connection, _ string) hooks.Result {
	if p.at != AtHelo {
		return hooks.Result{}
	}
	return p.decide(ctx, c, nil)
}

// Ehlo is Helo.
func (p *Plugin) Ehlo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.Helo(ctx, c, host)
}

// Mail refuses a listed client with reject_at = "mail".
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if p.at != AtMail {
		return hooks.Result{}
	}
	return p.decide(ctx, c, tx)
}

// Rcpt refuses a listed client's recipients with reject_at = "rcpt",
// except those of whitelist_recipients.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if p.at != AtRcpt || p.check.RcptOK.Match(rcpt) {
		return hooks.Result{}
	}
	return p.decide(ctx, c, tx)
}

// Disconnect stops the lookups still running.
func (p *Plugin) Disconnect(_ context.Context, c *connection.Connection) {
	if st, ok := p.state.Lookup(&c.Notes); ok {
		st.cancel()
	}
}

// decide collects the lookups (once per connection), notes them, and
// returns the reply.
func (p *Plugin) decide(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	st, ok := p.state.Lookup(&c.Notes)
	if !ok || Skip(c, tx) {
		return hooks.Result{}
	}
	if !st.collected {
		results, ok := st.pending.Wait(ctx)
		if !ok {
			// The hook's deadline passed first: the lookups' own
			// timeout is longer than hook_timeout. Try again at the
			// next command.
			return p.failure(c, []Result{{Zone: "every zone", Err: fmt.Errorf("the lookups outlived the hook: %w", ctx.Err())}})
		}
		st.collected = true
		st.verdict = Judge(results, "Client host", c.RemoteIP().String())
		AddListings(&c.Notes, NoteListings, st.verdict.Listings)
		if len(st.verdict.Failed) > 0 {
			var zones []string
			for _, f := range st.verdict.Failed {
				zones = append(zones, f.Zone)
			}
			NoteFailed.Set(&c.Notes, append(NoteFailed.Get(&c.Notes), zones...))
		}
	}
	if st.verdict.Reply.Code != hooks.Declined {
		return st.verdict.Reply
	}
	if len(st.verdict.Failed) > 0 {
		return p.failure(c, st.verdict.Failed)
	}
	return hooks.Result{}
}

// failure is the reply to failed lookups: none, or 451 4.4.3 with
// dns_failure = "defer".
func (p *Plugin) failure(c *connection.Connection, failed []Result) hooks.Result {
	if !p.check.DeferDNS {
		return hooks.Result{}
	}
	return FailureReply(failed, "Client host", c.RemoteIP().String())
}

// AddListings appends listings to the note k in n.
func AddListings(n *notes.Notes, k notes.Key[[]Listing], listings []Listing) {
	if len(listings) == 0 {
		return
	}
	k.Set(n, append(slices.Clip(k.Get(n)), listings...))
}
