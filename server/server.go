// Package server is Sluice's SMTP engine, embeddable in other Go programs:
// listeners with their own plugin chains (listener.go), the protocol loop
// of each connection (conn.go), the one SMTP state machine (Session,
// session.go, with its command table, parser, message and AUTH beside it),
// limits, reload and graceful shutdown.
//
//	srv, err := server.New(server.Config{SpoolDir: "var/spool", Listeners: []server.ListenerConfig{{
//		Name: "mx", Address: "127.0.0.1:2525", Hostname: "mx.example.test", Chain: chain,
//	}}})
//	err = srv.Listen()
//	go srv.Serve()
//	...
//	srv.Shutdown(ctx)
package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/server/input"
	"github.com/sluice-mta/sluice/server/overload"
	"github.com/sluice-mta/sluice/transaction"
)

// ListenerConfig is one listening address with its own policy.
type ListenerConfig struct {
	Name     string
	Address  string
	Hostname string
	// Greeting replaces the 220 greeting's text (default: Hostname and
	// "ESMTP Sluice ready"); a connect plugin's own message wins.
	Greeting string
	Chain    *hooks.Chain
	Limits   Limits
	// ReadTimeout is the idle time allowed between two reads from the
	// client, refreshed on every read. Default 5 minutes (RFC 5321 4.5.3.2).
	ReadTimeout time.Duration
	// WriteTimeout bounds each reply. Default 1 minute.
	WriteTimeout time.Duration
	// MinDataRate is the slowest a message may arrive, in bytes per second,
	// after MinDataRateGrace; a slower client gets 421 and is closed.
	// Defaults 500 B/s (Postfix's smtpd_min_data_rate) and 60 seconds;
	// a negative MinDataRate turns the check off.
	MinDataRate      int64
	MinDataRateGrace time.Duration
	// MaxLineLength caps a command line, CRLF included. Default 2048.
	MaxLineLength int
	// MaxConnections and MaxConnectionsPerIP cap concurrent connections;
	// the next client gets 421 4.7.0 at the banner. Defaults 1000 and 20.
	MaxConnections      int
	MaxConnectionsPerIP int
	// MaxConnectionRatePerIP caps how many connections one client may
	// open per ConnectionRateWindow (Postfix's
	// smtpd_client_connection_rate_limit): the next gets 421 4.7.0 at the
	// banner until the window ends. Every attempt counts, refused ones too.
	// Defaults 120 per minute; negative turns the limit off.
	MaxConnectionRatePerIP int
	ConnectionRateWindow   time.Duration
	// ConnectionRateExceptions are the clients the rate limit does not
	// apply to (Postfix's smtpd_client_event_limit_exceptions, which is
	// $mynetworks). Nil means loopback (127.0.0.0/8 and ::1): local tools
	// and monitoring open many short connections; an empty, non-nil list
	// exempts nobody.
	ConnectionRateExceptions []netip.Prefix
	// IPv6Prefix is how many leading bits of an IPv6 client address count
	// as one client for MaxConnectionsPerIP and MaxConnectionRatePerIP:
	// one site gets a /64, so counting addresses would let it open every
	// slot. Default 64; 128 counts each address.
	IPv6Prefix int
	// GreetingDelay holds the greeting back this long and watches for a
	// client that talks first (connection.EarlyTalker; qpsmtpd's
	// check_earlytalker). Default 0: greet at once.
	GreetingDelay time.Duration
	// MaxErrors closes the connection with 421 after this many refused
	// commands. Default 20.
	MaxErrors int
	// MaxJunkCommands closes the connection with 421 after this many NOOP,
	// VRFY, HELP, RSET, HELO and EHLO commands without a message accepted in between
	// (Postfix's smtpd_junk_command_limit). Default 100.
	MaxJunkCommands int
	// BareNewline is the policy for a bare CR or LF inside a message.
	// Default reject; normalize on a listener that requires AUTH, where
	// scripts (curl -T with LF line ends) are the usual clients.
	BareNewline BareNewline
	// TLS enables STARTTLS (or implicit TLS with ImplicitTLS).
	TLS         *tls.Config
	ImplicitTLS bool
	// RequireTLS refuses MAIL before STARTTLS with 530 5.7.0.
	RequireTLS bool
	// RequireAuth refuses MAIL before a successful AUTH with 530 5.7.0.
	RequireAuth bool
	// AuthPlaintextLoopback allows AUTH without TLS from loopback clients
	// (for local testing); elsewhere AUTH needs TLS.
	AuthPlaintextLoopback bool
	// ReceivedAuthUser names the authenticated user in Received headers.
	ReceivedAuthUser bool
	// Trace, when set, receives every command the clients send and the
	// code of every reply, at DEBUG; never AUTH's credentials (the initial
	// response and the SASL lines are left out).
	Trace *slog.Logger
	// ProxyProtocol makes every connection start with a PROXY protocol
	// header (HAProxy's, v1 or v2): the client's address and port come
	// from it. Only peers in ProxyNetworks may connect; a connection
	// from elsewhere, or without a valid header within ProxyHeaderTimeout
	// (default DefaultProxyHeaderTimeout), is closed.
	ProxyProtocol      bool
	ProxyNetworks      []netip.Prefix
	ProxyHeaderTimeout time.Duration
	// XClientHosts are the clients that may use XCLIENT (Postfix's
	// extension) to name another client: its address, name, HELO and
	// authenticated user. Empty: XCLIENT is never offered.
	XClientHosts []netip.Prefix
	// Listener, when not nil, is a socket opened by someone else (systemd
	// socket activation: see cmd/smtpd/cli's activation.go) that Listen
	// uses instead of binding Address. The server closes it at Shutdown.
	Listener net.Listener
}

