// Package resolver is the DNS client that Sluice's plugins share (spf,
// dkim, dmarc, and the policy plugins that look names up): one [dns] table
// in the configuration names the servers and the timeout, so an admin sets
// them once and a test points every plugin at a DNS server it started on
// loopback (package resolver/dnstest).
//
// A plugin gets the shared settings by giving its settings struct a field
// of type Settings (named "dns" by convention): config fills it from the
// top-level [dns] table before it decodes the plugin's own table, so a
// [plugins.NAME.dns] table overrides the shared one for that instance
// only.
//
//	type Settings struct {
//		DNS resolver.Settings `toml:"dns"`
//	}
//
//	r, err := s.DNS.New() // in the plugin's New
//	txts, err := r.LookupTXT(ctx, "example.com")
//
// The lookups are the standard library's (net.Resolver, pure Go): no DNS
// wire parsing of our own.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds one lookup when Settings.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Settings are the keys of the [dns] table.
type Settings struct {
	// Servers are the DNS servers to ask, "host:port" or a bare IP
	// address (port 53), tried in turn. Empty: the system's, from
	// /etc/resolv.conf.
	Servers []string `toml:"servers"`
	// Timeout bounds one lookup (all its retries). Default "5s".
	Timeout time.Duration `toml:"timeout"`
}

// Check reports a setting that cannot work, naming it.
func (s Settings) Check() error {
	for _, a := range s.Servers {
		if _, err := serverAddr(a); err != nil {
			return err
		}
	}
	if s.Timeout != 0 && s.Timeout < 10*time.Millisecond {
		return fmt.Errorf("dns: timeout = %v: want a duration such as \"5s\" (a bare number is nanoseconds)", s.Timeout)
	}
	return nil
}

// serverAddr returns a server setting as "ip:port".
func serverAddr(a string) (string, error) {
	if ip, err := netip.ParseAddr(a); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return "", fmt.Errorf("dns: servers: %q is not an IP address or \"IP:port\" (\"127.0.0.1:53\", \"[::1]:53\"); name servers by address, not by name", a)
	}
	return ap.String(), nil
}

// Resolver looks names up through the configured servers, each lookup
// bounded by the configured timeout. Its methods are those of net.Resolver
// that the mail-authentication libraries ask for, so it can be handed to
// them as it is. It is safe for concurrent use.
type Resolver struct {
	r       *net.Resolver
	timeout time.Duration
}

// New returns the resolver the settings describe.
func (s Settings) New() (*Resolver, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	t := s.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	res := &Resolver{r: &net.Resolver{PreferGo: true}, timeout: t}
	if len(s.Servers) > 0 {
		servers := make([]string, len(s.Servers))
		for i, a := range s.Servers {
			servers[i], _ = serverAddr(a)
		}
		var next atomic.Uint32
		var d net.Dialer
		res.r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			// The standard resolver dials once per attempt: rotate, so
			// a server that does not answer is not the only one asked.
			a := servers[int(next.Add(1)-1)%len(servers)]
			return d.DialContext(ctx, network, a)
		}
	}
	return res, nil
}

func (r *Resolver) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

// LookupTXT returns the TXT records of name, each record's strings joined.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	return r.r.LookupTXT(ctx, name)
}

// LookupMX returns the MX records of name.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	return r.r.LookupMX(ctx, name)
}

// LookupIPAddr returns the A and AAAA records of host.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	return r.r.LookupIPAddr(ctx, host)
}

// LookupNetIP returns the addresses of host of network "ip", "ip4" or
// "ip6".
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	return r.r.LookupNetIP(ctx, network, host)
}

// LookupAddr returns the names of addr (PTR records).
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	return r.r.LookupAddr(ctx, addr)
}

// IsNotFound reports whether err says the name or the record does not
// exist (NXDOMAIN or no data): a definite answer, unlike a timeout or
// SERVFAIL, which are temporary.
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}
