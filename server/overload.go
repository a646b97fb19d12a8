package server

import (
	"container/list"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/hooks"
)

// Overload control: what keeps a flood of connections or messages from
// queueing work without bound. The caps on concurrent connections (per
// listener and per client) and on the connection rate per client are
// checked before a connection gets a session; the cap on messages being
// received at once (MaxSpooling) and the memory budget of their spools
// (SpoolMemoryBudget) are the server's. A client at a limit gets 421 4.7.0
// and is closed; the refusals are logged at most once per client per
// refusalLogEvery, with a count.

// Defaults of the overload settings.
const (
	// DefaultMaxConnectionRatePerIP is how many connections one client
	// (an IPv4 address or an IPv6 prefix) may open per
	// DefaultConnectionRateWindow on one listener.
	DefaultMaxConnectionRatePerIP = 120
	// DefaultConnectionRateWindow is the window of the connection rate.
	DefaultConnectionRateWindow = time.Minute
	// DefaultMaxSpooling is how many messages the server receives at once.
	DefaultMaxSpooling = 200
	// DefaultSpoolMemoryBudget is how many bytes of message bodies the
	// server holds in memory at once, summed over every connection.
	DefaultSpoolMemoryBudget = 64 << 20
)

// DefaultConnectionRateExceptions are the clients the connection rate
// limit leaves alone by default: loopback.
var DefaultConnectionRateExceptions = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// rateTableSize caps the clients a listener's rate table tracks (about
// 150 bytes each: 7.5 MB at most). A flood from more addresses than that
// evicts the oldest windows; the concurrency caps still bound it.
const rateTableSize = 50_000

// refuseWriteTimeout bounds the write of a refusal to a connection that
// is not a socket (ServeConn's); a socket gets one non-blocking write.
const refuseWriteTimeout = time.Second

// refusalLogEvery is the least time between two log lines about the
// refusals of one client.
const refusalLogEvery = time.Minute

// refusalLogSize caps the clients whose refusals are counted for the log;
// the refusals of others are summed in one count.
const refusalLogSize = 10_000

// Why a connection or a message was refused, as logged.
const (
	reasonConnections      = "too many connections"
	reasonConnectionsPerIP = "too many connections from the client"
	reasonRate             = "connection rate limit"
	reasonSpooling         = "too many messages being received"
)

// The replies of the overload limits.
var (
	replyTooManyConnections = []byte("421 4.7.0 Too many connections; try again later\r\n")
	replyRateLimited        = []byte("421 4.7.0 Too many connections from your address; try again later\r\n")
	replyTooBusy            = hooks.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Msg: "Too many messages being received; try again later; closing connection", Close: true}
)

// overLimit applies the listener's connection limits to a new connection
// from the client key and counts it when it is admitted. It returns the
// reason of a refusal, or "" when the connection may go on.
func (l *listener) overLimit(key netip.Addr) string {
	if l.rates != nil && !l.rateExempt(key) && !l.rates.allow(key, time.Now()) {
		return reasonRate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case len(l.conns) >= l.cfg.MaxConnections:
		return reasonConnections
	case l.perIP[key] >= l.cfg.MaxConnectionsPerIP:
		return reasonConnectionsPerIP
	}
	l.perIP[key]++
	return ""
}

// rateExempt reports whether the client key is in ConnectionRateExceptions.
func (l *listener) rateExempt(key netip.Addr) bool {
	for _, p := range l.cfg.ConnectionRateExceptions {
		if p.Contains(key) {
			return true
		}
	}
	return false
}

// refuse answers a connection refused at a limit with 421 4.7.0 and closes
// it, on the caller's goroutine: no session, no hook, no buffer and no
// goroutine per refused connection. On a socket the reply is one
// non-blocking write: a fresh socket's send buffer takes it whole, and
// were it full the reply would be dropped rather than the accept loop
// kept waiting.
func refuse(c net.Conn, reply []byte) {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Write(func(fd uintptr) bool {
				syscall.Write(int(fd), reply)
				return true // written or not, never wait
			})
			c.Close()
			return
		}
	}
	c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
	c.Write(reply)
	c.Close()
}

