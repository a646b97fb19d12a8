// Package rcptok is the open-relay guard: it accepts a recipient whose
// domain is one of the local domains, or any recipient of a relay client,
// and refuses the rest with "relaying denied". It is qpsmtpd's rcpt_ok and
// Haraka's rcpt_to.in_host_list.
//
// The local domains come from the domains setting and from a qmail-style
// rcpthosts file. An entry "example.com" matches that domain; an entry
// ".example.com" matches every subdomain of example.com (not example.com
// itself), as in qmail's rcpthosts.
//
// Domains are compared in the canonical form of package mailaddr: A-labels
// with ASCII-only case folding, so bücher.example and xn--bcher-kva.example
// are one domain, while "victim@\u212Aernel.test" (a Kelvin sign, which
// strings.ToLower would turn into 'k') is not at kernel.test: a domain
// that IDNA refuses is never local.
//
// rcptok answers OK for the recipients it accepts, which ends the rcpt
// hook: plugins that may refuse a local recipient (maxrcpt, a spam trap
// list) must come before it in the listener's plugin list.
package rcptok

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/lookup"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("rcptok", New) }

// Settings are the keys of a [plugins.rcptok] table.
type Settings struct {
	// Domains are the local domains: a list (".example.com" matches every
	// subdomain of example.com) or a lookup table ({ file = ... },
	// { cdb = ... }, { redis = ... }, { pgsql = ..., query = ... },
	// { mysql = ..., query = ... }; see docs/lookup.md).
	Domains lookup.Spec `toml:"domains"`
	// PostfixMainCf is the path of a Postfix main.cf whose mydestination,
	// virtual_mailbox_domains, virtual_alias_domains and relay_domains are
	// local domains too (a Sluice in front of that Postfix).
	PostfixMainCf string `toml:"postfix_main_cf"`
	// Rcpthosts is the path of a qmail-style rcpthosts file: one domain a
	// line, '#' starts a comment. It is read once, when the plugin is built
	// (at start and at each reload).
	Rcpthosts string `toml:"rcpthosts"`
	// RelayClientsOK accepts any recipient from a client whose
	// connection has Relay set (by the relay plugin or by AUTH). Default
	// true.
	RelayClientsOK bool `toml:"relay_clients_ok"`
}

// NoteRelayed is the transaction note set to true when a recipient outside
// the local domains was accepted because the client may relay: the message
// is (at least partly) outbound.
var NoteRelayed = notes.NewKey[bool]("rcptok.relayed")

// Plugin is an rcptok instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	// exact holds the domains that match as written ("example.com",
	// "[192.0.2.1]"), suffixes the wildcard entries with their leading dot
	// (".example.com"), both in mailaddr.CanonicalDomain's form.
	exact    map[string]bool
	suffixes map[string]bool
	relayOK  bool
	// tables are the domain tables that are not in memory (cdb, redis,
	// SQL) and the Postfix domains.
	tables lookup.Local
}

var _ hooks.Rcpt = (*Plugin)(nil)

// New builds an rcptok instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{RelayClientsOK: true}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{exact: map[string]bool{}, suffixes: map[string]bool{}, relayOK: s.RelayClientsOK}
	switch s.Domains.Backend() {
	case "list":
		for _, d := range s.Domains.List {
			if err := p.add(d); err != nil {
				return nil, fmt.Errorf("domains: %w", err)
			}
		}
	case "file":
		if err := p.readRcpthosts("domains", s.Domains.File); err != nil {
			return nil, err
		}
	default:
		t, err := lookup.Open(s.Domains)
		if err != nil {
			return nil, fmt.Errorf("domains: %w", err)
		}
		p.tables.AddDomains(t)
	}
	if s.PostfixMainCf != "" {
		t, err := lookup.PostfixDomains(s.PostfixMainCf)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("postfix_main_cf: %w", err)
		}
		p.tables.AddDomains(t)
	}
	if s.Rcpthosts != "" {
		if err := p.readRcpthosts("rcpthosts", s.Rcpthosts); err != nil {
			p.Close()
			return nil, err
		}
	}
	if len(p.exact)+len(p.suffixes) == 0 && p.tables.Empty() && !p.relayOK {
		return nil, fmt.Errorf("domains and rcpthosts are both empty and relay_clients_ok is false: rcptok would refuse every recipient; list the local domains")
	}
	return p, nil
}

