package server

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
)

// fakeConn is an accepted connection from a given address; it records
// whether it was refused (written to and closed).
type fakeConn struct {
	net.Conn
	remote  netip.AddrPort
	written atomic.Bool
}

func (f *fakeConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(f.remote) }
func (f *fakeConn) LocalAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8:ffff::25]:25"))
}
func (f *fakeConn) Write(p []byte) (int, error)      { f.written.Store(true); return len(p), nil }
func (f *fakeConn) Close() error                     { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) Read([]byte) (int, error)         { return 0, io.EOF }

// TestPerIPCapCountsAnIPv6Prefix: every address of one /64 is one client
// for max_connections_per_ip; another /64 has its own slots.
func TestPerIPCapCountsAnIPv6Prefix(t *testing.T) {
	ch, err := hooks.NewChain(nil, hooks.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{SpoolDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Listeners: []ListenerConfig{{Name: "mx", Address: "[::1]:0", Hostname: "mx.example.test", Chain: ch, MaxConnectionsPerIP: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	l := srv.listeners[0]
	admit := func(addr string) bool {
		f := &fakeConn{remote: netip.MustParseAddrPort(addr)}
		return l.admit(f, nil) != nil
	}
	for i, addr := range []string{"[2001:db8:1:1::1]:1000", "[2001:db8:1:1::2]:1000", "[2001:db8:1:1:ffff::3]:1000"} {
		if !admit(addr) {
			t.Fatalf("connection %d from the /64 refused under the cap", i+1)
		}
	}
	if admit("[2001:db8:1:1::99]:1000") {
		t.Fatal("a fourth address of the same /64 got a slot: the cap counts addresses, not the prefix")
	}
	if !admit("[2001:db8:1:2::1]:1000") {
		t.Fatal("another /64 was refused")
	}
	if !admit("192.0.2.1:1000") || !admit("192.0.2.2:1000") {
		t.Fatal("IPv4 addresses are each their own client")
	}

	l.cfg.IPv6Prefix = 128 // every address counts alone
	if !admit("[2001:db8:1:1::99]:1000") {
		t.Fatal("ipv6_prefix = 128 still groups addresses")
	}
}
