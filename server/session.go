package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// Limits are the per-listener bounds on what a client controls.
type Limits struct {
	// MaxMessageBytes caps a message (header and body, as received);
	// a message of exactly this size is accepted. 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxRecipients caps the recipients of one transaction; the next one
	// gets 452 4.5.3. 0 means DefaultMaxRecipients.
	MaxRecipients int
	// MaxHeaderBytes caps the header section. 0 means DefaultMaxHeaderBytes.
	MaxHeaderBytes int64
	// SpoolMemory is how much of a body stays in memory before it spools to
	// a file. 0 means transaction.DefaultSpoolMemory.
	SpoolMemory int64
}

// The defaults for Limits.
const (
	DefaultMaxMessageBytes = 25 << 20
	DefaultMaxRecipients   = 100
	DefaultMaxHeaderBytes  = 1 << 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = DefaultMaxRecipients
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.SpoolMemory <= 0 {
		l.SpoolMemory = transaction.DefaultSpoolMemory
	}
	return l
}

// SessionConfig is what a Session needs from its listener.
type SessionConfig struct {
	Chain    *hooks.Chain
	Limits   Limits
	SpoolDir string
	Logger   *slog.Logger
	// Now returns the current time (for the Received header); nil means
	// time.Now.
	Now func() time.Time
	// ReceivedAuthUser puts the authenticated user name in the Received
	// header; otherwise it only says that the client authenticated.
	ReceivedAuthUser bool
}

// Session is the SMTP state machine of one connection, without a socket:
// each method takes a command's arguments, runs the hooks and returns the
// reply. The go-smtp adapter drives it for real connections and
// hooks/hookstest drives it in tests, so both see the same behaviour.
type Session struct {
	ctx  context.Context
	conn *connection.Connection
	cfg  SessionConfig
	log  *slog.Logger
	tx   *transaction.Transaction
}

// NewSession starts the session for c. ctx is the connection's context: it
// is cancelled when the connection ends or the server stops.
func NewSession(ctx context.Context, c *connection.Connection, cfg SessionConfig) *Session {
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Session{ctx: ctx, conn: c, cfg: cfg, log: cfg.Logger.With("conn", c.ID)}
}

// Conn returns the session's connection.
func (s *Session) Conn() *connection.Connection { return s.conn }

// Transaction returns the transaction in progress, or nil.
func (s *Session) Transaction() *transaction.Transaction { return s.tx }

// MaxMessageBytes is the size cap in force: the listener's, lowered by any
// size plugin of the chain.
func (s *Session) MaxMessageBytes() int64 {
	m := s.cfg.Limits.MaxMessageBytes
	if c := s.cfg.Chain.MaxMessageBytes(); c > 0 && c < m {
		m = c
	}
	return m
}

func (s *Session) reply(d hooks.Decision) hooks.Reply {
	rep := hooks.ReplyFor(d.Hook, d.Result)
	// A queue's OK is logged as "message queued", with its own words.
	if d.Result.Code != hooks.Declined && !(d.Hook == hooks.HookQueue && d.Result.Code == hooks.OK) &&
		s.log.Enabled(s.ctx, slog.LevelInfo) { // the arguments cost allocations even when not logged
		s.log.Info("hook decided", "hook", d.Hook, "plugin", d.Plugin, "code", d.Result.Code.String(), "reply", rep.String())
	}
	return rep
}

// Connect runs the connect hook and returns the greeting or the refusal.
func (s *Session) Connect() hooks.Reply {
	rep := s.reply(s.cfg.Chain.Connect(s.ctx, s.conn))
	if rep.Code == 220 && rep.Msg == hooks.ReplyFor(hooks.HookConnect, hooks.Result{}).Msg {
		rep.Msg = s.conn.Hostname + " " + rep.Msg
	}
	return rep
}

// Helo handles HELO (esmtp false) or EHLO (esmtp true). A new EHLO ends
// the transaction in progress, as RSET does.
func (s *Session) Helo(host string, esmtp bool) hooks.Reply {
	s.Reset()
	s.conn.Helo, s.conn.ESMTP = host, esmtp
	var d hooks.Decision
	if esmtp {
		d = s.cfg.Chain.Ehlo(s.ctx, s.conn, host)
	} else {
		d = s.cfg.Chain.Helo(s.ctx, s.conn, host)
	}
	rep := s.reply(d)
	if !rep.Positive() {
		s.conn.Helo, s.conn.ESMTP = "", false
	} else if d.Result.Msg == "" {
		rep.Msg = s.conn.Hostname + " Hello " + host
	}
	return rep
}

