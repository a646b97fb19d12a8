package server

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// DefaultProxyHeaderTimeout is how long a PROXY listener waits for the
// header of a new connection when ListenerConfig.ProxyHeaderTimeout is 0:
// a proxy sends it at once, and a silent peer must not hold a slot.
const DefaultProxyHeaderTimeout = 5 * time.Second

// proxyBufferSize is the buffer the header is read through: a v1 header
// (107 bytes at most) must fit whole; a v2 header with TLVs refills it.
const proxyBufferSize = 512

// errUntrustedProxy refuses a connection to a PROXY listener from outside
// its ProxyNetworks.
var errUntrustedProxy = errors.New("source is not in the listener's proxy_networks")

// admitProxied reads the PROXY protocol header of a connection accepted on
// a PROXY listener, then admits it with the client's address and port the
// header names, and serves it. A connection from outside ProxyNetworks, or
// without a valid header in time, is closed without a word (as HAProxy's
// accept-proxy does) and logged. It runs on a goroutine of its own: a
// slow header must not stop the accept loop.
func (l *listener) admitProxied(raw net.Conn) {
	nc, info, err := l.readProxyHeader(raw)
	if err != nil {
		l.log.Warn("connection refused: PROXY protocol", "socket", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	if l.shuttingDown() {
		raw.Close()
		return
	}
	if c := l.admit(nc, info); c != nil {
		c.serve()
	}
}

// readProxyHeader checks the socket's peer against ProxyNetworks and reads
// the header (go-proxyproto parses it) within ProxyHeaderTimeout. It
// returns the connection to speak SMTP on, which first gives back any
// bytes the client sent right after the header, and the addresses: the
// header's for a PROXY command over TCP, the socket's for a LOCAL command
// (HAProxy's health checks) or an unknown address family.
func (l *listener) readProxyHeader(raw net.Conn) (net.Conn, *ClientInfo, error) {
	peer := addrPort(raw.RemoteAddr()).Addr().Unmap()
	if !inPrefixes(peer, l.cfg.ProxyNetworks) {
		return nil, nil, errUntrustedProxy
	}
	timeout := l.cfg.ProxyHeaderTimeout
	if timeout <= 0 {
		timeout = DefaultProxyHeaderTimeout
	}
	raw.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(raw, proxyBufferSize)
	h, err := proxyproto.Read(br)
	raw.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, nil, fmt.Errorf("no valid PROXY v1 or v2 header within %s: %w", timeout, err)
	}
	info := &ClientInfo{}
	if h.Command.IsProxy() {
		if src, dst, ok := h.TCPAddrs(); ok {
			info.Remote, info.Local = src.AddrPort(), dst.AddrPort()
		}
	}
	var nc net.Conn = raw
	if br.Buffered() > 0 {
		nc = &prefixedConn{Conn: raw, r: br}
	}
	return nc, info, nil
}

// prefixedConn is a connection whose first bytes were read ahead into r
// (the client's pipelined commands after a PROXY header): Read gives
// those first, then reads the socket. Without the syscall.Conn of the
// socket, the protocol loop never waits on the socket while bytes are
// still here.
type prefixedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *prefixedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			n, _ := c.r.Read(p) // only buffered bytes: no read of the socket
			return n, nil
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// inPrefixes reports whether ip is in one of the prefixes.
func inPrefixes(ip netip.Addr, prefixes []netip.Prefix) bool {
	ip = ip.Unmap()
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
