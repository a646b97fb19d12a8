package server_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
)

// connectSeen records the client address each connect hook saw.
type connectSeen struct {
	mu  sync.Mutex
	saw []string
}

func (p *connectSeen) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	p.mu.Lock()
	p.saw = append(p.saw, c.Remote.String()+" "+c.RemoteHost)
	p.mu.Unlock()
	return hooks.Result{}
}

func (p *connectSeen) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.saw...)
}

func proxyListener(networks ...string) func(*server.ListenerConfig) {
	return func(lc *server.ListenerConfig) {
		lc.ProxyProtocol = true
		lc.ProxyHeaderTimeout = 2 * time.Second
		for _, n := range networks {
			lc.ProxyNetworks = append(lc.ProxyNetworks, netip.MustParsePrefix(n))
		}
	}
}

// proxyHeader is the PROXY header go-proxyproto writes for a client
// src connecting to dst.
func proxyHeader(t *testing.T, version byte, src, dst string) string {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sendMessage runs a transaction whose commands are all pipelined after
// the greeting and returns the DATA's reply.
func (c *client) sendMessage() string {
	c.t.Helper()
	c.send("EHLO client.example.org\r\n")
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		c.t.Fatalf("EHLO: %q", r)
	}
	c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for range 3 {
		c.reply()
	}
	c.send("Subject: hi\r\n\r\nbody\r\n.\r\n")
	return c.reply()
}

func TestProxyProtocolGivesTheClientsAddress(t *testing.T) {
	for _, version := range []byte{1, 2} {
		seen := &connectSeen{}
		srv := start(t, proxyListener("127.0.0.1/32"), hooks.Instance{Name: "seen", Plugin: seen})
		c := dial(t, srv.addr)
		// The header and the client's first command in one write: the
		// command must survive the header's read-ahead.
		c.send(proxyHeader(t, version, "192.0.2.7:40123", "198.51.100.1:25") + "EHLO early.example.org\r\n")
		if r := c.reply(); !strings.HasPrefix(r, "220 ") {
			t.Fatalf("v%d: greeting %q", version, r)
		}
		if r := c.reply(); !strings.HasPrefix(r, "250-mx.example.test Hello early.example.org") {
			t.Fatalf("v%d: pipelined EHLO got %q", version, r)
		}
		if r := c.sendMessage(); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("v%d: message: %q", version, r)
		}
		if got := seen.seen(); len(got) != 1 || got[0] != "192.0.2.7:40123 " {
			t.Errorf("v%d: connect hook saw %q, want the header's 192.0.2.7:40123", version, got)
		}
		msgs := srv.queue.Messages()
		if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "from client.example.org ([192.0.2.7])") {
			t.Errorf("v%d: Received header does not name 192.0.2.7: %q", version, msgs)
		}
	}
}

func TestProxyProtocolLocalUsesTheSocket(t *testing.T) {
	seen := &connectSeen{}
	srv := start(t, proxyListener("127.0.0.1/32"), hooks.Instance{Name: "seen", Plugin: seen})
	c := dial(t, srv.addr)
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	c.send(string(b))
	if r := c.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("greeting %q", r)
	}
	if got := seen.seen(); len(got) != 1 || !strings.HasPrefix(got[0], c.conn.LocalAddr().String()) {
		t.Errorf("connect hook saw %q, want the socket's %s", got, c.conn.LocalAddr())
	}
}

func TestProxyProtocolRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, networks, source, send string
	}{
		{"untrusted source", "127.0.0.1/32", "127.0.0.2", "PROXY TCP4 192.0.2.7 198.51.100.1 40123 25\r\n"},
		{"no header", "127.0.0.1/32", "127.0.0.1", "EHLO spoof.example.org\r\n"},
		{"silent", "127.0.0.1/32", "127.0.0.1", ""},
		{"bad header", "127.0.0.1/32", "127.0.0.1", "PROXY TCP4 192.0.2.999 198.51.100.1 40123 25\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := &connectSeen{}
			srv := start(t, proxyListener(tc.networks), hooks.Instance{Name: "seen", Plugin: seen})
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.source)}, Timeout: 5 * time.Second}
			nc, err := d.Dial("tcp", srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.send != "" {
				nc.Write([]byte(tc.send))
			}
			buf := make([]byte, 512)
			n, err := nc.Read(buf)
			if n != 0 || err == nil {
				t.Fatalf("got %q (%v), want the connection closed without a word", buf[:n], err)
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("not closed within the 2s header timeout: %v", err)
			}
			if got := seen.seen(); len(got) != 0 {
				t.Errorf("the connect hook ran for a refused connection: %q", got)
			}
		})
	}
}

// TestProxyProtocolCountsTheRealClient: max_connections_per_ip counts the
// address in the header, not the proxy's.
func TestProxyProtocolCountsTheRealClient(t *testing.T) {
	srv := start(t, func(lc *server.ListenerConfig) {
		proxyListener("127.0.0.1/32")(lc)
		lc.MaxConnectionsPerIP = 1
	})
	a := dial(t, srv.addr)
	a.send(proxyHeader(t, 2, "192.0.2.7:1000", "198.51.100.1:25"))
	if r := a.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("first client: %q", r)
	}
	b := dial(t, srv.addr)
	b.send(proxyHeader(t, 2, "192.0.2.8:1000", "198.51.100.1:25"))
	if r := b.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("another client through the same proxy: %q", r)
	}
	c := dial(t, srv.addr)
	c.send(proxyHeader(t, 1, "192.0.2.7:1001", "198.51.100.1:25"))
	if r := c.reply(); !strings.HasPrefix(r, "421 4.7.0") {
		t.Fatalf("second connection of 192.0.2.7: %q, want 421", r)
	}
}
