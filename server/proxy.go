package server

import (
	"errors"
	"net"
	"net/netip"

	"github.com/sluice-mta/sluice/server/proxy"
)

// DefaultProxyHeaderTimeout is how long a PROXY listener waits for the
// header of a new connection when ListenerConfig.ProxyHeaderTimeout is 0.
const DefaultProxyHeaderTimeout = proxy.DefaultHeaderTimeout

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
		// A waiting worker's stack is grown already (see Server.start);
		// without one, this goroutine serves and then waits as a worker.
		select {
		case l.srv.work <- c:
		default:
			l.srv.worker(c)
		}
	}
}

// readProxyHeader checks the socket's peer against ProxyNetworks and reads
// the header within ProxyHeaderTimeout (see proxy.ReadHeader). A LOCAL
// command leaves the socket's addresses in place.
func (l *listener) readProxyHeader(raw net.Conn) (net.Conn, *ClientInfo, error) {
	peer := addrPort(raw.RemoteAddr()).Addr().Unmap()
	if !inPrefixes(peer, l.cfg.ProxyNetworks) {
		return nil, nil, errUntrustedProxy
	}
	nc, remote, local, err := proxy.ReadHeader(raw, l.cfg.ProxyHeaderTimeout)
	if err != nil {
		return nil, nil, err
	}
	return nc, &ClientInfo{Remote: remote, Local: local}, nil
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