func (c *ListenerConfig) setDefaults() {
	setDefault(&c.ReadTimeout, 5*time.Minute)
	setDefault(&c.WriteTimeout, time.Minute)
	if c.MinDataRate == 0 { // negative: no minimum
		c.MinDataRate = 500
	}
	setDefault(&c.MinDataRateGrace, time.Minute)
	setDefault(&c.MaxLineLength, 2048)
	c.MaxLineLength = min(c.MaxLineLength, input.Size) // a line fits the connection's read buffer
	setDefault(&c.MaxConnections, 1000)
	setDefault(&c.MaxConnectionsPerIP, 20)
	if c.MaxConnectionRatePerIP == 0 { // negative: no rate limit
		c.MaxConnectionRatePerIP = DefaultMaxConnectionRatePerIP
	}
	setDefault(&c.ConnectionRateWindow, DefaultConnectionRateWindow)
	if c.ConnectionRateExceptions == nil {
		c.ConnectionRateExceptions = DefaultConnectionRateExceptions
	}
	if c.IPv6Prefix <= 0 || c.IPv6Prefix > 128 {
		c.IPv6Prefix = 64
	}
	setDefault(&c.MaxErrors, DefaultMaxErrors)
	setDefault(&c.MaxJunkCommands, DefaultMaxJunkCommands)
	if c.BareNewline == "" {
		c.BareNewline = BareNewlineReject
		if c.RequireAuth {
			c.BareNewline = BareNewlineNormalize
		}
	}
	c.Limits.MaxErrors, c.Limits.MaxJunkCommands = c.MaxErrors, c.MaxJunkCommands
	c.Limits = c.Limits.withDefaults()
}

