package lookup

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluice-mta/sluice/mailaddr"
)

// MatchDomain looks a domain up as itself, then as each parent wildcard
// (".b.example.com", ".example.com", ".com"), as qmail's rcpthosts and
// Postfix's parent-domain matching do. It returns the key that matched.
// A domain IDNA refuses matches nothing.
func MatchDomain(ctx context.Context, t Table, domain string) (key, value string, found bool, err error) {
	d, ok := mailaddr.CanonicalDomain(domain)
	if !ok {
		return "", "", false, nil
	}
	if v, ok, err := t.Lookup(ctx, d); err != nil || ok {
		return d, v, ok, err
	}
	if strings.HasPrefix(d, "[") {
		return "", "", false, nil // literals have no parents
	}
	for suffix := range mailaddr.ParentSuffixes(d) {
		if v, ok, err := t.Lookup(ctx, suffix); err != nil || ok {
			return suffix, v, ok, err
		}
	}
	return "", "", false, nil
}

// MatchAddress looks an address up as itself (local@domain), then its
// domain as MatchDomain does. It returns the key that matched.
func MatchAddress(ctx context.Context, t Table, addr string) (key, value string, found bool, err error) {
	_, domain, ok := mailaddr.Split(addr)
	if !ok {
		return "", "", false, nil
	}
	k := Key(addr)
	if v, ok, err := t.Lookup(ctx, k); err != nil || ok {
		return k, v, ok, err
	}
	return MatchDomain(ctx, t, domain)
}

// Networks is a table of client networks. From a list or a file its
// entries are CIDR prefixes or single addresses, searched by prefix; from
// another backend (CDB, Redis, SQL) the client's address is looked up as
// a key, exactly (prefixes in a database are not supported).
type Networks struct {
	prefixes []netip.Prefix
	values   []string
	table    Table // remote tables
}

// OpenNetworks builds a table of networks from a Spec.
func OpenNetworks(s Spec) (*Networks, error) {
	t, err := Open(s)
	if err != nil {
		return nil, err
	}
	keys, ok := Keys(t)
	if !ok {
		return &Networks{table: t}, nil
	}
	n := &Networks{}
	for _, k := range keys {
		p, err := ParseNetwork(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an IP address or CIDR prefix: want \"192.0.2.10\", \"192.0.2.0/24\" or \"2001:db8::/32\"", s.Backend(), k)
		}
		v, _, _ := t.Lookup(context.Background(), k)
		n.prefixes = append(n.prefixes, p)
		n.values = append(n.values, v)
	}
	return n, nil
}

// ParseNetwork reads "192.0.2.0/24" or "192.0.2.10" (a /32 or /128).
// IPv4-mapped IPv6 entries become IPv4, as connections report clients.
func ParseNetwork(entry string) (netip.Prefix, error) {
	entry = strings.TrimSpace(entry)
	if strings.Contains(entry, "/") {
		pfx, err := netip.ParsePrefix(entry)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a := pfx.Addr(); a.Is4In6() {
			if pfx.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("mapped prefix wider than /96")
			}
			pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
		}
		return pfx.Masked(), nil
	}
	a, err := netip.ParseAddr(entry)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zone not allowed")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Match reports whether ip is in one of the networks, and which entry
// matched ("192.0.2.0/24").
func (n *Networks) Match(ctx context.Context, ip netip.Addr) (entry string, found bool, err error) {
	ip = ip.Unmap()
	if n.table != nil {
		_, ok, err := n.table.Lookup(ctx, ip.String())
		if err != nil || !ok {
			return "", false, err
		}
		return ip.String(), true, nil
	}
	for _, p := range n.prefixes {
		if p.Contains(ip) {
			return p.String(), true, nil
		}
	}
	return "", false, nil
}

// Len is the number of in-memory entries (0 for a remote table).
func (n *Networks) Len() int { return len(n.prefixes) }

// Close releases a remote table.
func (n *Networks) Close() error {
	if n.table != nil {
		return Close(n.table)
	}
	return nil
}