// rateTable counts the connections of each client in fixed windows
// (Postfix's anvil: smtpd_client_connection_rate_limit per
// anvil_rate_time_unit). Every attempt counts, refused or not, so a
// client that keeps hammering stays refused until its window ends.
type rateTable struct {
	max    int
	window time.Duration
	size   int

	mu      sync.Mutex
	clients map[netip.Addr]*list.Element // of *rateWindow
	order   list.List                    // oldest window first
}

type rateWindow struct {
	key   netip.Addr
	start time.Time
	n     int
}

func newRateTable(max int, window time.Duration, size int) *rateTable {
	return &rateTable{max: max, window: window, size: size, clients: map[netip.Addr]*list.Element{}}
}

// allow counts a connection from key at now and reports whether it is
// within the rate.
func (t *rateTable) allow(key netip.Addr, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	// The windows are in the order they started: expired ones first.
	for e := t.order.Front(); e != nil && now.Sub(e.Value.(*rateWindow).start) >= t.window; e = t.order.Front() {
		t.drop(e)
	}
	e := t.clients[key]
	if e == nil {
		for len(t.clients) >= t.size {
			t.drop(t.order.Front())
		}
		e = t.order.PushBack(&rateWindow{key: key, start: now})
		t.clients[key] = e
	}
	w := e.Value.(*rateWindow)
	w.n++
	return w.n <= t.max
}

func (t *rateTable) drop(e *list.Element) {
	delete(t.clients, e.Value.(*rateWindow).key)
	t.order.Remove(e)
}

// tracked returns how many clients the table counts.
func (t *rateTable) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}

// refusalLog logs refusals at WARN, one line per client per
// refusalLogEvery with the count of refusals since its last line, never a
// line per refused connection under a flood.
type refusalLog struct {
	log *slog.Logger

	mu      sync.Mutex
	clients map[netip.Addr]*refusals
	others  refusals // of clients past refusalLogSize
}

type refusals struct {
	logged time.Time // when the last line was written
	n      int       // refusals since then, not logged
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, clients: map[netip.Addr]*refusals{}}
}

// refused notes a refusal of key for reason, and logs it when the client
// had no line within refusalLogEvery.
func (r *refusalLog) refused(key netip.Addr, remote netip.AddrPort, reason string) {
	now := time.Now()
	r.mu.Lock()
	c := r.clients[key]
	if c == nil {
		if len(r.clients) >= refusalLogSize {
			for k, v := range r.clients {
				if now.Sub(v.logged) >= refusalLogEvery {
					delete(r.clients, k)
				}
			}
		}
		if len(r.clients) >= refusalLogSize {
			c = &r.others
		} else {
			c = &refusals{}
			r.clients[key] = c
		}
	}
	c.n++
	if !c.logged.IsZero() && now.Sub(c.logged) < refusalLogEvery {
		r.mu.Unlock()
		return
	}
	n, others := c.n, c == &r.others
	c.logged, c.n = now, 0
	r.mu.Unlock()
	if others {
		r.log.Warn("refused: overload", "reason", reason, "clients", "many", "refused", n, "remote", remote.String(), "next_log_in", refusalLogEvery.String())
		return
	}
	r.log.Warn("refused: overload", "reason", reason, "client", key.String(), "refused", n, "remote", remote.String(), "next_log_in", refusalLogEvery.String())
}

// spoolGate caps the messages being received at once, across the server.
type spoolGate struct {
	max int64
	n   atomic.Int64
}

// enter takes a place; false when all are taken. A nil gate always has
// room.
func (g *spoolGate) enter() bool {
	if g == nil {
		return true
	}
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

// leave gives a place back.
func (g *spoolGate) leave() {
	if g != nil {
		g.n.Add(-1)
	}
}

// Spooling returns how many messages the server is receiving now.
func (s *Server) Spooling() int {
	if s.spooling == nil {
		return 0
	}
	return int(s.spooling.n.Load())
}

// SpoolMemory returns how many bytes of message bodies the server holds in
// memory now, against its SpoolMemoryBudget.
func (s *Server) SpoolMemory() int64 { return s.budget.Used() }