// setDefault sets *v to def when it is zero or less: unset.
func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Config is the whole server.
type Config struct {
	Listeners []ListenerConfig
	// SpoolDir holds the temporary files of large messages being received.
	SpoolDir string
	Logger   *slog.Logger
	// AuthLimiter counts failed AUTH attempts across every listener; nil
	// means the defaults (5 failures per IP or user in 15 minutes).
	AuthLimiter *authlimit.Limiter
	// Bus receives what happens on every connection (monitor.Event); nil
	// turns the feed off, at no cost.
	Bus *monitor.Bus
	// Recorder counts connections and transactions; the chains' Meter
	// (hooks.Options) times their hooks, usually into the same Recorder.
	// Nil counts nothing.
	Recorder *monitor.Recorder
	// MaxSpooling caps the messages the server receives at once (DATA or
	// a BDAT sequence in progress), across its listeners: the next DATA or
	// BDAT gets 421 4.7.0 and the connection is closed, rather than every
	// message going slower. Default DefaultMaxSpooling (200); negative
	// turns the cap off.
	MaxSpooling int
	// SpoolMemoryBudget caps the bytes of message bodies held in memory,
	// summed over every connection; past it a message spools to its file
	// at once (each listener's SpoolMemory still caps one message).
	// Default DefaultSpoolMemoryBudget (64 MiB); negative means no cap.
	SpoolMemoryBudget int64
}

// Server serves every listener of a Config.
type Server struct {
	log       *slog.Logger
	spoolDir  string
	listeners []*listener
	ctx       context.Context
	cancel    context.CancelFunc
	stopping  atomic.Bool
	startMu   sync.Mutex // orders Serve's wg.Add before Shutdown's wg.Wait
	wg        sync.WaitGroup

	authLimiter *authlimit.Limiter
	bus         *monitor.Bus
	recorder    *monitor.Recorder
	serving     atomic.Bool    // every listener accepts
	spooling    *overload.Gate // nil: no cap
	budget      *transaction.Budget
	work        chan *conn   // new connections for the waiting workers (start)
	idleWorkers atomic.Int32 // workers waiting on work
}

// New checks the configuration and prepares the spool directory. Nothing
// listens until Listen.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("create the spool directory: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if cfg.AuthLimiter == nil {
		cfg.AuthLimiter = &authlimit.Limiter{}
	}
	s := &Server{log: cfg.Logger, spoolDir: cfg.SpoolDir, ctx: ctx, cancel: cancel, work: make(chan *conn), authLimiter: cfg.AuthLimiter,
		bus: cfg.Bus, recorder: cfg.Recorder}
	switch {
	case cfg.MaxSpooling == 0:
		s.spooling = overload.NewGate(DefaultMaxSpooling)
	case cfg.MaxSpooling > 0:
		s.spooling = overload.NewGate(int64(cfg.MaxSpooling))
	}
	switch {
	case cfg.SpoolMemoryBudget == 0:
		s.budget = transaction.NewBudget(DefaultSpoolMemoryBudget)
	case cfg.SpoolMemoryBudget > 0:
		s.budget = transaction.NewBudget(cfg.SpoolMemoryBudget)
	default:
		s.budget = transaction.NewBudget(0) // counted, not capped
	}
	for _, lc := range cfg.Listeners {
		if lc.Chain == nil {
			cancel()
			return nil, fmt.Errorf("listener %q has no chain", lc.Name)
		}
		lc.setDefaults()
		l := &listener{srv: s, cfg: lc, conns: map[*conn]struct{}{}, perIP: map[netip.Addr]int{},
			log: s.log.With("listener", lc.Name)}
		l.refusals = overload.NewRefusalLog(l.log)
		if lc.MaxConnectionRatePerIP > 0 {
			l.rates = overload.NewRateTable(lc.MaxConnectionRatePerIP, lc.ConnectionRateWindow, overload.RateTableSize)
		}
		l.chain.Store(lc.Chain)
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

// Listen binds every listener's address, or takes the socket its
// ListenerConfig.Listener holds. An address already in use is an error
// that names the listener.
func (s *Server) Listen() error {
	for _, l := range s.listeners {
		l.ln = l.cfg.Listener // closed with the others if a bind below fails
	}
	for _, l := range s.listeners {
		if l.ln != nil {
			continue
		}
		ln, err := net.Listen("tcp", l.cfg.Address)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listener %q: %w", l.cfg.Name, err)
		}
		l.ln = ln
	}
	return nil
}

