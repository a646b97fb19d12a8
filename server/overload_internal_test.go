package server

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/internal/logbuf"
)

// replyConn records what the server wrote to a connection it refused.
type replyConn struct {
	fakeConn
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *replyConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.Write(p)
}

func overloadListener(t *testing.T, lc ListenerConfig, logTo io.Writer) *listener {
	t.Helper()
	ch, err := hooks.NewChain(nil, hooks.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lc.Name, lc.Address, lc.Hostname, lc.Chain = "mx", "[::1]:0", "mx.example.test", ch
	srv, err := New(Config{SpoolDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logTo, nil)), Listeners: []ListenerConfig{lc}})
	if err != nil {
		t.Fatal(err)
	}
	return srv.listeners[0]
}

// The rate counts an IPv6 client by its prefix, refuses with the exact
// 421 4.7.0, and leaves loopback alone by default.
func TestConnectionRatePerIPv6Prefix(t *testing.T) {
	l := overloadListener(t, ListenerConfig{MaxConnectionRatePerIP: 2}, io.Discard)
	admit := func(addr string) (bool, string) {
		f := &replyConn{fakeConn: fakeConn{remote: netip.MustParseAddrPort(addr)}}
		c := l.admit(f, nil)
		if c != nil {
			l.forget(c) // the concurrency caps are not what is tested
		}
		return c != nil, f.out.String()
	}
	for _, a := range []string{"[2001:db8:1:1::1]:1000", "[2001:db8:1:1:ffff::2]:1000"} {
		if ok, _ := admit(a); !ok {
			t.Fatalf("%s refused within the rate", a)
		}
	}
	ok, got := admit("[2001:db8:1:1::3]:1000")
	if ok || got != "421 4.7.0 Too many connections from your address; try again later\r\n" {
		t.Fatalf("the 3rd connection from the /64 in a minute: admitted %v, reply %q", ok, got)
	}
	if ok, _ := admit("[2001:db8:1:2::1]:1000"); !ok {
		t.Fatal("another /64 was refused")
	}
	for i := range 10 {
		if ok, _ := admit("127.0.0.1:1000"); !ok {
			t.Fatalf("loopback connection %d refused: loopback is exempt by default", i+1)
		}
	}

	l = overloadListener(t, ListenerConfig{MaxConnectionRatePerIP: 2, ConnectionRateExceptions: []netip.Prefix{}}, io.Discard)
	admit("127.0.0.1:1000")
	admit("127.0.0.1:1000")
	if ok, _ := admit("127.0.0.1:1000"); ok {
		t.Fatal("with no exceptions, loopback's 3rd connection was admitted")
	}

	l = overloadListener(t, ListenerConfig{MaxConnectionRatePerIP: -1, ConnectionRateExceptions: []netip.Prefix{}}, io.Discard)
	for i := range 200 {
		if ok, _ := admit("192.0.2.7:1000"); !ok {
			t.Fatalf("connection %d refused with the rate limit off", i+1)
		}
	}
}

// The concurrency caps answer with their own text, and a refusal under a
// flood is logged once per client, with a count.
func TestRefusalsAreLoggedOncePerClient(t *testing.T) {
	var logged logbuf.Buffer
	l := overloadListener(t, ListenerConfig{MaxConnectionsPerIP: 1, MaxConnectionRatePerIP: -1}, &logged)
	first := &replyConn{fakeConn: fakeConn{remote: netip.MustParseAddrPort("192.0.2.1:1")}}
	if l.admit(first, nil) == nil {
		t.Fatal("the first connection was refused")
	}
	for i := range 1000 {
		f := &replyConn{fakeConn: fakeConn{remote: netip.MustParseAddrPort("192.0.2.1:2")}}
		if l.admit(f, nil) != nil {
			t.Fatalf("connection %d over max_connections_per_ip = 1 admitted", i+2)
		}
		if got := f.out.String(); got != "421 4.7.0 Too many connections; try again later\r\n" {
			t.Fatalf("refusal reply %q", got)
		}
	}
	other := &replyConn{fakeConn: fakeConn{remote: netip.MustParseAddrPort("192.0.2.2:1")}}
	l.admit(other, nil)
	l.admit(&replyConn{fakeConn: fakeConn{remote: netip.MustParseAddrPort("192.0.2.2:2")}}, nil)
	lines := strings.Split(strings.TrimSpace(logged.String()), "\n")
	var refusals []string
	for _, ln := range lines {
		if strings.Contains(ln, "refused: overload") {
			refusals = append(refusals, ln)
		}
	}
	if len(refusals) != 2 || !strings.Contains(refusals[0], "level=WARN") ||
		!strings.Contains(refusals[0], `reason="too many connections from the client" client=192.0.2.1 refused=1`) ||
		!strings.Contains(refusals[1], "client=192.0.2.2 refused=1") {
		t.Fatalf("want one WARN line per client for 1001 refusals, got:\n%s", strings.Join(refusals, "\n"))
	}
}

var _ net.Conn = (*replyConn)(nil)
