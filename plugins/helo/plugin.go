// Package helo checks the name a client gives in HELO or EHLO: its
// syntax, a bare IP address, an address literal that is not the client's,
// a client claiming the server's own name or address, a name that is not
// fully qualified, and optionally that the name resolves to the client's
// address and that the client's reverse DNS gives the name. It is
// qpsmtpd's helo plugin and Postfix's reject_invalid_helo_hostname,
// reject_non_fqdn_helo_hostname and reject_unknown_helo_hostname.
//
// The checks run at HELO/EHLO and leave their findings in the connection
// note NoteProblems; each check has its own action, and a refusal comes at
// MAIL by default (reject_at), so the log shows the sender.
package helo

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("helo", New) }

// Settings are the keys of a [plugins.helo] table. Each check is "off",
// "note" (only NoteProblems), "defer" (a temporary refusal) or "deny" (a
// permanent one).
type Settings struct {
	// RejectAt is where a refusal happens: "helo" (the HELO/EHLO itself),
	// "mail" (default: each MAIL) or "rcpt" (each RCPT but postmaster's).
	RejectAt string `toml:"reject_at"`
	// Invalid: a name that is no RFC 5321 domain or address literal.
	// Default "deny".
	Invalid string `toml:"invalid"`
	// BareIP: an IP address not in brackets ("192.0.2.1" for
	// "[192.0.2.1]"). Default "deny".
	BareIP string `toml:"bare_ip"`
	// Ours: a client that is not local claims the server's name or one of
	// its addresses. Default "deny".
	Ours string `toml:"ours"`
	// Literal: an address literal that is not the client's address.
	// Default "note".
	Literal string `toml:"literal"`
	// RequireFQDN: a name without a dot ("localhost", "PC-01"). Default
	// "note".
	RequireFQDN string `toml:"require_fqdn"`
	// Forward: the name does not exist or does not resolve to the
	// client's address (A/AAAA). Default "off".
	Forward string `toml:"forward"`
	// Reverse: the client's reverse DNS (PTR) does not give the name.
	// Default "off".
	Reverse string `toml:"reverse"`
	// LocalNames are more names of this server, besides the listener's
	// hostname, that no foreign client may claim.
	LocalNames []string `toml:"local_names"`
	// LocalAddresses are more addresses of this server, besides the one
	// the client connected to.
	LocalAddresses []string `toml:"local_addresses"`
	// DNS is the resolver for forward and reverse (the [dns] table).
	DNS resolver.Settings `toml:"dns"`
}

// NoteProblems (connection) lists what the checks found in the last
// HELO/EHLO name, in the order the refusal picks: "ours", "invalid",
// "bare_ip", "literal", "not_fqdn", "forward_not_found",
// "forward_mismatch", "forward_tempfail", "reverse_mismatch",
// "reverse_tempfail". Only checks that are not "off" add to it; it is
// absent when the name passed them all.
var NoteProblems = notes.NewKey[[]string]("helo.problems")

// action is what a check does with a problem.
type action int

const (
	off action = iota
	note
	deferIt
	deny
)

func parseAction(key, v string) (action, error) {
	switch v {
	case "off":
		return off, nil
	case "note":
		return note, nil
	case "defer":
		return deferIt, nil
	case "deny":
		return deny, nil
	}
	return off, fmt.Errorf("%s = %q: want \"off\", \"note\", \"defer\" or \"deny\"", key, v)
}

// problem is one thing a check can find, with its permanent reply.
type problem struct {
	check   string // the setting that governs it
	temp    bool   // a DNS failure: always a 450
	code    int
	enh     [3]int
	text    string
	errText string
}

var problems = map[string]problem{
	"ours":              {check: "ours", code: 550, enh: [3]int{5, 7, 1}, text: "You are not me", errText: "a foreign client claims this server's name or address"},
	"invalid":           {check: "invalid", code: 501, enh: [3]int{5, 5, 2}, text: "Invalid name", errText: "not a valid domain name or address literal"},
	"bare_ip":           {check: "bare_ip", code: 501, enh: [3]int{5, 5, 2}, text: "Invalid name; an address goes in brackets", errText: "an IP address without brackets"},
	"literal":           {check: "literal", code: 550, enh: [3]int{5, 7, 1}, text: "Address literal is not your address", errText: "an address literal that is not the client's address"},
	"not_fqdn":          {check: "require_fqdn", code: 504, enh: [3]int{5, 5, 2}, text: "need fully-qualified hostname", errText: "not a fully-qualified domain name"},
	"forward_not_found": {check: "forward", code: 550, enh: [3]int{5, 7, 1}, text: "Host not found", errText: "the name has no address"},
	"forward_mismatch":  {check: "forward", code: 550, enh: [3]int{5, 7, 1}, text: "Host name does not resolve to your address", errText: "the name does not resolve to the client's address"},
	"forward_tempfail":  {check: "forward", temp: true, code: 450, enh: [3]int{4, 7, 1}, text: "Host not found", errText: "the name's lookup failed"},
	"reverse_mismatch":  {check: "reverse", code: 550, enh: [3]int{5, 7, 1}, text: "Host name is not your reverse DNS name", errText: "the client's reverse DNS does not give the name"},
	"reverse_tempfail":  {check: "reverse", temp: true, code: 450, enh: [3]int{4, 7, 1}, text: "Reverse DNS lookup failed", errText: "the client's reverse DNS lookup failed"},
}