// The states of a Server (State).
const (
	StateStarting = "starting" // not every listener accepts yet
	StateReady    = "ready"    // every listener accepts
	StateDraining = "draining" // shutting down: no new connections
)

// State returns StateStarting until Serve accepts on every listener,
// StateReady while it does, StateDraining once Shutdown began: what a
// health check answers.
func (s *Server) State() string {
	switch {
	case s.stopping.Load():
		return StateDraining
	case s.serving.Load():
		return StateReady
	}
	return StateStarting
}

// Addr returns the bound address of the named listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.cfg.Name == name && l.ln != nil {
			return l.ln.Addr()
		}
	}
	return nil
}

// Serve serves every listener until Shutdown; it returns nil then.
func (s *Server) Serve() error {
	errs := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		if l.ln == nil {
			return fmt.Errorf("listener %q: call Listen before Serve", l.cfg.Name)
		}
	}
	// The goroutines are counted before Shutdown can wait for them, or
	// not at all when it came first.
	s.startMu.Lock()
	if s.stopping.Load() {
		s.startMu.Unlock()
		return nil
	}
	s.wg.Add(len(s.listeners) + 1)
	s.startMu.Unlock()
	for _, l := range s.listeners {
		l.log.Info("listening", "address", l.ln.Addr().String(), "plugins", l.chain.Load().Plugins())
		go func() {
			defer s.wg.Done()
			errs <- l.serve()
		}()
	}
	go func() {
		defer s.wg.Done()
		s.watchdog(s.ctx.Done())
	}()
	s.serving.Store(true)
	for range s.listeners {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

// ClientInfo describes a connection the server did not accept itself,
// such as one on stdin and stdout under ucspi-tcp's tcpserver or inetd:
// what its launcher knows of the client and the settings it gives this one
// client (tcprules' variables). The zero value takes everything from the
// connection and the listener.
type ClientInfo struct {
	// Remote and Local are the client's and the server's address and
	// port (TCPREMOTEIP/TCPREMOTEPORT, TCPLOCALIP/TCPLOCALPORT); zero
	// means the connection's own.
	Remote, Local netip.AddrPort
	// RemoteHost is the client's name as the launcher looked it up
	// (TCPREMOTEHOST).
	RemoteHost string
	// RemoteInfo is the client's ident answer (TCPREMOTEINFO).
	RemoteInfo string
	// Relay lets the client send to any domain (RELAYCLIENT set), as a
	// relay plugin or AUTH would.
	Relay bool
	// RcptSuffix is appended to every recipient address (RELAYCLIENT's
	// value, qmail-smtpd's rule; almost always empty).
	RcptSuffix string
	// MaxMessageSize replaces the listener's limit for this client when
	// positive (DATABYTES).
	MaxMessageSize int64
}

// ServeConn serves one connection that the server did not accept on the
// named listener's policy (its plugin chain, limits and TLS settings), and
// returns when the client is done. The listener need not listen: this is
// how `smtpd stdio` serves the connection tcpserver or inetd hands it on
// stdin and stdout. The per-IP and per-listener caps count the connection
// as any other; the launcher (tcpserver -c) caps processes.
func (s *Server) ServeConn(name string, nc net.Conn, info ClientInfo) error {
	var l *listener
	for _, cand := range s.listeners {
		if cand.cfg.Name == name {
			l = cand
		}
	}
	if l == nil {
		nc.Close()
		return fmt.Errorf("no listener named %q", name)
	}
	s.startMu.Lock()
	if s.stopping.Load() {
		s.startMu.Unlock()
		overload.Refuse(nc, replyTooManyConnections)
		return nil
	}
	s.wg.Add(1)
	s.startMu.Unlock()
	defer s.wg.Done()
	c := l.admit(nc, &info)
	if c == nil {
		return nil
	}
	done, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		s.watchdog(done)
	}()
	c.serve()
	close(done)
	<-watched
	return nil
}

