package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

// The probe connections kept open between checks.
const (
	// maxIdle bounds the connections kept open waiting for a check.
	maxIdle = 4
	// idleTimeout is how long a connection may wait for its next check;
	// an older one is closed rather than reused (Postfix's smtpd drops a
	// silent client after 300s, and a dropped connection costs a retry).
	idleTimeout = 30 * time.Second
	// maxProbes is how many probes one connection serves before it is
	// closed: Postfix's smtpd counts RSET as a junk command, and past 100
	// of them it counts errors, which it answers slower and slower.
	maxProbes = 50
)

// prober checks recipients with MAIL, RCPT and RSET over an SMTP or LMTP
// connection to the downstream. It keeps up to maxIdle connections open
// between checks and is safe for concurrent use. A connection that saw a
// refusal is closed, not kept: Postfix's smtpd counts each refused RCPT
// as an error and slows down a client that makes many.
type prober struct {
	fw      *queue.Forwarder
	sender  string
	maxIdle int
	// probes counts the RCPTs sent, for tests.
	probes atomic.Int64

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
}

// conn is one open probe connection.
type conn struct {
	s     *queue.Session
	used  int
	since time.Time // when it went idle
}

func newProber(fw *queue.Forwarder, sender string, maxIdle int) *prober {
	return &prober{fw: fw, sender: sender, maxIdle: maxIdle}
}

// check probes rcpt. A kept connection the downstream closed in the
// meantime costs one retry over a new connection.
func (p *prober) check(ctx context.Context, rcpt string) answer {
	for {
		c := p.take()
		reused := c != nil
		if c == nil {
			s, err := p.fw.Open(ctx)
			if err != nil {
				return answer{verdict: unreachable, err: cause(err)}
			}
			c = &conn{s: s}
		}
		a, stale := p.probe(ctx, c, rcpt)
		if stale && reused && ctx.Err() == nil {
			continue
		}
		return a
	}
}

// probe runs MAIL, RCPT and RSET on c and then keeps or closes it. stale
// reports a failure that a new connection might not have (a broken
// connection, a 421 goodbye).
func (p *prober) probe(ctx context.Context, c *conn, rcpt string) (a answer, stale bool) {
	keep := false
	defer func() {
		if !keep {
			c.s.Close()
		}
	}()
	tx := &transaction.Transaction{Sender: p.sender, Recipients: []string{rcpt}, Body: transaction.NewSpool("", 0)}
	if err := c.s.Mail(ctx, tx); err != nil {
		return answer{verdict: unreachable, err: fmt.Errorf("the probe's MAIL FROM:<%s>: %w", p.sender, cause(err))}, true
	}
	p.probes.Add(1)
	c.used++
	o, err := c.s.Rcpt(ctx, tx, rcpt)
	switch {
	case err != nil:
		return answer{verdict: unreachable, err: cause(err)}, true
	case o.Code == 421:
		return answer{verdict: unreachable, err: fmt.Errorf("the downstream is closing the connection: %s", o.Reply)}, true
	case o.Delivered:
		a = answer{verdict: exists}
	case o.Permanent:
		a = answer{verdict: unknown, code: o.Code, enhanced: o.Enhanced, text: replyText(o)}
	default:
		a = answer{verdict: refusedNow, code: o.Code, enhanced: o.Enhanced, text: replyText(o)}
	}
	if c.s.Reset(ctx) != nil || a.verdict != exists || c.used >= maxProbes {
		return a, false
	}
	keep = p.put(c)
	return a, false
}

// take returns an idle connection that is fresh enough, or nil.
func (p *prober) take() *conn {
	var old []*conn
	defer func() {
		for _, c := range old {
			c.s.Close()
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if time.Since(c.since) < idleTimeout {
			return c
		}
		old = append(old, c)
	}
	return nil
}

// put keeps c for a later check; it reports false when c must be closed
// instead (the pool is full or closed).
func (p *prober) put(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle) >= p.maxIdle {
		return false
	}
	c.since = time.Now()
	p.idle = append(p.idle, c)
	return true
}

// close closes the idle connections; a connection in use is closed when
// its check ends.
func (p *prober) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.s.Close()
	}
}

// replyText is the text of a downstream reply, without its code and
// enhanced code: Outcome.Reply is "550 5.1.1 <x>: User unknown".
func replyText(o queue.Outcome) string {
	_, text, _ := strings.Cut(o.Reply, " ")
	if o.Enhanced[0] != 0 {
		_, text, _ = strings.Cut(text, " ")
	}
	return text
}

// cause is the log text of a downstream failure: queue's *Error holds the
// text meant for a client and, beneath it, what happened.
func cause(err error) error {
	var qe *queue.Error
	if errors.As(err, &qe) && qe.Err != nil {
		return qe.Err
	}
	return err
}