// Plugin is a helo instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	rejectAt   string
	actions    map[string]action // by check name
	localNames []string          // canonical
	localAddrs []netip.Addr      // unmapped
	r          *resolver.Resolver
}

var (
	_ hooks.Helo = (*Plugin)(nil)
	_ hooks.Ehlo = (*Plugin)(nil)
	_ hooks.Mail = (*Plugin)(nil)
	_ hooks.Rcpt = (*Plugin)(nil)
)

// New builds a helo instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{RejectAt: "mail", Invalid: "deny", BareIP: "deny", Ours: "deny", Literal: "note", RequireFQDN: "note", Forward: "off", Reverse: "off"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{rejectAt: s.RejectAt, actions: map[string]action{}}
	switch s.RejectAt {
	case "helo", "mail", "rcpt":
	default:
		return nil, fmt.Errorf("reject_at = %q: want \"helo\", \"mail\" or \"rcpt\"", s.RejectAt)
	}
	for _, c := range []struct{ key, v string }{
		{"invalid", s.Invalid}, {"bare_ip", s.BareIP}, {"ours", s.Ours}, {"literal", s.Literal},
		{"require_fqdn", s.RequireFQDN}, {"forward", s.Forward}, {"reverse", s.Reverse},
	} {
		a, err := parseAction(c.key, c.v)
		if err != nil {
			return nil, err
		}
		p.actions[c.key] = a
	}
	for _, n := range s.LocalNames {
		cn, ok := mailaddr.CanonicalDomain(n)
		if !ok || strings.HasPrefix(cn, "[") {
			return nil, fmt.Errorf("local_names: %q is not a domain name", n)
		}
		p.localNames = append(p.localNames, cn)
	}
	for _, a := range s.LocalAddresses {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("local_addresses: %q is not an IP address", a)
		}
		p.localAddrs = append(p.localAddrs, ip.Unmap())
	}
	if p.actions["forward"] != off || p.actions["reverse"] != off {
		if err := s.DNS.Check(); err != nil {
			return nil, err
		}
		r, err := s.DNS.New()
		if err != nil {
			return nil, err
		}
		p.r = r
	}
	return p, nil
}

// Helo checks the name given with HELO.
func (p *Plugin) Helo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.greet(ctx, c, host)
}

// Ehlo checks the name given with EHLO.
func (p *Plugin) Ehlo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.greet(ctx, c, host)
}

// greet checks host. The name of a relay client, an authenticated one or a
// whitelisted one is not judged.
func (p *Plugin) greet(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	NoteProblems.Delete(&c.Notes)
	if c.Exempt() {
		return hooks.Result{}
	}
	found := p.check(ctx, c, host)
	if len(found) == 0 {
		return hooks.Result{}
	}
	NoteProblems.Set(&c.Notes, found)
	if p.rejectAt != "helo" {
		return hooks.Result{}
	}
	return p.refusal(found, host)
}

// Mail refuses the sender when reject_at = "mail" and the HELO name has a
// problem whose check refuses.
func (p *Plugin) Mail(_ context.Context, c *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	if p.rejectAt != "mail" || c.Exempt() {
		return hooks.Result{}
	}
	return p.refusal(NoteProblems.Get(&c.Notes), c.Helo)
}

// Rcpt refuses each recipient but postmaster when reject_at = "rcpt" and
// the HELO name has a problem whose check refuses. It declines otherwise:
// list helo before the plugin that accepts recipients.
func (p *Plugin) Rcpt(_ context.Context, c *connection.Connection, _ *transaction.Transaction, rcpt string) hooks.Result {
	if p.rejectAt != "rcpt" || c.Exempt() {
		return hooks.Result{}
	}
	if local, _, _ := mailaddr.Split(rcpt); strings.EqualFold(local, "postmaster") {
		return hooks.Result{} // RFC 5321 4.5.1: postmaster is always reachable
	}
	return p.refusal(NoteProblems.Get(&c.Notes), c.Helo)
}