// The connection notes set by a successful AUTH (c.AuthUser holds the
// user too).
const (
	NoteAuthUser = "auth.user"
	NoteAuthMech = "auth.mech"
)

// Auth checks credentials through the auth hook. On success (235) the
// connection is authenticated: c.AuthUser is set and the client may relay.
// The password is never logged.
func (s *Session) Auth(mech, user, password string) hooks.Reply {
	d := s.cfg.Chain.Auth(s.ctx, s.conn, mech, user, password)
	rep := s.reply(d)
	if d.Result.Code == hooks.OK || d.Result.Code == hooks.Done {
		s.conn.AuthUser, s.conn.Relay = user, true
		s.conn.Notes.Set(NoteAuthUser, user)
		s.conn.Notes.Set(NoteAuthMech, mech)
	}
	return rep
}

// Authenticated reports whether the last Auth succeeded.
func (s *Session) Authenticated() bool { return s.conn.AuthUser != "" }

// Mail handles MAIL FROM: mail_pre, then mail. from is the reverse-path
// without angle brackets.
func (s *Session) Mail(from string, params transaction.MailParams) hooks.Reply {
	if s.tx != nil {
		return hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Nested MAIL command: a transaction is already in progress"}
	}
	if params.Size > 0 && params.Size > s.MaxMessageBytes() {
		return hooks.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Msg: fmt.Sprintf("Message size exceeds the limit of %d bytes", s.MaxMessageBytes())}
	}
	tx := transaction.New(s.cfg.SpoolDir, s.cfg.Limits.SpoolMemory)
	tx.Params = params
	if rep := s.reply(s.cfg.Chain.MailPre(s.ctx, s.conn, tx, &from)); rep.Code != 0 && !rep.Positive() {
		tx.Close()
		return rep
	}
	tx.Sender = from
	rep := s.reply(s.cfg.Chain.Mail(s.ctx, s.conn, tx, from))
	if !rep.Positive() {
		tx.Close()
		return rep
	}
	s.tx = tx
	return rep
}

// Rcpt handles RCPT TO: rcpt_pre, then rcpt. rcpt is the forward-path
// without angle brackets.
func (s *Session) Rcpt(rcpt string) hooks.Reply {
	if s.tx == nil {
		return hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Need MAIL before RCPT"}
	}
	if len(s.tx.Recipients) >= s.cfg.Limits.MaxRecipients {
		return hooks.Reply{Code: 452, Enhanced: [3]int{4, 5, 3}, Msg: "Too many recipients"}
	}
	if rep := s.reply(s.cfg.Chain.RcptPre(s.ctx, s.conn, s.tx, &rcpt)); rep.Code != 0 && !rep.Positive() {
		return rep
	}
	rep := s.reply(s.cfg.Chain.Rcpt(s.ctx, s.conn, s.tx, rcpt))
	if rep.Positive() {
		s.tx.Recipients = append(s.tx.Recipients, rcpt)
	}
	return rep
}

// Data handles the DATA command: it returns 354 when the client may send
// the message, or the refusal.
func (s *Session) Data() hooks.Reply {
	if s.tx == nil {
		return hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Need MAIL command"}
	}
	if len(s.tx.Recipients) == 0 {
		return hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 1}, Msg: "No valid recipients"}
	}
	return s.reply(s.cfg.Chain.Data(s.ctx, s.conn, s.tx))
}

// errTooBig is returned by sizeLimit once more than the limit was read.
var errTooBig = errors.New("message exceeds the size limit")

// sizeLimit reads from r and fails with errTooBig past max bytes; exactly
// max bytes pass.
type sizeLimit struct {
	r    io.Reader
	n    int64
	max  int64
	over bool
}

func (l *sizeLimit) Read(p []byte) (int, error) {
	if l.over {
		return 0, errTooBig
	}
	if room := l.max + 1 - l.n; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.max {
		l.over = true
		return n, errTooBig
	}
	return n, err
}

// messageReaders are the read buffers of Message, shared by the
// connections: a 32 KiB buffer per message made most of the garbage of a
// busy server.
var messageReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}