// Reload swaps the chains of the named listeners. Connections in progress
// keep the chain they started with; the returned channel is closed once
// none of them is left, so the caller can close the old plugins then.
func (s *Server) Reload(chains map[string]*hooks.Chain) <-chan struct{} {
	var old []*hooks.Chain
	for _, l := range s.listeners {
		if ch, ok := chains[l.cfg.Name]; ok {
			if prev := l.chain.Swap(ch); prev != ch {
				old = append(old, prev)
			}
		}
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for s.inUse(old) {
			select {
			case <-tick.C:
			case <-s.ctx.Done():
				return
			}
		}
	}()
	return drained
}

// inUse reports whether a connection still runs one of chains.
func (s *Server) inUse(chains []*hooks.Chain) bool {
	for _, l := range s.listeners {
		l.mu.Lock()
		for c := range l.conns {
			for _, ch := range chains {
				if c.sess.cfg.Chain == ch {
					l.mu.Unlock()
					return true
				}
			}
		}
		l.mu.Unlock()
	}
	return false
}

// Shutdown stops accepting, closes idle connections with 421, lets
// transactions in progress finish until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.startMu.Lock()
	s.stopping.Store(true)
	s.startMu.Unlock()
	s.closeListeners()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		n := 0
		for _, l := range s.listeners {
			n += l.wakeIdle()
		}
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			for _, l := range s.listeners {
				l.closeAll()
			}
			s.cancel()
			s.wg.Wait()
			// The closed connections end their sessions themselves (a hook
			// in progress sees its context cancelled); give them a moment.
			grace := time.NewTimer(abortGrace)
			defer grace.Stop()
		wait:
			for s.connections() > 0 {
				select {
				case <-grace.C:
					break wait
				case <-tick.C:
				}
			}
			return fmt.Errorf("shutdown: %d connections still busy at the deadline were closed", n)
		case <-tick.C:
		}
	}
	s.cancel()
	s.wg.Wait()
	return nil
}

// stuckGrace is how much longer than the most its hooks may take (see
// stuckAfter) a connection may keep the server working on one input.
const stuckGrace = time.Second

// stuckAfter is how long the server may work on one line or message of a
// connection before the watchdog ends it: the queue hook's deadline and
// five more hook deadlines (data_post, queue_pre, received_line, the
// observers around them), then stuckGrace. Only a plugin that ignores its
// context, or a client that reads no replies, gets there.
func stuckAfter(ch *hooks.Chain) time.Duration {
	hook, queue := ch.Deadlines()
	return queue + 5*hook + stuckGrace
}

// watchdog ends the connections that are stuck on the server side (see
// conn.stuck), until the server stops. Nothing else interrupts a plugin
// that ignores its context: the chain checks the deadline when the plugin
// returns.
func (s *Server) watchdog(done <-chan struct{}) {
	period := time.Second
	for _, l := range s.listeners {
		period = min(period, max(stuckAfter(l.chain.Load())/4, 10*time.Millisecond))
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	var stuck []*conn
	var since []time.Duration
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		now := time.Now().UnixNano()
		stuck, since = stuck[:0], since[:0]
		for _, l := range s.listeners {
			l.mu.Lock()
			for c := range l.conns {
				w := c.working.Load()
				if w == 0 {
					continue
				}
				if d := time.Duration(now - w); d > stuckAfter(c.sess.cfg.Chain) && c.working.CompareAndSwap(w, 0) {
					stuck, since = append(stuck, c), append(since, d)
				}
			}
			l.mu.Unlock()
		}
		for i, c := range stuck {
			c.stuck(since[i])
		}
	}
}

// abortGrace is how long Shutdown waits, after its deadline, for the
// connections it closed to end their sessions.
const abortGrace = 5 * time.Second

// connections counts the open connections of every listener.
func (s *Server) connections() int {
	n := 0
	for _, l := range s.listeners {
		l.mu.Lock()
		n += len(l.conns)
		l.mu.Unlock()
	}
	return n
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		if l.ln != nil {
			l.ln.Close()
		}
	}
}
