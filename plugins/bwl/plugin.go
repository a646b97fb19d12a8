// Package bwl is Valvula's mod-bwl: black and white lists on the client's
// address, the sender and the recipient, global and per recipient domain
// or account. A blacklist hit refuses (550 5.7.1, naming what matched); a
// whitelist hit only sets a note (connection.NoteWhitelisted for a client,
// transaction.NoteWhitelisted for a sender) that dnsbl, greylist and karma
// honour. A whitelist never accepts anything: it cannot make a client a
// relay nor a recipient acceptable, so it cannot turn the server into an
// open relay; rcptok still decides which recipients are ours.
package bwl

import (
	"context"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/lookup"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("bwl", New) }

// Lists are one owner's lists. Each is a list or a lookup table (see
// docs/lookup.md). Client lists hold addresses and CIDR prefixes; sender
// lists hold addresses ("bob@example.org"), domains ("example.org") and
// subdomain wildcards (".example.org").
type Lists struct {
	AllowClients lookup.Spec `toml:"allow_clients"`
	BlockClients lookup.Spec `toml:"block_clients"`
	AllowSenders lookup.Spec `toml:"allow_senders"`
	BlockSenders lookup.Spec `toml:"block_senders"`
}

// Settings are the keys of a [plugins.bwl] table: the global lists, the
// global recipient lists, and per-domain and per-account lists that apply
// to mail for that domain or account.
type Settings struct {
	Lists
	AllowRecipients lookup.Spec      `toml:"allow_recipients"`
	BlockRecipients lookup.Spec      `toml:"block_recipients"`
	Domains         map[string]Lists `toml:"domains"`
	Accounts        map[string]Lists `toml:"accounts"`
}

// lists are compiled Lists; a nil field is an unset list.
type lists struct {
	owner                      string // "" for the global lists
	allowClients, blockClients *lookup.Networks
	allowSenders, blockSenders lookup.Table
}

// Plugin is a bwl instance, read-only after New and safe for concurrent
// use.
type Plugin struct {
	global                           lists
	allowRecipients, blockRecipients lookup.Table
	domains, accounts                map[string]*lists
	closers                          []func() error
}

var (
	_ hooks.Connect = (*Plugin)(nil)
	_ hooks.Mail    = (*Plugin)(nil)
	_ hooks.Rcpt    = (*Plugin)(nil)
)

// New builds a bwl instance.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{domains: map[string]*lists{}, accounts: map[string]*lists{}}
	fail := func(err error) (*Plugin, error) { p.Close(); return nil, err }
	if err := p.compile(&p.global, "", s.Lists); err != nil {
		return fail(err)
	}
	var err error
	if p.allowRecipients, err = p.table("allow_recipients", s.AllowRecipients); err != nil {
		return fail(err)
	}
	if p.blockRecipients, err = p.table("block_recipients", s.BlockRecipients); err != nil {
		return fail(err)
	}
	for d, l := range s.Domains {
		key, ok := mailaddr.CanonicalDomain(d)
		if !ok {
			return fail(fmt.Errorf("domains.%q: not a domain: want [plugins.bwl.domains.\"example.test\"]", d))
		}
		c := &lists{}
		if err := p.compile(c, key, l); err != nil {
			return fail(fmt.Errorf("domains.%q: %w", d, err))
		}
		p.domains[key] = c
	}
	for a, l := range s.Accounts {
		if _, d, ok := mailaddr.Split(a); !ok || d == "" {
			return fail(fmt.Errorf("accounts.%q: not an address: want [plugins.bwl.accounts.\"bob@example.test\"]", a))
		}
		key := lookup.Key(a)
		c := &lists{}
		if err := p.compile(c, key, l); err != nil {
			return fail(fmt.Errorf("accounts.%q: %w", a, err))
		}
		p.accounts[key] = c
	}
	return p, nil
}

func (p *Plugin) compile(c *lists, owner string, l Lists) error {
	c.owner = owner
	var err error
	if c.allowClients, err = p.networks("allow_clients", l.AllowClients); err != nil {
		return err
	}
	if c.blockClients, err = p.networks("block_clients", l.BlockClients); err != nil {
		return err
	}
	if c.allowSenders, err = p.table("allow_senders", l.AllowSenders); err != nil {
		return err
	}
	c.blockSenders, err = p.table("block_senders", l.BlockSenders)
	return err
}

