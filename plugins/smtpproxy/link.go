package smtpproxy

import (
	"context"
	"errors"
	"slices"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

// link is one client connection's session with the downstream, kept in
// the connection's notes from the first MAIL to the disconnect and reused
// by its transactions (RSET between them). Hooks of one connection run
// one at a time, so it needs no lock.
type link struct {
	// owner is the smtpproxy instance that opened it: a second smtpproxy
	// in the same chain leaves the connection to the first.
	owner *Plugin
	s     *queue.Session
	// tx is the transaction whose MAIL FROM the downstream took, nil when
	// the downstream has no transaction open.
	tx *transaction.Transaction
	// accepted are the recipients the downstream accepted in tx, in the
	// order they were sent.
	accepted []string
}

// noteLink is the connection note that holds the downstream session.
var noteLink = notes.NewKey[*link]("smtpproxy.session")

// link returns the connection's downstream session (nil when none is
// open) and whether this instance is the one that proxies the connection.
func (p *Plugin) link(c *connection.Connection) (*link, bool) {
	l := noteLink.Get(&c.Notes)
	if l != nil && l.owner != p {
		return nil, false
	}
	return l, true
}

// mail starts the transaction tx at the downstream: it ends the one the
// downstream may still have open (RSET), opens a session when l is nil
// or broken, and sends MAIL FROM. A reused session that turns out to be
// closed (the downstream's idle timeout, a 421) is replaced once. The
// error is a *queue.Error.
func (p *Plugin) mail(ctx context.Context, c *connection.Connection, l *link, tx *transaction.Transaction) (*link, error) {
	if l != nil && l.tx != nil && !l.s.Broken() {
		if err := l.s.Reset(ctx); err != nil {
			p.drop(c, l)
			l = nil
		}
	}
	if l != nil && l.s.Broken() {
		p.drop(c, l)
		l = nil
	}
	reused := l != nil
	if l == nil {
		var err error
		if l, err = p.open(ctx, c); err != nil {
			return nil, err
		}
	}
	l.tx, l.accepted = nil, nil
	err := l.s.Mail(ctx, tx)
	if err != nil && reused && dead(l, err) && ctx.Err() == nil {
		p.drop(c, l)
		if l, err = p.open(ctx, c); err != nil {
			return nil, err
		}
		err = l.s.Mail(ctx, tx)
	}
	if err != nil {
		p.dropIfDead(c, l, err)
		return nil, &mailError{err}
	}
	l.tx = tx
	return l, nil
}

// open connects to the downstream and keeps the session in c's notes.
func (p *Plugin) open(ctx context.Context, c *connection.Connection) (*link, error) {
	s, err := p.fw.Open(ctx)
	if err != nil {
		return nil, err
	}
	l := &link{owner: p, s: s}
	noteLink.Set(&c.Notes, l)
	return l, nil
}

// sync makes the downstream's transaction exactly tx: the same MAIL and
// the same recipients. The rcpt hook passed each RCPT on before the
// plugins after this one decided, and one of them (rcptok, relay) may
// have refused a recipient the downstream accepted; the downstream must
// never get the message for it. Then (rarely) sync sends RSET, MAIL and
// RCPT for exactly tx.Recipients. It also starts the transaction when
// the session broke or the mail hook never ran. Any refusal now is a
// *queue.Error for the whole message: the client was told 250 for each
// recipient already.
func (p *Plugin) sync(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) (*link, error) {
	l, _ := p.link(c)
	if l != nil && l.tx == tx && !l.s.Broken() && slices.Equal(l.accepted, tx.Recipients) {
		return l, nil
	}
	l, err := p.mail(ctx, c, l, tx)
	if err != nil {
		return nil, err
	}
	outs := make(queue.Outcomes, 0, len(tx.Recipients))
	for _, r := range tx.Recipients {
		o, err := l.s.Rcpt(ctx, tx, r)
		if err != nil {
			p.dropIfDead(c, l, err)
			return nil, err
		}
		outs = append(outs, o)
		if o.Delivered {
			l.accepted = append(l.accepted, r)
		}
	}
	if len(l.accepted) < len(tx.Recipients) {
		return nil, queue.Verdict(outs)
	}
	return l, nil
}

// drop closes the session (QUIT unless it broke) and forgets it.
func (p *Plugin) drop(c *connection.Connection, l *link) {
	l.s.Close()
	if noteLink.Get(&c.Notes) == l {
		noteLink.Delete(&c.Notes)
	}
}

// dropIfDead drops the session when err left it unusable.
func (p *Plugin) dropIfDead(c *connection.Connection, l *link, err error) {
	if dead(l, err) {
		p.drop(c, l)
	}
}

// dead reports whether the session can serve no more commands: the
// connection failed, or the downstream answered 421 (it closes).
func dead(l *link, err error) bool {
	if l.s.Broken() {
		return true
	}
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code == 421
}