// Close closes the lookup tables.
func (p *Plugin) Close() error { return p.tables.Close() }

// readRcpthosts adds the domains of a qmail rcpthosts file (the domains
// setting's file backend reads the same format).
func (p *Plugin) readRcpthosts(setting, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: cannot read the file: %w", setting, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if err := p.add(line); err != nil {
			return fmt.Errorf("%s: %s:%d: %w", setting, path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", setting, path, err)
	}
	return nil
}

// add checks one domain entry and stores it.
func (p *Plugin) add(entry string) error {
	d := strings.TrimSpace(entry)
	switch {
	case d == "" || d == ".":
		return fmt.Errorf("%q is not a domain", entry)
	case strings.HasPrefix(d, "*."):
		return fmt.Errorf("%q: write %q to match every subdomain", entry, d[1:])
	case strings.ContainsAny(d, "@ \t*!%,;<>\"\\/"):
		return fmt.Errorf("%q is not a domain: want a name like \"example.com\", \".example.com\" or a literal like \"[192.0.2.1]\"", entry)
	case strings.HasPrefix(d, "["):
		lit, ok := mailaddr.CanonicalDomain(d)
		if !ok {
			return fmt.Errorf("%q is not an address literal: want \"[192.0.2.1]\" or \"[IPv6:2001:db8::1]\"", entry)
		}
		p.exact[lit] = true
		return nil
	}
	wildcard := strings.HasPrefix(d, ".")
	if wildcard {
		d = d[1:]
	}
	canon, ok := mailaddr.CanonicalDomain(d)
	if !ok {
		return fmt.Errorf("%+q is not a domain: want letters, digits and hyphens in dot-separated labels, or a valid internationalized name (U-labels or xn-- A-labels)", entry)
	}
	if wildcard {
		p.suffixes["."+canon] = true
	} else {
		p.exact[canon] = true
	}
	return nil
}

// Rcpt accepts local recipients and the recipients of relay clients, and
// refuses everything else with 550 5.7.1 "relaying denied".
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	rcpt = strings.TrimSuffix(strings.TrimPrefix(rcpt, "<"), ">")

	// RFC 5321 4.5.1: <Postmaster>, without a domain, must be accepted.
	// ASCII case only: "po\u017Ftmaster" (a long s) is not postmaster.
	if mailaddr.LowerASCII(rcpt) == "postmaster" {
		return hooks.Accept("")
	}

	local, domain, hasAt := mailaddr.Split(rcpt)
	if hasAt && local != "" && !strings.ContainsAny(local, "%!@") {
		ok, err := p.IsLocalDomain(ctx, domain)
		if err != nil {
			return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Msg: "cannot check the recipient's domain now; try again later", Enhanced: [3]int{4, 3, 0}, Err: err}
		}
		if ok {
			return hooks.Accept("")
		}
	}

	// Everything below would be relaying (or is a relay trick: a
	// percent-hack "user%other@local", a bang path "other!user@local" or a
	// source route "@relay:user@local"): only relay clients get it.
	if p.relayOK && c.Relay {
		NoteRelayed.Set(&tx.Notes, true)
		return hooks.Accept("")
	}
	return denied
}

var denied = hooks.Result{Code: hooks.Deny, Msg: "relaying denied", Enhanced: [3]int{5, 7, 1}}

// IsLocalDomain reports whether domain (as written in an address) is a
// local domain: in the inline list, then in the lookup tables. A domain
// without a canonical form (IDNA refuses it) never is. An error means a
// table could not answer.
func (p *Plugin) IsLocalDomain(ctx context.Context, domain string) (bool, error) {
	if p.isLocal(domain) {
		return true, nil
	}
	return p.tables.IsLocalDomain(ctx, domain)
}

// isLocal reports whether domain is in the in-memory lists.
func (p *Plugin) isLocal(domain string) bool {
	d, ok := mailaddr.CanonicalDomain(domain)
	if !ok {
		return false
	}
	if p.exact[d] {
		return true
	}
	if strings.HasPrefix(d, "[") {
		return false // literals have no subdomains
	}
	// "a.b.example.com" matches ".b.example.com" and ".example.com" and
	// ".com", as qmail's addrallowed does.
	for suffix := range mailaddr.ParentSuffixes(d) {
		if p.suffixes[suffix] {
			return true
		}
	}
	return false
}