func (p *Plugin) networks(name string, s lookup.Spec) (*lookup.Networks, error) {
	if !s.IsSet() {
		return nil, nil
	}
	n, err := lookup.OpenNetworks(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.closers = append(p.closers, n.Close)
	return n, nil
}

func (p *Plugin) table(name string, s lookup.Spec) (lookup.Table, error) {
	if !s.IsSet() {
		return nil, nil
	}
	t, err := lookup.Open(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.closers = append(p.closers, func() error { return lookup.Close(t) })
	return t, nil
}

// Close closes the lookup tables.
func (p *Plugin) Close() error {
	for _, c := range p.closers {
		c()
	}
	return nil
}

// deferred is the answer when a table cannot answer: never accept.
func deferred(err error) hooks.Result {
	return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Msg: "cannot check the black and white lists now; try again later", Enhanced: [3]int{4, 3, 0}, Err: err}
}

func blocked(what string) hooks.Result {
	return hooks.Result{Code: hooks.Deny, ReplyCode: 550, Msg: what, Enhanced: [3]int{5, 7, 1}}
}

// Connect sets connection.NoteWhitelisted when the client is in the
// global allow_clients. Client blacklists are applied at RCPT, where the
// per-domain lists are known too.
func (p *Plugin) Connect(ctx context.Context, c *connection.Connection) hooks.Result {
	if p.global.allowClients == nil {
		return hooks.Result{}
	}
	rule, ok, err := p.global.allowClients.Match(ctx, c.RemoteIP())
	if err != nil {
		return hooks.Result{} // the whitelist only spares checks: without it, mail is judged as any other
	}
	if ok {
		connection.NoteWhitelisted.Set(&c.Notes, "client "+rule)
	}
	return hooks.Result{}
}

// Mail refuses a sender in the global block_senders and notes one in the
// global allow_senders.
func (p *Plugin) Mail(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	if from == "" {
		return hooks.Result{}
	}
	return p.senders(ctx, tx, &p.global, from)
}

// senders applies one owner's sender lists.
func (p *Plugin) senders(ctx context.Context, tx *transaction.Transaction, l *lists, from string) hooks.Result {
	if l.blockSenders != nil {
		key, _, ok, err := lookup.MatchAddress(ctx, l.blockSenders, from)
		if err != nil {
			return deferred(err)
		}
		if ok {
			return blocked(fmt.Sprintf("sender <%s> is blacklisted%s (%s)", from, by(l.owner), key))
		}
	}
	if l.allowSenders != nil {
		key, _, ok, err := lookup.MatchAddress(ctx, l.allowSenders, from)
		if err != nil {
			return hooks.Result{}
		}
		if ok {
			transaction.NoteWhitelisted.Set(&tx.Notes, "sender "+key+by(l.owner))
		}
	}
	return hooks.Result{}
}

func by(owner string) string {
	if owner == "" {
		return ""
	}
	return " by " + owner
}

// Rcpt applies the global client and recipient lists, then the lists of
// the recipient's account and domain. It never accepts: it refuses or
// declines.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	rcpt = strings.TrimSuffix(strings.TrimPrefix(rcpt, "<"), ">")
	if r := p.clients(ctx, c, tx, &p.global); r.Code != hooks.Declined {
		return r
	}
	if p.blockRecipients != nil {
		key, _, ok, err := lookup.MatchAddress(ctx, p.blockRecipients, rcpt)
		if err != nil {
			return deferred(err)
		}
		if ok {
			return blocked(fmt.Sprintf("recipient <%s> is blacklisted (%s)", rcpt, key))
		}
	}
	if p.allowRecipients != nil {
		if key, _, ok, err := lookup.MatchAddress(ctx, p.allowRecipients, rcpt); err == nil && ok {
			transaction.NoteWhitelisted.Set(&tx.Notes, "recipient "+key)
		}
	}
	var owners []*lists
	if l := p.accounts[lookup.Key(rcpt)]; l != nil {
		owners = append(owners, l)
	}
	if _, d, ok := mailaddr.Split(rcpt); ok {
		if cd, ok := mailaddr.CanonicalDomain(d); ok && p.domains[cd] != nil {
			owners = append(owners, p.domains[cd])
		}
	}
	for _, l := range owners {
		if r := p.clients(ctx, c, tx, l); r.Code != hooks.Declined {
			return r
		}
		if tx.Sender != "" {
			if r := p.senders(ctx, tx, l, tx.Sender); r.Code != hooks.Declined {
				return r
			}
		}
	}
	return hooks.Result{}
}

// clients applies one owner's client lists. A global allow is noted at
// connect; an owner's allow notes the transaction.
func (p *Plugin) clients(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, l *lists) hooks.Result {
	ip := c.RemoteIP()
	if l.blockClients != nil {
		rule, ok, err := l.blockClients.Match(ctx, ip)
		if err != nil {
			return deferred(err)
		}
		if ok {
			return blocked(fmt.Sprintf("client %s is blacklisted%s (%s)", ip, by(l.owner), rule))
		}
	}
	if l.owner != "" && l.allowClients != nil {
		if rule, ok, err := l.allowClients.Match(ctx, ip); err == nil && ok {
			transaction.NoteWhitelisted.Set(&tx.Notes, "client "+rule+by(l.owner))
		}
	}
	return hooks.Result{}
}
