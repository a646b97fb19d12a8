// Package senderlogin refuses an authenticated client's MAIL FROM when the
// address is not the client's own: Postfix's reject_sender_login_mismatch
// and Valvula's mod-slm. On a submission port it stops a user who logged in
// as alice@example.test from sending as bob@example.test (or as the CEO).
//
// Only authenticated connections are checked (c.AuthUser set); others,
// and the null sender <>, are declined. An address the login owns is
// declined too, so the next plugin of the mail hook still runs: senderlogin
// only ever refuses.
//
// The sender_logins setting is a lookup table with the meaning of
// Postfix's smtpd_sender_login_maps: the sender address (then "@domain")
// maps to the logins that own it. A login it names may send as that
// address in addition to what mode, domain and allow permit; a table that
// cannot answer defers the sender (451 4.3.0).
package senderlogin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/lookup"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("senderlogin", New) }

// Settings are the keys of a [plugins.senderlogin] table.
type Settings struct {
	// Mode is "full" (the default: the sender must be the login),
	// "same-domain" (the sender's domain must be the login's domain) or
	// "disabled" (accept every sender).
	Mode string `toml:"mode"`
	// Domain completes a login without '@': with domain = "example.test"
	// the login "alice" owns alice@example.test. Without it such a login
	// owns only the addresses Allow gives it.
	Domain string `toml:"domain"`
	// Allow maps a login to the other addresses it may send as:
	// "sales@example.test", "*@example.test" (every address of the
	// domain) or "*" (any address).
	Allow Allow `toml:"allow"`
	// SenderLogins is Postfix's smtpd_sender_login_maps: a lookup table
	// (docs/lookup.md) whose key is the sender address, then "@domain",
	// and whose value is the logins that own it, separated by commas
	// and/or spaces. Unset, only mode, domain and allow decide.
	SenderLogins lookup.Spec `toml:"sender_logins"`
}

// Allow is the allow table: login = ["address", ...].
type Allow map[string][]string

// UnmarshalTOML decodes the table, refusing any other shape: the TOML
// decoder would silently drop a list (allow = ["a@b"]) given to a map.
func (a *Allow) UnmarshalTOML(v any) error {
	const want = `want a table of login = ["address", ...]: [plugins.senderlogin.allow] "alice@example.test" = ["sales@example.test"]`
	table, ok := v.(map[string]any)
	if !ok {
		return errors.New(want) // the decoder prefixes "allow: "
	}
	m := make(Allow, len(table))
	for login, list := range table {
		items, ok := list.([]any)
		if !ok {
			return fmt.Errorf("allow.%q: want a list of addresses such as [\"sales@example.test\"]", login)
		}
		for _, it := range items {
			addr, ok := it.(string)
			if !ok {
				return fmt.Errorf("allow.%q: want a list of addresses such as [\"sales@example.test\"]", login)
			}
			m[login] = append(m[login], addr)
		}
		if m[login] == nil {
			m[login] = []string{}
		}
	}
	*a = m
	return nil
}

// NoteMismatch is the connection note set to the sender address refused
// last (a refused MAIL leaves no transaction to note it on).
var NoteMismatch = notes.NewKey[string]("senderlogin.mismatch")

// The modes.
const (
	modeFull       = "full"
	modeSameDomain = "same-domain"
	modeDisabled   = "disabled"
)

// address is an address split at its last '@', the domain in
// mailaddr.CanonicalDomain's form. A login without '@' (and no domain
// setting) has hasDomain false, and so has an address whose domain is
// empty or invalid (IDNA refuses it): its local is then the whole string,
// and it owns nothing and matches no domain.
type address struct {
	local, domain string
	hasDomain     bool
}

func (a address) String() string {
	if !a.hasDomain {
		return a.local
	}
	return a.local + "@" + a.domain
}

// pattern is one entry of an allow list.
type pattern struct {
	any   bool // "*": any address
	all   bool // "*@domain": every address of domain
	exact address
}

func (p pattern) match(a address) bool {
	switch {
	case p.any:
		return true
	case !a.hasDomain:
		return false
	case p.all:
		return a.domain == p.exact.domain
	default:
		return a == p.exact
	}
}

// Plugin is a senderlogin instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	mode   string
	domain string
	allow  map[string][]pattern // by canonical login
	owners lookup.Table         // sender_logins; nil when unset
}

var _ hooks.Mail = (*Plugin)(nil)

