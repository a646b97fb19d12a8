package server

import (
	"crypto/tls"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/transaction"
)

// What the operator sees of a session: the events on the Bus, the figures
// of the Recorder, and one summary line per transaction. Nothing here
// formats anything unless someone reads it: the Bus and the Recorder may
// be nil, and the summary line is built only when INFO is logged.

// txState is what a Session keeps of the transaction in progress for its
// summary line; its slice is reused from one transaction to the next.
type txState struct {
	open        bool
	inMail      bool // MAIL's hooks run: their decisions belong to the transaction it may open
	start       time.Time
	decisions   []hooks.Decision // every decision but Declined, in order
	decider     string           // the plugin whose refusal is the last reply, "" for the server's own
	refusal     int              // the code of a refused DATA, while the transaction stays open
	refuser     string           // and the plugin that refused it
	rcptRefusal hooks.Reply      // the last refused RCPT's reply
	rcptRefuser string           // and the plugin that refused it, "" for the server
	queuedBy    string           // the queue plugin that took the message
	rcpt        string           // the recipient the rcpt hooks are asked about
}

// event returns an Event of kind with the connection's fields set. Call it
// only with a Bus.
func (s *Session) event(kind string) monitor.Event {
	c := s.conn
	e := monitor.Event{Kind: kind, Listener: c.Listener, Conn: c.ID, Remote: c.Remote.String()}
	if s.tx != nil {
		e.Tx = s.tx.ID
	}
	return e
}

// publish hands e to the Bus, when there is one.
func (s *Session) publish(e monitor.Event) { s.cfg.Bus.Publish(e) }

// decided notes a plugin's decision that was not Declined.
func (s *Session) decided(d hooks.Decision, rep hooks.Reply) {
	if s.txs.open || s.txs.inMail {
		s.txs.decisions = append(s.txs.decisions, d)
	}
	if !rep.Positive() {
		s.txs.decider = d.Plugin
	}
	if s.cfg.Bus != nil {
		e := s.event(monitor.KindHook)
		e.Hook, e.Plugin, e.Code, e.Reply = d.Hook.String(), d.Plugin, d.Result.Code.String(), rep.String()
		if d.Hook == hooks.HookRcptPre || d.Hook == hooks.HookRcpt {
			e.Rcpt = s.txs.rcpt // the view strikes a refused recipient through
		}
		s.publish(e)
	}
}

// txBegin starts the figures of tx, which MAIL opened.
func (s *Session) txBegin(tx *transaction.Transaction) {
	s.txs.open = true
	s.txs.start = time.Now()
	s.txs.refusal, s.txs.refuser, s.txs.queuedBy = 0, "", ""
	s.txs.rcptRefusal, s.txs.rcptRefuser = hooks.Reply{}, ""
	if r := s.cfg.Recorder; r != nil {
		r.TxStarted()
	}
	if s.cfg.Bus != nil {
		e := s.event(monitor.KindMail)
		e.Tx, e.Sender = tx.ID, tx.Sender
		s.publish(e)
	}
}

// resultOf is the Result of a transaction whose last reply had code.
func resultOf(code int) string {
	switch code / 100 {
	case 2:
		return monitor.ResultAccepted
	case 4:
		return monitor.ResultDeferred
	case 5:
		return monitor.ResultRefused
	}
	return monitor.ResultAborted
}

// txEnd ends the figures of tx: the client got rep for its message (a
// zero rep: the transaction ended without one).
func (s *Session) txEnd(tx *transaction.Transaction, rep hooks.Reply) {
	if !s.txs.open {
		return
	}
	s.txs.open = false
	plugin, code := s.txs.decider, rep.Code
	switch {
	case code != 0:
	case s.txs.refusal != 0:
		// No message after a refused DATA: the refusal ended it.
		plugin, code = s.txs.refuser, s.txs.refusal
	case len(tx.Recipients) == 0 && s.txs.rcptRefusal.Code != 0:
		// Every recipient was refused, and the client gave up: the
		// message was refused (or deferred) at RCPT, as Postfix's
		// "NOQUEUE: reject: RCPT" counts it, not abandoned.
		plugin, code, rep = s.txs.rcptRefuser, s.txs.rcptRefusal.Code, s.txs.rcptRefusal
	}
	result := resultOf(code)
	switch result {
	case monitor.ResultAccepted:
		plugin, code = s.txs.queuedBy, 0
	case monitor.ResultAborted:
		plugin, code = "", 0
	}
	if r := s.cfg.Recorder; r != nil {
		if result == monitor.ResultAccepted {
			r.TxEnded(result, "", 0)
		} else {
			r.TxEnded(result, plugin, code)
		}
	}
	dur := time.Since(s.txs.start)
	if s.log.Enabled(s.ctx, slog.LevelInfo) {
		s.summary(tx, result, code, dur)
	}
	if s.cfg.Bus != nil {
		e := s.event(monitor.KindTxEnd)
		e.Tx, e.Result, e.Plugin, e.QueueID = tx.ID, result, plugin, tx.QueueID
		if rep.Code != 0 {
			e.Reply = rep.String()
		}
		e.Size, e.Rcpts, e.Duration = tx.MessageSize(), slices.Clone(tx.Recipients), dur
		s.publish(e)
	}
	clear(s.txs.decisions)
	s.txs.decisions = s.txs.decisions[:0]
}

// summary logs the transaction's one line, as Postfix's and Haraka's.
func (s *Session) summary(tx *transaction.Transaction, result string, code int, dur time.Duration) {
	c := s.conn
	tlsVersion := ""
	if c.TLS != nil {
		tlsVersion = tls.VersionName(c.TLS.Version)
	}
	var b strings.Builder
	for i, d := range s.txs.decisions {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(d.Plugin)
		b.WriteByte('/')
		b.WriteString(d.Hook.String())
		b.WriteByte('=')
		b.WriteString(d.Result.Code.String())
	}
	args := []any{"tx", tx.ID, "client", c.RemoteIP().String(), "client_name", c.RemoteHost, "helo", c.Helo,
		"tls", tlsVersion, "user", c.AuthUser, "from", tx.Sender, "rcpts", len(tx.Recipients), "size", tx.MessageSize(),
		"decisions", b.String(), "queue_plugin", s.txs.queuedBy, "queue_id", tx.QueueID, "result", result}
	if code != 0 {
		args = append(args, "code", code)
	}
	args = append(args, "duration", dur.Round(time.Microsecond).String())
	s.log.Info("transaction", args...)
}

// queued notes that plugin took the message at the queue hook.
func (s *Session) queued(tx *transaction.Transaction, plugin string) {
	s.txs.queuedBy = plugin
	if s.cfg.Bus != nil {
		e := s.event(monitor.KindQueued)
		e.Plugin, e.QueueID = plugin, tx.QueueID
		s.publish(e)
	}
}

// tlsStarted publishes a completed handshake.
func (s *Session) tlsStarted() {
	if s.cfg.Bus != nil && s.conn.TLS != nil {
		e := s.event(monitor.KindTLS)
		e.TLS = tls.VersionName(s.conn.TLS.Version)
		s.publish(e)
	}
}
