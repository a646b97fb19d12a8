// Package overload holds the bookkeeping of the server's overload limits,
// none of which knows about connections or sessions: RateTable counts each
// client's connections in fixed windows, RefusalLog logs refusals at most
// once per client per minute with a count, Gate caps how many messages
// are received at once, and Refuse answers a refused connection. The
// server decides what to refuse with them.
package overload

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/fixedwindow"
)

// RateTableSize caps the clients a listener's rate table tracks (about
// 150 bytes each: 7.5 MB at most). A flood from more addresses than that
// evicts the oldest windows; the concurrency caps still bound it.
const RateTableSize = 50_000

// refusalLogEvery is the least time between two log lines about the
// refusals of one client.
const refusalLogEvery = time.Minute

// refusalLogSize caps the clients whose refusals are counted for the log;
// the refusals of others are summed in one count.
const refusalLogSize = 10_000

// RateTable counts the connections of each client in fixed windows
// (Postfix's anvil: smtpd_client_connection_rate_limit per
// anvil_rate_time_unit). Every attempt counts, refused or not, so a
// client that keeps hammering stays refused until its window ends.
type RateTable struct {
	max    int
	window time.Duration
	size   int

	mu      sync.Mutex
	clients fixedwindow.Counter[netip.Addr]
}

// NewRateTable allows max connections per client per window, and tracks
// at most size clients.
func NewRateTable(max int, window time.Duration, size int) *RateTable {
	return &RateTable{max: max, window: window, size: size}
}

// Allow counts a connection from key at now and reports whether it is
// within the rate.
func (t *RateTable) Allow(key netip.Addr, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.clients.Add(key, now, t.window, t.size) <= t.max
}

// Tracked returns how many clients the table counts.
func (t *RateTable) Tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.clients.Len()
}

// RefusalLog logs refusals at WARN, one line per client per
// refusalLogEvery (a minute) with the count of refusals since its last
// line, never a line per refused connection under a flood.
type RefusalLog struct {
	log *slog.Logger

	mu      sync.Mutex
	clients map[netip.Addr]*refusals
	others  refusals // of clients past refusalLogSize
}

type refusals struct {
	logged time.Time // when the last line was written
	n      int       // refusals since then, not logged
}

// NewRefusalLog logs to log.
func NewRefusalLog(log *slog.Logger) *RefusalLog {
	return &RefusalLog{log: log, clients: map[netip.Addr]*refusals{}}
}

// Refused notes a refusal of key for reason, and logs it when the client
// had no line within refusalLogEvery.
func (r *RefusalLog) Refused(key netip.Addr, remote netip.AddrPort, reason string) {
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

// Gate caps the messages being received at once, across the server.
type Gate struct {
	max int64
	n   atomic.Int64
}

// NewGate lets max messages in at once.
func NewGate(max int64) *Gate { return &Gate{max: max} }

// Enter takes a place; false when all are taken. A nil gate always has
// room.
func (g *Gate) Enter() bool {
	if g == nil {
		return true
	}
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

// Leave gives a place back.
func (g *Gate) Leave() {
	if g != nil {
		g.n.Add(-1)
	}
}

// Inside returns how many places are taken now; 0 for a nil gate.
func (g *Gate) Inside() int {
	if g == nil {
		return 0
	}
	return int(g.n.Load())
}

// refuseWriteTimeout bounds the write of a refusal to a connection that
// is not a socket (ServeConn's); a socket gets one non-blocking write.
const refuseWriteTimeout = time.Second

// Refuse answers a connection refused at a limit with 421 4.7.0 and closes
// it, on the caller's goroutine: no session, no hook, no buffer and no
// goroutine per refused connection. On a socket the reply is one
// non-blocking write: a fresh socket's send buffer takes it whole, and
// were it full the reply would be dropped rather than the accept loop
// kept waiting.
func Refuse(c net.Conn, reply []byte) {
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
