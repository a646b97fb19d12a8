package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/sluice-mta/sluice/policyd/wire"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Defaults of the Server's limits.
const (
	// DefaultIdleTimeout is how long a connection may wait for its next
	// request: longer than Postfix keeps an idle policy connection
	// (smtpd_policy_service_max_idle, 300s).
	DefaultIdleTimeout = 330 * time.Second
	// DefaultWriteTimeout bounds writing one answer.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultMaxConnections caps the connections served at once: each
	// Postfix smtpd process holds one (default_process_limit is 100).
	DefaultMaxConnections = 200
)

// Server serves the policy protocol on one listening socket.
type Server struct {
	// Checker answers each request.
	Checker *Checker
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// IdleTimeout, WriteTimeout and MaxConnections: zero means the
	// defaults above. A connection over MaxConnections is closed at once
	// (Postfix then applies smtpd_policy_service_default_action).
	IdleTimeout, WriteTimeout time.Duration
	MaxConnections            int

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]bool // true while a request is being answered
	closing  bool
	done     chan struct{}
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
	unixPath string
}

// Listen opens address: "host:port" for TCP, or "unix:/path" for a unix
// socket, made mode 0660 (a stale socket file left by a previous run is
// removed first; any other file there is an error).
func (s *Server) Listen(address string) error {
	var ln net.Listener
	var err error
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		if fi, err := os.Lstat(path); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return fmt.Errorf("listen on %s: %s exists and is not a socket; remove it or choose another path", address, path)
			}
			os.Remove(path)
		}
		if ln, err = net.Listen("unix", path); err != nil {
			return fmt.Errorf("listen on %s: %w", address, err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return fmt.Errorf("listen on %s: %w", address, err)
		}
		s.unixPath = path
	} else if ln, err = net.Listen("tcp", address); err != nil {
		return fmt.Errorf("listen on %s: %w (an address is host:port or unix:/path)", address, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.conns = map[net.Conn]bool{}
	s.done = make(chan struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.Unlock()
	return nil
}

// Addr returns the listening address, once Listen succeeded.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections until Shutdown; it returns nil after
// Shutdown.
func (s *Server) Serve() error {
	s.log().Info("listening", "address", s.ln.Addr().String(), "plugins", s.Checker.Session.Chain.Plugins())
	limit := s.MaxConnections
	if limit <= 0 {
		limit = DefaultMaxConnections
	}
	var backoff time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(backoff*2, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed; retrying", "err", err, "in", backoff.String())
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		if len(s.conns) >= limit {
			s.mu.Unlock()
			s.log().Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max", limit)
			nc.Close()
			continue
		}
		s.conns[nc] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(nc)
	}
}

// isTemporary reports an accept error worth retrying: too many open
// files, a connection aborted before it was accepted.
func isTemporary(err error) bool {
	s := err.Error()
	return strings.Contains(s, "too many open files") || strings.Contains(s, "connection aborted")
}

// serveConn answers the requests of one connection until the client
// closes it, an idle timeout, a protocol error or Shutdown.
func (s *Server) serveConn(nc net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, nc)
		s.mu.Unlock()
		nc.Close()
	}()
	log := s.log().With("remote", nc.RemoteAddr().String())
	idle, write := s.IdleTimeout, s.WriteTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if write <= 0 {
		write = DefaultWriteTimeout
	}
	r := bufio.NewReader(nc)
	for {
		nc.SetReadDeadline(time.Now().Add(idle))
		req, err := wire.ReadRequest(r)
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF), s.shuttingDown():
			case errors.As(err, &ne) && ne.Timeout():
				log.Info("policy connection idle too long; closing", "timeout", idle.String())
			default:
				// SMTPD_POLICY_README: in trouble, log and close
				// without answering.
				log.Warn("closing the policy connection", "err", err)
			}
			return
		}
		if !s.busy(nc, true) {
			return
		}
		start := time.Now()
		v := s.Checker.Check(s.ctx, req)
		s.busy(nc, false)
		log.Info("policy request", "conn", v.Conn, "state", req["protocol_state"], "client", req["client_address"],
			"helo", req["helo_name"], "sender", req["sender"], "recipient", req["recipient"], "instance", req["instance"],
			"action", v.Action, "duration", time.Since(start).Round(time.Microsecond).String())
		nc.SetWriteDeadline(time.Now().Add(write))
		if err := wire.WriteAction(nc, v.Action); err != nil {
			log.Warn("writing the policy answer failed", "err", err)
			return
		}
		if s.shuttingDown() {
			return
		}
	}
}

// busy marks whether nc is answering a request; it reports false when the
// server is shutting down and a new request must not start.
func (s *Server) busy(nc net.Conn, b bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b && s.closing {
		return false
	}
	s.conns[nc] = b
	return true
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting, closes the idle connections and waits for the
// requests in progress to be answered, up to ctx's end; then it cancels
// their hooks and closes everything. A unix socket file is removed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	close(s.done)
	s.ln.Close()
	for nc, busy := range s.conns {
		if !busy {
			nc.Close()
		}
	}
	s.mu.Unlock()
	if s.unixPath != "" {
		os.Remove(s.unixPath)
	}
	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	<-finished
	return ctx.Err()
}