// refusal returns the refusal for the first problem whose check defers or
// denies, or no opinion.
func (p *Plugin) refusal(found []string, host string) hooks.Result {
	for _, name := range found {
		pr := problems[name]
		a := p.actions[pr.check]
		if a != deny && a != deferIt {
			continue
		}
		r := hooks.Result{
			Msg: "<" + host + ">: Helo command rejected: " + pr.text,
			Err: fmt.Errorf("HELO name %q: %s (%s)", host, pr.errText, name),
		}
		if a == deny && !pr.temp {
			r.Code, r.ReplyCode, r.Enhanced = hooks.Deny, pr.code, pr.enh
		} else {
			r.Code, r.ReplyCode, r.Enhanced = hooks.DenySoft, 450, [3]int{4, pr.enh[1], pr.enh[2]}
		}
		return r
	}
	return hooks.Result{}
}

// check returns the problems of host, in the order refusal picks them.
func (p *Plugin) check(ctx context.Context, c *connection.Connection, host string) []string {
	var found []string
	add := func(name string) {
		if p.actions[problems[name].check] != off {
			found = append(found, name)
		}
	}
	client := c.RemoteIP().Unmap()
	name := strings.TrimSuffix(host, ".")

	var ip netip.Addr // the address host names, bare or literal
	literal, bare, valid := false, false, false
	if strings.HasPrefix(host, "[") {
		if canon, ok := mailaddr.CanonicalDomain(host); ok {
			if a, err := netip.ParseAddr(strings.TrimPrefix(strings.Trim(canon, "[]"), "IPv6:")); err == nil {
				literal, ip = true, a.Unmap()
			}
		}
	} else if a, err := netip.ParseAddr(host); err == nil && a.Zone() == "" {
		bare, ip = true, a.Unmap()
	} else {
		valid = validDomain(name)
	}

	if p.isLocal(client, c) {
		// A client on this host may use its name.
	} else if ip.IsValid() && p.isLocal(ip, c) {
		add("ours")
	} else if valid {
		canon, _ := mailaddr.CanonicalDomain(name)
		if canon == mustCanon(c.Hostname) || slices.Contains(p.localNames, canon) {
			add("ours")
		}
	}
	switch {
	case bare:
		add("bare_ip")
	case literal:
		if ip != client {
			add("literal")
		}
	case !valid:
		add("invalid")
		return found
	}
	if !valid {
		return found
	}
	if !strings.Contains(name, ".") {
		add("not_fqdn")
		return found // a name without a dot is never looked up (no search list)
	}
	if p.actions["forward"] != off {
		addrs, err := p.r.LookupNetIP(ctx, "ip", name+".")
		switch {
		case resolver.IsNotFound(err) || err == nil && len(addrs) == 0:
			add("forward_not_found")
		case err != nil:
			add("forward_tempfail")
		case !containsAddr(addrs, client):
			add("forward_mismatch")
		}
	}
	if p.actions["reverse"] != off {
		names, err := p.r.LookupAddr(ctx, client.String())
		switch {
		case err != nil && !resolver.IsNotFound(err):
			add("reverse_tempfail")
		case !containsName(names, name):
			add("reverse_mismatch")
		}
	}
	return found
}

// isLocal reports whether ip is one of this server's addresses: the one
// the client connected to, local_addresses, or a loopback address.
func (p *Plugin) isLocal(ip netip.Addr, c *connection.Connection) bool {
	return ip.IsLoopback() || ip == c.Local.Addr().Unmap() || containsAddr(p.localAddrs, ip)
}

// validDomain reports whether name (without its trailing dot) is an RFC
// 5321 Domain: dot-separated labels of letters, digits and hyphens (not
// at either end), each 1 to 63 octets, 253 in all, whose last label is
// not all digits. Underscores are taken, as Postfix takes them, and a
// name with UTF-8 must be a valid IDNA name.
func validDomain(name string) bool {
	if !isASCII(name) {
		a, ok := mailaddr.CanonicalDomain(name)
		if !ok {
			return false
		}
		name = a
	}
	if name == "" || len(name) > 253 {
		return false
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			ch := l[i]
			if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func mustCanon(d string) string {
	c, _ := mailaddr.CanonicalDomain(d)
	return c
}

func containsAddr(list []netip.Addr, ip netip.Addr) bool {
	for _, a := range list {
		if a.Unmap() == ip {
			return true
		}
	}
	return false
}

// containsName reports whether one of the PTR names is name.
func containsName(names []string, name string) bool {
	for _, n := range names {
		if mailaddr.EqualDomains(n, name) {
			return true
		}
	}
	return false
}