// Message reads the message (the DATA payload, dot-unstuffed, up to but not
// including the final dot) from r, runs data_headers_end, received_line,
// data_post, queue_pre, queue and queue_post, and returns the reply to the
// final dot. Only a queue plugin's OK gives 250. The caller reads what r
// still holds after an early reply.
func (s *Session) Message(r io.Reader) hooks.Reply {
	tx := s.tx
	if tx == nil {
		return hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Need MAIL command"}
	}
	defer s.Reset() // the end of DATA ends the transaction, whatever the reply
	limited := &sizeLimit{r: r, max: s.MaxMessageBytes()}
	br := messageReaders.Get().(*bufio.Reader)
	br.Reset(limited)
	defer func() {
		br.Reset(nil)
		messageReaders.Put(br)
	}()

	if err := tx.ReadHeader(br, transaction.HeaderLimits{MaxBytes: s.cfg.Limits.MaxHeaderBytes}); err != nil {
		return s.readFailure(err)
	}
	if rep := s.reply(s.cfg.Chain.DataHeadersEnd(s.ctx, s.conn, tx)); rep.Code != 0 {
		if !rep.Close {
			// Drain what is left; past the size limit the rest is go-smtp's
			// to discard, and the plugin's reply stands.
			if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, errTooBig) {
				return s.readFailure(err)
			}
		}
		return rep
	}
	if _, err := br.WriteTo(bodyWriter{tx.Body}); err != nil {
		var sw spoolWriteError
		if errors.As(err, &sw) {
			return s.spoolFailure(sw.err)
		}
		return s.readFailure(err)
	}
	tx.Size = limited.n

	line := s.receivedLine(tx)
	if rep := s.reply(s.cfg.Chain.ReceivedLine(s.ctx, s.conn, tx, &line)); rep.Code != 0 && !rep.Positive() {
		return rep
	}
	tx.Header.Prepend("Received", line)

	if d := s.cfg.Chain.DataPost(s.ctx, s.conn, tx); d.Result.Code != hooks.Declined {
		if rep := s.reply(d); rep.Code != 0 && !rep.Positive() || d.Result.Code == hooks.Done {
			return s.notQueued(d, rep)
		}
	}
	if d := s.cfg.Chain.QueuePre(s.ctx, s.conn, tx); d.Result.Code != hooks.Declined {
		if rep := s.reply(d); rep.Code != 0 && !rep.Positive() || d.Result.Code == hooks.Done {
			return s.notQueued(d, rep)
		}
	}
	d := s.cfg.Chain.Queue(s.ctx, s.conn, tx)
	rep := s.reply(d)
	if d.Result.Code == hooks.Done {
		return s.notQueued(d, rep)
	}
	if d.Result.Code != hooks.OK {
		if d.Result.Code == hooks.Declined {
			s.log.Warn("no queue plugin took the message; check the listener's plugin list", "tx", tx.ID)
		}
		return rep
	}
	if tx.QueueID == "" {
		tx.QueueID = tx.ID
	}
	rep.Msg = "Ok: queued as " + tx.QueueID
	s.conn.Messages++
	if s.log.Enabled(s.ctx, slog.LevelInfo) {
		s.log.Info("message queued", "queue_id", tx.QueueID, "plugin", d.Plugin, "from", tx.Sender,
			"rcpts", len(tx.Recipients), "size", tx.MessageSize(), "detail", d.Result.Msg)
	}
	s.cfg.Chain.QueuePost(s.ctx, s.conn, tx)
	return rep
}

// notQueued answers a message that data_post or queue_pre rejected, or that
// a plugin took with Done (then 250, and nothing is queued).
func (s *Session) notQueued(d hooks.Decision, rep hooks.Reply) hooks.Reply {
	if d.Result.Code == hooks.Done {
		msg := d.Result.Msg
		if msg == "" {
			msg = "Ok: accepted by " + d.Plugin
		}
		return hooks.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Msg: msg}
	}
	return rep
}

// bodyWriter tags spool errors so Message can tell them from read errors.
type bodyWriter struct{ s *transaction.Spool }

type spoolWriteError struct{ err error }

func (e spoolWriteError) Error() string { return e.err.Error() }

func (w bodyWriter) Write(p []byte) (int, error) {
	n, err := w.s.Write(p)
	if err != nil {
		return n, spoolWriteError{err}
	}
	return n, nil
}

