// Package dnstest runs a DNS server on loopback for tests, so a plugin
// that looks names up (spf, dkim, dmarc, dnsbl) is tested against real DNS
// answers and never against the system resolver: a stray lookup must not
// leave the machine.
//
//	srv := dnstest.Start(t,
//		`example.com. TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
//		dnstest.TXT("s1._domainkey.example.com.", "v=DKIM1; k=rsa; p="+key),
//	)
//	srv.ServFail("broken.example.")
//	srv.Hang("slow.example.")
//	settings := srv.Settings() // a resolver.Settings for the plugin
//
// Records are written as in a zone file (miekg/dns parses them), with the
// owner name fully qualified. A name with no records answers NXDOMAIN; a
// name with records of other types answers NOERROR with no data; a CNAME
// is followed within the server's records.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/resolver"
)

// Server is a DNS server on 127.0.0.1, UDP and TCP on one port.
type Server struct {
	// Addr is the server's "127.0.0.1:port".
	Addr string

	udp, tcp *dns.Server

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case owner name
	servfail map[string]bool
	hang     map[string]bool
	queries  []string
}

// Start starts a server holding records and stops it when the test ends.
// A record that does not parse fails the test.
func Start(t testing.TB, records ...string) *Server {
	t.Helper()
	s, err := New(records...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server holding records; Close stops it. Tests that share
// one server across a package start it in TestMain with New.
func New(records ...string) (*Server, error) {
	s := &Server{records: map[string][]dns.RR{}, servfail: map[string]bool{}, hang: map[string]bool{}}
	if err := s.add(records); err != nil {
		return nil, err
	}
	// One port for both transports: the resolver falls back to TCP when
	// an answer is truncated. A port free for UDP may be taken for TCP;
	// try a few.
	var err error
	for range 20 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dnstest: %w", err)
		}
		var l net.Listener
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		s.Addr = pc.LocalAddr().String()
		s.udp = &dns.Server{PacketConn: pc, Handler: s}
		s.tcp = &dns.Server{Listener: l, Handler: s}
		started := make(chan struct{}, 2)
		s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
		s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
		go s.udp.ActivateAndServe()
		go s.tcp.ActivateAndServe()
		<-started
		<-started
		return s, nil
	}
	return nil, fmt.Errorf("dnstest: no loopback port free for both UDP and TCP: %w", err)
}

// Close stops the server.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// Settings returns resolver settings that ask this server only, with a
// one-second timeout (a Hang name times out in about a second).
func (s *Server) Settings() resolver.Settings {
	return resolver.Settings{Servers: []string{s.Addr}, Timeout: time.Second}
}

// TOML returns the [dns] table that points a plugin at this server, to
// append to a plugin's settings in a test:
//
//	hookstest.Build(t, "spf", `fail = "reject"`+"\n"+srv.TOML())
func (s *Server) TOML() string {
	return fmt.Sprintf("[dns]\nservers = [%q]\ntimeout = \"1s\"\n", s.Addr)
}

// Add adds records; one that does not parse panics (a test's mistake).
func (s *Server) Add(records ...string) {
	if err := s.add(records); err != nil {
		panic(err)
	}
}

func (s *Server) add(records []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, text := range records {
		rr, err := dns.NewRR(text)
		if err != nil {
			return fmt.Errorf("dnstest: record %q: %w", text, err)
		}
		if rr == nil {
			return fmt.Errorf("dnstest: record %q is empty", text)
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
	return nil
}

// Remove removes every record of name.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	delete(s.records, strings.ToLower(dns.Fqdn(name)))
	s.mu.Unlock()
}

// ServFail makes the server answer SERVFAIL for name.
func (s *Server) ServFail(name string) {
	s.mu.Lock()
	s.servfail[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Hang makes the server never answer for name: the lookup times out.
func (s *Server) Hang(name string) {
	s.mu.Lock()
	s.hang[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Queries returns the questions asked so far, as "TYPE name." ("TXT
// example.com."), oldest first.
func (s *Server) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

// TXT returns a TXT record for the zone-file syntax Start and Add take,
// with value split into strings of at most 255 bytes as DNS requires (a
// DKIM key is longer); resolvers join them again.
func TXT(name, value string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s 300 IN TXT", dns.Fqdn(name))
	for len(value) > 0 {
		n := min(255, len(value))
		fmt.Fprintf(&b, " %q", value[:n])
		value = value[n:]
	}
	return b.String()
}

// ServeDNS answers one query from the records.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.queries = append(s.queries, dns.TypeToString[q.Qtype]+" "+q.Name)
	hang, servfail := s.hang[name], s.servfail[name]
	s.mu.Unlock()
	switch {
	case hang:
		return // no answer: the client times out
	case servfail:
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	s.mu.Lock()
	for hops := 0; hops < 8; hops++ {
		rrs, exists := s.records[name]
		if !exists {
			if len(m.Answer) == 0 {
				m.Rcode = dns.RcodeNameError
			}
			break
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, dns.Copy(rr))
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if len(m.Answer) > 0 || cname == nil || q.Qtype == dns.TypeCNAME {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
	}
	s.mu.Unlock()
	if w.LocalAddr().Network() == "udp" {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}
