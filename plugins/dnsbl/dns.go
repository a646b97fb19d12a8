package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/resolver"
)

// The lookups go through miekg/dns rather than the shared resolver's
// net.Resolver because the cache keeps an answer for its own TTL (bounded
// by cache_ttl), and the standard library does not return TTLs: a client
// taken off a list must be let in again when the list says so, not when
// some fixed time of ours runs out. The servers and the timeout are the
// shared [dns] table's, read through resolver.Settings.

// noSOATTL is how long a negative answer without an SOA record (which
// carries the zone's negative TTL, RFC 2308) is cached.
const noSOATTL = time.Minute

// client asks the configured DNS servers, in turn, one question at a time.
type client struct {
	servers []string // "ip:port"
	timeout time.Duration
	next    atomic.Uint32
}

func newClient(s resolver.Settings) (*client, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	c := &client{timeout: s.Timeout}
	if c.timeout == 0 {
		c.timeout = resolver.DefaultTimeout
	}
	for _, a := range s.Servers {
		if ip, err := netip.ParseAddr(a); err == nil {
			c.servers = append(c.servers, netip.AddrPortFrom(ip, 53).String())
		} else {
			c.servers = append(c.servers, netip.MustParseAddrPort(a).String()) // Check parsed it
		}
	}
	if len(c.servers) == 0 {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("dns: no servers are set and the system's are unknown (%v): set servers in the [dns] table", err)
		}
		for _, s := range cfg.Servers {
			c.servers = append(c.servers, net.JoinHostPort(s, cfg.Port))
		}
		if len(c.servers) == 0 {
			return nil, errors.New("dns: no servers are set and /etc/resolv.conf names none: set servers in the [dns] table")
		}
	}
	return c, nil
}

// answer is what one question got: the records, and how long they may be
// kept.
type answer struct {
	rrs []dns.RR // the answer section
	ttl time.Duration
}

// errRcode is an answer that is neither data nor a definite "no such
// name" (SERVFAIL, REFUSED).
type errRcode int

func (e errRcode) Error() string { return "the server answered " + dns.RcodeToString[int(e)] }

// query asks the question name/qtype, within the lookup timeout, of each
// server in turn until one answers. NXDOMAIN and an empty answer are not
// errors: they are answers with no records.
func (c *client) query(ctx context.Context, name string, qtype uint16) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	first := int(c.next.Add(1) - 1)
	var last error
	for i := range c.servers {
		if ctx.Err() != nil {
			break
		}
		addr := c.servers[(first+i)%len(c.servers)]
		// Each server gets its share of what is left, so one that never
		// answers does not take the others' time.
		actx, acancel := ctx, context.CancelFunc(func() {})
		if left := len(c.servers) - i; left > 1 {
			d, _ := ctx.Deadline()
			actx, acancel = context.WithTimeout(ctx, time.Until(d)/time.Duration(left))
		}
		r, err := exchange(actx, m, addr)
		acancel()
		if err != nil {
			last = err
			continue
		}
		switch r.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return answer{rrs: r.Answer, ttl: ttlOf(r)}, nil
		}
		last = errRcode(r.Rcode)
	}
	var rc errRcode
	if !errors.As(last, &rc) && ctx.Err() != nil {
		return answer{}, fmt.Errorf("%s %s: no answer within %v", dns.TypeToString[qtype], name, c.timeout)
	}
	return answer{}, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, last)
}

// exchange sends m over UDP, and again over TCP when the answer is
// truncated.
func exchange(ctx context.Context, m *dns.Msg, addr string) (*dns.Msg, error) {
	r, err := exchangeOver(ctx, "udp", m, addr)
	if err == nil && r.Truncated {
		r, err = exchangeOver(ctx, "tcp", m, addr)
	}
	return r, err
}

// exchangeOver asks m of addr over network within ctx. miekg/dns reads
// only ctx's deadline, and caps it at its own 2s read timeout: the
// client's Timeout is set to the deadline, and ctx's end (a disconnect)
// closes the socket, so a query waiting for its answer ends at once.
func exchangeOver(ctx context.Context, network string, m *dns.Msg, addr string) (*dns.Msg, error) {
	cl := &dns.Client{Net: network}
	if d, ok := ctx.Deadline(); ok {
		cl.Timeout = max(time.Until(d), time.Millisecond)
	}
	conn, err := cl.DialContext(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	r, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return r, err
}

// ttlOf is how long an answer may be cached: the smallest TTL of its
// records, or for a negative answer the SOA's negative TTL (RFC 2308 5).
func ttlOf(r *dns.Msg) time.Duration {
	ttl := uint32(0)
	found := false
	for _, rr := range r.Answer {
		if t := rr.Header().Ttl; !found || t < ttl {
			ttl, found = t, true
		}
	}
	if found {
		return time.Duration(ttl) * time.Second
	}
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return noSOATTL
}

// cache keeps answers for min(their TTL, cache_ttl), at most size of them.
// It is shared by the connections of one plugin instance.
type cache struct {
	maxTTL time.Duration
	size   int
	mu     sync.Mutex
	m      map[string]cached
}

type cached struct {
	rrs     []dns.RR
	expires time.Time
}

func newCache(maxTTL time.Duration, size int) *cache {
	if maxTTL <= 0 || size <= 0 {
		return nil
	}
	return &cache{maxTTL: maxTTL, size: size, m: make(map[string]cached)}
}

func (c *cache) get(key string, now time.Time) ([]dns.RR, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		delete(c.m, key)
		return nil, false
	}
	return e.rrs, true
}

func (c *cache) put(key string, a answer, now time.Time) {
	if c == nil || a.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.size {
		// Full: drop what has expired, and when nothing has, an
		// arbitrary tenth (map order), so a flood of new clients cannot
		// grow the cache without bound.
		drop := max(1, c.size/10)
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.size || drop == 0 {
				break
			}
			delete(c.m, k)
			drop--
		}
	}
	c.m[key] = cached{rrs: a.rrs, expires: now.Add(min(a.ttl, c.maxTTL))}
}

// ReverseIP returns the name of ip in a DNS list, without the zone:
// "2.0.0.127" for 127.0.0.2; for an IPv6 address its 32 nibbles in
// reverse order (RFC 5782 2.1 and 2.4).
func ReverseIP(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		return fmt.Sprintf("%d.%d.%d.%d", b[3], b[2], b[1], b[0])
	}
	const hexdigits = "0123456789abcdef"
	b := ip.As16()
	var s strings.Builder
	s.Grow(64)
	for i := len(b) - 1; i >= 0; i-- {
		s.WriteByte(hexdigits[b[i]&0xf])
		s.WriteByte('.')
		s.WriteByte(hexdigits[b[i]>>4])
		if i > 0 {
			s.WriteByte('.')
		}
	}
	return s.String()
}
