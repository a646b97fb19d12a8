// Package smtpproxy is the smtpproxy queue plugin: a live proxy to a
// downstream SMTP or LMTP server. The downstream session opens at MAIL,
// each RCPT is passed on at once (the client hears a downstream refusal
// while it can still act on it), the message streams through once, and
// the downstream's reply to it is the client's. It is Haraka's
// queue/smtp_proxy, on smtpforward's settings.
package smtpproxy

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/plugins/smtpforward"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("smtpproxy", New) }

// DefaultHost is the downstream used when the host setting is absent.
const DefaultHost = smtpforward.DefaultHost

// NoteRemoteID is the transaction note that holds the downstream's own
// queue id, when its reply to the message named one.
var NoteRemoteID = notes.NewKey[string]("smtpproxy.remote_id")

// Settings are the plugin's [plugins.smtpproxy] table: smtpforward's keys
// and defaults (host, lmtp, helo, starttls, connect_timeout,
// data_timeout, fallback_queue, dsn_queue).
type Settings = smtpforward.Settings

// Plugin is a configured smtpproxy instance. It holds configuration only:
// each client connection's downstream session lives in its c.Notes.
type Plugin struct {
	// fwd is smtpforward built from the same settings: the downstream
	// client, the routes (fallback_queue, dsn_queue) and DSN.
	fwd *smtpforward.Plugin
	fw  *queue.Forwarder
}

var (
	_ hooks.Mail       = (*Plugin)(nil)
	_ hooks.Rcpt       = (*Plugin)(nil)
	_ hooks.Data       = (*Plugin)(nil)
	_ hooks.Queue      = (*Plugin)(nil)
	_ hooks.Reset      = (*Plugin)(nil)
	_ hooks.Disconnect = (*Plugin)(nil)
	_ hooks.Router     = (*Plugin)(nil)
	_ hooks.DSNCarrier = (*Plugin)(nil)
)

// New builds the plugin from its settings; a bad setting is an error that
// names it.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := smtpforward.DefaultSettings()
	if err := decode(&s); err != nil {
		return nil, err
	}
	fwd, err := smtpforward.FromSettings(s, NoteRemoteID)
	if err != nil {
		return nil, err
	}
	return &Plugin{fwd: fwd, fw: fwd.Forwarder()}, nil
}

// Routes implements hooks.Router: the fallback_queue and dsn_queue
// instances, when set.
func (p *Plugin) Routes() []string { return p.fwd.Routes() }

// SetRoutes implements hooks.Router.
func (p *Plugin) SetRoutes(routes map[string]hooks.Queue) error { return p.fwd.SetRoutes(routes) }

// CarriesDSN implements hooks.DSNCarrier, as smtpforward does: true with
// a dsn_queue.
func (p *Plugin) CarriesDSN() bool { return p.fwd.CarriesDSN() }

// Mail implements hooks.Mail: it opens the downstream session (or takes
// the one this connection keeps) and sends MAIL FROM. The downstream's
// refusal is the client's reply; otherwise the plugin declines, so that
// the sender checks after it still run.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	l, mine := p.link(c)
	if !mine {
		return hooks.Result{}
	}
	if _, err := p.mail(ctx, c, l, tx); err != nil {
		return mailRefusal(err)
	}
	return hooks.Result{}
}

// Rcpt implements hooks.Rcpt: it passes RCPT TO on at once. A downstream
// refusal is the client's reply (its code, status and text); an
// acceptance declines, so that the plugins after this one (rcptok,
// relay) decide whether Sluice takes the recipient: the downstream's
// word never makes Sluice relay.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	l, mine := p.link(c)
	if !mine {
		return hooks.Result{}
	}
	if l == nil || l.tx != tx {
		// The mail hook did not open it (a plugin before this one
		// answered MAIL), or the session broke since.
		var err error
		if l, err = p.mail(ctx, c, l, tx); err != nil {
			return mailRefusal(err)
		}
	}
	o, err := l.s.Rcpt(ctx, tx, rcpt)
	if err != nil {
		p.dropIfDead(c, l, err)
		return queue.Result(err)
	}
	if !o.Delivered {
		if o.Code == 421 {
			p.drop(c, l) // the downstream is closing the connection
		}
		return rcptRefusal(o, p.fw.Addr)
	}
	l.accepted = append(l.accepted, rcpt)
	return hooks.Result{}
}

// Data implements hooks.Data: before the client sends the message, the
// downstream's recipients are made exactly the transaction's (see sync),
// so that its refusal comes now rather than after the message.
func (p *Plugin) Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if _, mine := p.link(c); !mine {
		return hooks.Result{}
	}
	if _, err := p.sync(ctx, c, tx); err != nil {
		return queue.Result(err)
	}
	return hooks.Result{}
}

// Queue implements hooks.Queue: it streams the spooled message to the
// downstream and answers with its reply. With SMTP that is the one reply
// to the final dot; with LMTP, when some recipients were delivered and
// others refused, the routes (fallback_queue, dsn_queue) take the
// refused ones as smtpforward's do, or the message is deferred.
func (p *Plugin) Queue(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if _, mine := p.link(c); !mine {
		return hooks.Result{}
	}
	l, err := p.sync(ctx, c, tx)
	if err != nil {
		return queue.Result(err)
	}
	outs, remoteID, err := l.s.Data(ctx, tx)
	if err == nil || outs != nil {
		// The downstream answered the message: its transaction is over.
		l.tx, l.accepted = nil, nil
	}
	p.dropIfDead(c, l, err)
	if err == nil {
		err = queue.Verdict(outs)
	}
	res := p.fwd.Routing().Settle(ctx, c, tx, outs, err)
	if res.Code != hooks.OK {
		return res
	}
	tx.QueueID = tx.ID
	if remoteID != "" {
		NoteRemoteID.Set(&tx.Notes, remoteID)
		res.Detail = joinDetail("downstream queued as "+remoteID, res.Detail)
	}
	if !l.s.Extension("DSN") {
		res.Detail = joinDetail(res.Detail, p.fwd.Routing().NotifySuccess(ctx, c, tx, outs, p.fwd.Forwarder().LMTP))
	}
	return res
}

// Reset implements hooks.Reset: RSET ends the downstream's transaction,
// if it still has one; the session stays open for the connection's next
// transaction.
func (p *Plugin) Reset(ctx context.Context, c *connection.Connection, _ *transaction.Transaction) {
	l, mine := p.link(c)
	if !mine || l == nil {
		return
	}
	if l.tx != nil && !l.s.Broken() {
		if err := l.s.Reset(ctx); err != nil {
			p.drop(c, l)
			return
		}
	}
	l.tx, l.accepted = nil, nil
	if l.s.Broken() {
		p.drop(c, l)
	}
}

// Disconnect implements hooks.Disconnect: QUIT, and the downstream
// connection is closed.
func (p *Plugin) Disconnect(_ context.Context, c *connection.Connection) {
	if l, mine := p.link(c); mine && l != nil {
		p.drop(c, l)
	}
}

// joinDetail joins two log details, either of which may be empty.
func joinDetail(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return fmt.Sprintf("%s; %s", a, b)
}
