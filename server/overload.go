package server

import (
	"net/netip"
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
// minute, with a count. The bookkeeping (rate table, refusal log, the
// MaxSpooling gate) is package overload's.

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
	if l.rates != nil && !l.rateExempt(key) && !l.rates.Allow(key, time.Now()) {
		return reasonRate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.admitted >= l.cfg.MaxConnections:
		return reasonConnections
	case l.perIP[key] >= l.cfg.MaxConnectionsPerIP:
		return reasonConnectionsPerIP
	}
	l.admitted++
	l.perIP[key]++
	return ""
}

// rateExempt reports whether the client key is in ConnectionRateExceptions.
func (l *listener) rateExempt(key netip.Addr) bool {
	return inPrefixes(key, l.cfg.ConnectionRateExceptions)
}

// Spooling returns how many messages the server is receiving now.
func (s *Server) Spooling() int { return s.spooling.Inside() }

// SpoolMemory returns how many bytes of message bodies the server holds in
// memory now, against its SpoolMemoryBudget.
func (s *Server) SpoolMemory() int64 { return s.budget.Used() }
