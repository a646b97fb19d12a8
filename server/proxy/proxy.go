// Package proxy reads the PROXY protocol header (v1 and v2, parsed by
// github.com/pires/go-proxyproto) that a load balancer such as HAProxy
// sends before the client's first byte, and gives back the connection to
// speak SMTP on and the client's real addresses.
package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// DefaultHeaderTimeout is how long to wait for the header of a new
// connection when no timeout is configured: a proxy sends it at once, and
// a silent peer must not hold a slot.
const DefaultHeaderTimeout = 5 * time.Second

// bufferSize is the buffer the header is read through: a v1 header (107
// bytes at most) must fit whole; a v2 header with TLVs refills it.
const bufferSize = 512

// ReadHeader reads the header from raw within timeout (DefaultHeaderTimeout
// when 0). It returns the connection to speak SMTP on, which first gives
// back any bytes the client sent right after the header, and the client's
// and the proxy's listening addresses: the header's for a PROXY command
// over TCP, zero for a LOCAL command (HAProxy's health checks) or an
// unknown address family, where the socket's own addresses apply.
func ReadHeader(raw net.Conn, timeout time.Duration) (nc net.Conn, remote, local netip.AddrPort, err error) {
	if timeout <= 0 {
		timeout = DefaultHeaderTimeout
	}
	raw.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(raw, bufferSize)
	h, err := proxyproto.Read(br)
	raw.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, remote, local, fmt.Errorf("no valid PROXY v1 or v2 header within %s: %w", timeout, err)
	}
	if h.Command.IsProxy() {
		if src, dst, ok := h.TCPAddrs(); ok {
			remote, local = src.AddrPort(), dst.AddrPort()
		}
	}
	nc = raw
	if br.Buffered() > 0 {
		nc = &prefixedConn{Conn: raw, r: br}
	}
	return nc, remote, local, nil
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
