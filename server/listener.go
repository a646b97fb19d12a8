package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server/overload"
)

// listener accepts the connections of one address, applies the connection
// caps, and runs a protocol loop for each.
type listener struct {
	srv   *Server
	cfg   ListenerConfig
	log   *slog.Logger
	chain atomic.Pointer[hooks.Chain]
	ln    net.Listener

	mu    sync.Mutex
	conns map[*conn]struct{}
	// admitted counts the connections that passed the caps, from the check
	// on (conns has them only once their loop exists): concurrent admits
	// cannot all pass MaxConnections.
	admitted int
	perIP    map[netip.Addr]int // by clientKey

	rates    *overload.RateTable // connections per client per window; nil: no limit
	refusals *overload.RefusalLog
}

func (l *listener) shuttingDown() bool { return l.srv.stopping.Load() }

// serve accepts connections until the listener is closed; it returns nil
// at shutdown.
func (l *listener) serve() error {
	var backoff time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if l.shuttingDown() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				// Out of descriptors, say: wait a little and try again.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				l.log.Warn("accept failed; retrying", "err", err, "in", backoff.String())
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if l.cfg.ProxyProtocol {
			go l.admitProxied(raw)
			continue
		}
		if c := l.admit(raw, nil); c != nil {
			l.srv.start(c)
		}
	}
}

// clientKey is what MaxConnectionsPerIP and MaxConnectionRatePerIP count by: an IPv4 address, or an
// IPv6 address's prefix of IPv6Prefix bits.
func (l *listener) clientKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		if p, err := ip.Prefix(l.cfg.IPv6Prefix); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// admit applies the caps to a new connection and returns its loop, or
// refuses it with 421 and returns nil. info, when not nil, describes a
// connection the server did not accept itself (ServeConn).
func (l *listener) admit(raw net.Conn, info *ClientInfo) *conn {
	if info == nil {
		info = &ClientInfo{}
	}
	remote, local := info.Remote, info.Local
	if !remote.IsValid() {
		remote = addrPort(raw.RemoteAddr())
	}
	if !local.IsValid() {
		local = addrPort(raw.LocalAddr())
	}
	key := l.clientKey(remote.Addr().Unmap())
	if reason := l.overLimit(key); reason != "" {
		l.refusals.Refused(key, remote, reason)
		reply := replyTooManyConnections
		if reason == reasonRate {
			reply = replyRateLimited
		}
		overload.Refuse(raw, reply)
		return nil
	}
	transport := raw
	if l.cfg.ImplicitTLS && l.cfg.TLS != nil {
		transport = tls.Server(raw, l.cfg.TLS)
	}
	cc := connection.New(l.cfg.Name, l.cfg.Hostname, local, remote)
	cc.RemoteHost, cc.RemoteInfo, cc.Relay = info.RemoteHost, info.RemoteInfo, info.Relay
	limits := l.cfg.Limits
	if info.MaxMessageSize > 0 {
		limits.MaxMessageBytes = info.MaxMessageSize
	}
	ctx, cancel := context.WithCancel(l.srv.ctx)
	sess := NewSession(ctx, cc, SessionConfig{
		Chain: l.chain.Load(), Limits: limits, SpoolDir: l.srv.spoolDir, Logger: l.log, RcptSuffix: info.RcptSuffix, Greeting: l.cfg.Greeting,
		ReceivedAuthUser: l.cfg.ReceivedAuthUser,
		StartTLS:         l.cfg.TLS != nil && !l.cfg.ImplicitTLS,
		RequireTLS:       l.cfg.RequireTLS, RequireAuth: l.cfg.RequireAuth,
		AuthPlaintextLoopback: l.cfg.AuthPlaintextLoopback,
		AuthLimiter:           l.srv.authLimiter,
		Bus:                   l.srv.bus, Recorder: l.srv.recorder,
		SpoolBudget: l.srv.budget,
		spooling:    l.srv.spooling, refusals: l.refusals,
		XClientHosts: l.cfg.XClientHosts,
	})
	log := sess.log // the listener's, with the connection's id: one for both
	c := newConn(l, transport, sess, log, cancel)
	c.key = key
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	log.Info("connect", "remote", remote.String())
	if l.cfg.Trace != nil {
		c.trace = l.cfg.Trace.With("listener", l.cfg.Name, "conn", cc.ID)
	}
	if r := l.srv.recorder; r != nil {
		r.ConnOpened()
	}
	if l.srv.bus != nil {
		l.srv.bus.Publish(sess.event(monitor.KindConnect))
	}
	return c
}

// forget drops a closed connection from the counts.
func (l *listener) forget(c *conn) {
	key := c.key // XCLIENT may have changed the client's address since
	l.mu.Lock()
	if _, ok := l.conns[c]; ok {
		delete(l.conns, c)
		l.admitted--
		if l.perIP[key]--; l.perIP[key] <= 0 {
			delete(l.perIP, key)
		}
	}
	l.mu.Unlock()
}

// wakeIdle interrupts the reads of idle connections (they answer 421 and
// close) and returns how many connections are left.
func (l *listener) wakeIdle() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		if !c.busy.Load() {
			c.raw.SetReadDeadline(time.Now())
		}
	}
	return len(l.conns)
}

func (l *listener) closeAll() {
	l.mu.Lock()
	cs := make([]*conn, 0, len(l.conns))
	for c := range l.conns {
		cs = append(cs, c)
	}
	l.mu.Unlock()
	for _, c := range cs {
		c.abort()
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// errTooManyFiles is accept's error when the process is out of file
// descriptors: a reason to wait, not to stop listening.
var errTooManyFiles = syscall.EMFILE

// maxIdleWorkers and workerIdle bound the goroutines kept for the next
// connection (see Server.start): a few stacks of a few KiB, for a second.
const (
	maxIdleWorkers = 64
	workerIdle     = time.Second
)

// start serves c on a goroutine that has served a connection before and
// waits for the next, or on a new one. A new goroutine starts with a small
// stack that grows (copied each time) as the session runs hooks and reads
// a message; one that served a connection has it grown already, which is
// most of the cost of a connection per message on short sessions.
func (s *Server) start(c *conn) {
	select {
	case s.work <- c:
	default:
		go s.worker(c)
	}
}

// worker serves c, then waits up to workerIdle for another connection
// from start, as one of at most maxIdleWorkers waiting workers; it ends
// when none comes, or at shutdown.
func (s *Server) worker(c *conn) {
	var idle *time.Timer
	for {
		c.serve()
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		if idle == nil {
			idle = time.NewTimer(workerIdle)
		} else {
			idle.Reset(workerIdle)
		}
		c = nil
		select {
		case c = <-s.work:
		case <-idle.C:
		case <-s.ctx.Done():
		}
		s.idleWorkers.Add(-1)
		if c == nil {
			return
		}
	}
}