// New builds a senderlogin instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Mode: modeFull}
	if err := decode(&s); err != nil {
		return nil, err
	}
	switch s.Mode {
	case modeFull, modeSameDomain, modeDisabled:
	default:
		return nil, fmt.Errorf("mode = %q: want %q, %q or %q", s.Mode, modeFull, modeSameDomain, modeDisabled)
	}
	p := &Plugin{mode: s.Mode, allow: map[string][]pattern{}}
	if s.Domain != "" {
		d, ok := mailaddr.CanonicalDomain(strings.TrimSpace(s.Domain))
		if !ok {
			return nil, fmt.Errorf("domain = %q: want a bare domain such as \"example.test\" (an internationalized one as U-labels or xn-- A-labels)", s.Domain)
		}
		p.domain = d
	}
	for login, addrs := range s.Allow {
		if strings.TrimSpace(login) == "" {
			return nil, fmt.Errorf("allow: an empty login: each key is a login as the client sends it in AUTH (\"alice@example.test\")")
		}
		if _, d, ok := mailaddr.Split(login); ok && d != "" {
			if _, ok := mailaddr.CanonicalDomain(d); !ok {
				return nil, fmt.Errorf("allow.%q: %+q is not a valid domain", login, d)
			}
		}
		key := p.login(login).String()
		for _, a := range addrs {
			pat, err := parsePattern(a)
			if err != nil {
				return nil, fmt.Errorf("allow.%q: %q %v", login, a, err)
			}
			p.allow[key] = append(p.allow[key], pat)
		}
	}
	if s.SenderLogins.IsSet() {
		t, err := lookup.Open(s.SenderLogins)
		if err != nil {
			return nil, fmt.Errorf("sender_logins: %w", err)
		}
		p.owners = t
	}
	return p, nil
}

// Close closes the sender_logins table.
func (p *Plugin) Close() error {
	if p.owners == nil {
		return nil
	}
	return lookup.Close(p.owners)
}

// parsePattern reads an allow entry: "sales@example.test",
// "*@example.test" or "*".
func parsePattern(s string) (pattern, error) {
	if s == "*" {
		return pattern{any: true}, nil
	}
	a, ok := parseAddress(s)
	if !ok || a.local == "" || a.domain == "" || strings.ContainsAny(s, " \t<>") || a.domain == "*" {
		return pattern{}, fmt.Errorf("is not an address: want \"sales@example.test\", \"*@example.test\" (every address of the domain) or \"*\" (any address)")
	}
	return pattern{all: a.local == "*", exact: a}, nil
}

// parseAddress splits s at its last '@' and puts the domain in canonical
// form. Domains are compared as DNS names: as A-labels, with ASCII-only
// case folding (mailaddr); local parts are compared exactly, as RFC 5321
// 2.4 says only the mailbox's own host may interpret them. ok is false
// when s has no '@'.
func parseAddress(s string) (address, bool) {
	local, d, ok := mailaddr.Split(s)
	if !ok {
		return address{local: s}, false
	}
	canon, valid := mailaddr.CanonicalDomain(d)
	if !valid {
		// "alice@" or "alice@\u212Aernel.test": no domain, and not "alice".
		return address{local: s}, true
	}
	return address{local: local, domain: canon, hasDomain: true}, true
}

// login is the address a login owns: the login itself when it has an '@'
// (no domain when nothing follows it), else the login at the domain
// setting (or no domain at all).
func (p *Plugin) login(user string) address {
	if a, ok := parseAddress(user); ok {
		return a
	}
	if p.domain != "" {
		return address{local: user, domain: p.domain, hasDomain: true}
	}
	return address{local: user}
}

// Mail refuses the sender when the authenticated login does not own it.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, _ *transaction.Transaction, from string) hooks.Result {
	if p.mode == modeDisabled || c.AuthUser == "" || from == "" {
		return hooks.Result{}
	}
	if p.owns(c.AuthUser, from) {
		return hooks.Result{}
	}
	if p.owners != nil {
		owned, err := p.tableOwns(ctx, c.AuthUser, from)
		if err != nil {
			return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 3, 0},
				Msg: "<" + from + ">: cannot check the sender's owner now; try again later", Err: fmt.Errorf("sender_logins: %w", err)}
		}
		if owned {
			return hooks.Result{}
		}
	}
	NoteMismatch.Set(&c.Notes, from)
	return hooks.Result{
		Code:      hooks.Deny,
		ReplyCode: 553,
		Enhanced:  [3]int{5, 7, 1},
		Msg:       "<" + from + ">: Sender address rejected: not owned by user " + c.AuthUser,
	}
}

// owns reports whether user may send as from.
func (p *Plugin) owns(user, from string) bool {
	login := p.login(user)
	sender, _ := parseAddress(from)
	switch {
	case !login.hasDomain || !sender.hasDomain:
		// A login with no domain owns nothing by itself.
	case p.mode == modeFull && sender == login:
		return true
	case p.mode == modeSameDomain && sender.domain == login.domain:
		return true
	}
	for _, pat := range p.allow[login.String()] {
		if pat.match(sender) {
			return true
		}
	}
	return false
}

// tableOwns reports whether the sender_logins table names user among the
// owners of from: the value of the full address's entry, or when there is
// none, of "@domain" (Postfix's order for an address). Logins compare in
// lookup.Key's form, so ASCII case does not matter (Postfix compares them
// case-insensitively too).
func (p *Plugin) tableOwns(ctx context.Context, user, from string) (bool, error) {
	keys := []string{lookup.Key(from)}
	if _, d, ok := mailaddr.Split(from); ok && d != "" {
		keys = append(keys, lookup.Key("@"+d))
	}
	for _, k := range keys {
		v, found, err := p.owners.Lookup(ctx, k)
		if err != nil {
			return false, err
		}
		if !found {
			continue
		}
		login := lookup.Key(user)
		for _, o := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			if lookup.Key(o) == login {
				return true, nil
			}
		}
		return false, nil // the address has owners, and user is not one
	}
	return false, nil
}