func (s *Session) readFailure(err error) hooks.Reply {
	switch {
	case errors.Is(err, errTooBig):
		return hooks.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Msg: fmt.Sprintf("Message size exceeds the limit of %d bytes", s.MaxMessageBytes())}
	case errors.Is(err, transaction.ErrHeaderTooLong):
		return hooks.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Msg: "Message header section too long"}
	}
	s.log.Warn("reading the message failed", "err", err)
	return hooks.Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Msg: "Error reading the message; closing connection", Close: true}
}

func (s *Session) spoolFailure(err error) hooks.Reply {
	s.log.Error("spooling the message failed", "err", err)
	return hooks.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Msg: "Local error in processing; try again later"}
}

// receivedLine builds the core's Received header value (RFC 5321 4.4).
func (s *Session) receivedLine(tx *transaction.Transaction) string {
	c := s.conn
	b := make([]byte, 0, 256) // built with appends, not fmt: it is made for every message
	b = append(b, "from "...)
	b = append(b, orUnknown(c.Helo)...)
	b = append(b, " (["...)
	b = c.RemoteIP().AppendTo(b)
	b = append(b, "])"...)
	if c.TLS != nil {
		b = append(b, "\r\n\t(using "...)
		b = append(b, strings.Replace(tls.VersionName(c.TLS.Version), "TLS ", "TLSv", 1)...)
		b = append(b, " with cipher "...)
		b = append(b, tls.CipherSuiteName(c.TLS.CipherSuite)...)
		b = append(b, ')')
	}
	if c.AuthUser != "" {
		if s.cfg.ReceivedAuthUser {
			b = append(b, "\r\n\t(authenticated as "...)
			b = append(b, c.AuthUser...)
			b = append(b, ')')
		} else {
			b = append(b, "\r\n\t(authenticated)"...)
		}
	}
	b = append(b, "\r\n\tby "...)
	b = append(b, c.Hostname...)
	b = append(b, " (Sluice) with "...)
	b = append(b, withProtocol(c)...)
	b = append(b, " id "...)
	b = append(b, tx.ID...)
	if len(tx.Recipients) == 1 {
		b = append(b, "\r\n\tfor <"...)
		b = append(b, tx.Recipients[0]...)
		b = append(b, '>')
	}
	b = append(b, "; "...)
	b = s.cfg.Now().AppendFormat(b, time.RFC1123Z)
	return string(b)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// withProtocol names the protocol as RFC 3848 registers it.
func withProtocol(c *connection.Connection) string {
	p := "SMTP"
	if c.ESMTP {
		p = "ESMTP"
		if c.TLS != nil {
			p += "S"
		}
		if c.AuthUser != "" {
			p += "A"
		}
	}
	return p
}

// Reset ends the transaction in progress, if any, and runs
// reset_transaction. RSET, a new EHLO, the end of DATA and the end of the
// connection call it.
func (s *Session) Reset() {
	if s.tx == nil {
		return
	}
	tx := s.tx
	s.tx = nil
	s.cfg.Chain.Reset(s.ctx, s.conn, tx)
	tx.Close()
}

// Vrfy handles VRFY.
func (s *Session) Vrfy(arg string) hooks.Reply {
	return s.reply(s.cfg.Chain.Vrfy(s.ctx, s.conn, arg))
}

// Noop handles NOOP.
func (s *Session) Noop() hooks.Reply { return s.reply(s.cfg.Chain.Noop(s.ctx, s.conn)) }

// Help handles HELP.
func (s *Session) Help(topic string) hooks.Reply {
	return s.reply(s.cfg.Chain.Help(s.ctx, s.conn, topic))
}

// Quit handles QUIT: the reply always closes the connection.
func (s *Session) Quit() hooks.Reply {
	rep := s.reply(s.cfg.Chain.Quit(s.ctx, s.conn))
	if rep.Msg == "Bye" {
		rep.Msg = s.conn.Hostname + " closing connection"
	}
	return rep
}

// Unrecognized handles a command Sluice does not implement.
func (s *Session) Unrecognized(cmd, arg string) hooks.Reply {
	return s.reply(s.cfg.Chain.Unrecognized(s.ctx, s.conn, cmd, arg))
}

// Close ends the session: the transaction in progress is reset and the
// disconnect hook runs. Call it once, whoever closed the connection.
func (s *Session) Close() {
	s.Reset()
	s.cfg.Chain.Disconnect(s.ctx, s.conn)
}
