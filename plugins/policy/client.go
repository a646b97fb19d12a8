package policy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/sluice-mta/sluice/policyd/wire"
	"net"
	"sync"
	"time"
)

// errGarbled marks a reply that breaks the protocol (wire.ReadAction's
// limits and rules): such a connection is closed, and the request is not
// retried.
var errGarbled = errors.New("garbled reply")

// pool is the client side of the policy delegation protocol: it keeps a few
// connections to one server open between requests, as Postfix's smtpd keeps
// its policy connection, and closes those idle or old past their limits.
type pool struct {
	network, address string
	timeout          time.Duration // per request: connect, write, read
	idleTimeout      time.Duration // an idle connection older than this is closed
	maxTTL           time.Duration // a connection older than this is not reused
	maxIdle          int           // idle connections kept; 0 keeps none

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
}

// conn is one connection to the policy server.
type conn struct {
	net.Conn
	r          *bufio.Reader
	born, used time.Time
}

// ask sends one request (its attribute lines, with the empty line that ends
// it) and returns the action the server answered. The whole exchange is
// bounded by the pool's timeout and by ctx. A request that fails on a
// reused connection (the server closed it while it was idle) is sent once
// more on a new one, as Postfix's smtpd_policy_service_try_limit does.
func (p *pool) ask(ctx context.Context, req []byte) (string, error) {
	deadline := time.Now().Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for attempt := 0; ; attempt++ {
		c := p.get()
		reused := c != nil
		if c == nil {
			var err error
			if c, err = p.dial(ctx, deadline); err != nil {
				return "", err
			}
		}
		action, err := c.roundTrip(ctx, deadline, req)
		if err == nil {
			p.put(c)
			return action, nil
		}
		c.Close()
		if reused && attempt == 0 && ctx.Err() == nil && !errors.Is(err, errGarbled) && !isTimeout(err) {
			continue
		}
		return "", err
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (p *pool) dial(ctx context.Context, deadline time.Time) (*conn, error) {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, p.network, p.address)
	if err != nil {
		return nil, fmt.Errorf("connect to policy server %s: %w", p.address, err)
	}
	now := time.Now()
	return &conn{Conn: nc, r: bufio.NewReaderSize(nc, 1024), born: now, used: now}, nil
}

// get returns the most recently used idle connection that is still fresh,
// closing the stale ones, or nil.
func (p *pool) get() *conn {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if now.Sub(c.used) < p.idleTimeout && now.Sub(c.born) < p.maxTTL {
			return c
		}
		c.Close()
	}
	return nil
}

// put keeps c for the next request, or closes it when the pool is full,
// closed, or c has lived past max_ttl.
func (p *pool) put(c *conn) {
	c.used = time.Now()
	p.mu.Lock()
	if !p.closed && len(p.idle) < p.maxIdle && c.used.Sub(c.born) < p.maxTTL {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Close closes the idle connections; those in use are closed when their
// request ends.
func (p *pool) Close() error {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	return nil
}

// roundTrip writes req and reads the reply up to its empty line.
func (c *conn) roundTrip(ctx context.Context, deadline time.Time, req []byte) (string, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return "", err
	}
	// A cancelled ctx (the client went away, the hook's deadline) ends
	// the exchange at once rather than at the deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(req); err != nil {
		return "", fmt.Errorf("send to policy server: %w", err)
	}
	action, err := wire.ReadAction(c.r)
	var pe *wire.ProtocolError
	switch {
	case errors.As(err, &pe):
		return "", fmt.Errorf("policy server: %w: %s", errGarbled, pe.Problem)
	case err != nil && ctx.Err() != nil:
		return "", fmt.Errorf("read from policy server: %w", ctx.Err())
	case err != nil:
		return "", fmt.Errorf("read from policy server: %w", err)
	}
	return action, nil
}
