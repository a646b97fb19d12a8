package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/server/command"
	"github.com/sluice-mta/sluice/server/overload"
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
	// MaxHeaderBytes caps the header section; past it the message is
	// refused (552 5.3.4). 0 means DefaultMaxHeaderBytes.
	MaxHeaderBytes int64
	// HeaderIndexBytes and HeaderIndexFields bound the part of the header
	// parsed into tx.Header (the memory a message holds); the rest passes
	// through unparsed. 0 means transaction's defaults (100 KiB, 1000).
	HeaderIndexBytes  int
	HeaderIndexFields int
	// SpoolMemory is how much of a body stays in memory before it spools to
	// a file. 0 means transaction.DefaultSpoolMemory.
	SpoolMemory int64
	// MaxErrors ends the session with 421 after this many refused
	// commands. 0 means DefaultMaxErrors.
	MaxErrors int
	// MaxJunkCommands ends the session with 421 after this many NOOP,
	// VRFY, HELP, RSET, HELO and EHLO without a message accepted in
	// between (Postfix's smtpd_junk_command_limit). 0 means
	// DefaultMaxJunkCommands.
	MaxJunkCommands int
}

// The defaults for Limits.
const (
	DefaultMaxMessageBytes = 25 << 20
	DefaultMaxRecipients   = 100
	DefaultMaxHeaderBytes  = transaction.DefaultMaxHeaderBytes
	DefaultMaxErrors       = 20
	DefaultMaxJunkCommands = 100
)

func (l Limits) withDefaults() Limits {
	setDefault(&l.MaxMessageBytes, DefaultMaxMessageBytes)
	setDefault(&l.MaxRecipients, DefaultMaxRecipients)
	setDefault(&l.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDefault(&l.SpoolMemory, transaction.DefaultSpoolMemory)
	setDefault(&l.MaxErrors, DefaultMaxErrors)
	setDefault(&l.MaxJunkCommands, DefaultMaxJunkCommands)
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

	// StartTLS offers STARTTLS: the listener has a certificate and does not
	// speak TLS from the first byte.
	StartTLS bool
	// RequireTLS refuses MAIL before STARTTLS with 530 5.7.0.
	RequireTLS bool
	// RequireAuth refuses MAIL before a successful AUTH with 530 5.7.0.
	RequireAuth bool
	// AuthPlaintextLoopback allows AUTH without TLS from loopback clients;
	// elsewhere AUTH needs TLS.
	AuthPlaintextLoopback bool
	// AuthLimiter counts failed AUTHs; nil means one of the session's own
	// with the default limits.
	AuthLimiter *authlimit.Limiter
	// Greeting replaces the default 220 text (Hostname and "ESMTP Sluice
	// ready").
	Greeting string
	// RcptSuffix is appended to every accepted recipient's address before
	// the rcpt hooks see it: qmail-smtpd's rule for a non-empty
	// RELAYCLIENT (see ClientInfo).
	RcptSuffix string
	// Bus receives the session's events (see monitor.Event); nil: none,
	// at no cost.
	Bus *monitor.Bus
	// Recorder counts the session's transactions and how they ended; nil:
	// nothing is counted.
	Recorder *monitor.Recorder
	// SpoolBudget, when not nil, counts the memory of the message bodies
	// against a budget shared with other sessions (the server's
	// SpoolMemoryBudget): past it a body spools to its file at once.
	SpoolBudget *transaction.Budget

	// spooling caps the messages received at once (the server's
	// MaxSpooling); nil: no cap. refusals logs the refusals at the cap.
	spooling *overload.Gate
	refusals *overload.RefusalLog
	// XClientHosts are the clients that may send XCLIENT (see
	// ListenerConfig); the client's address when the session starts
	// decides.
	XClientHosts []netip.Prefix
}

// step is what the protocol loop does once it has written a command's
// reply.
type step int

const (
	stepNone    step = iota
	stepMessage      // read the message after DATA's 354
	stepChunk        // read (or skip) the BDAT chunk in Session.chunk
	stepTLS          // run the TLS handshake after STARTTLS's 220
)

// chunk is the BDAT chunk the loop reads next.
type chunk struct {
	size int64
	last bool
	// refused is the reply for a chunk whose bytes are read and dropped
	// (no transaction, no recipients, an earlier chunk failed).
	refused *hooks.Reply
}

// Session is the SMTP state machine of one connection, without a socket:
// it takes command lines (Command) or one command's raw argument (Mail,
// Rcpt, ...), holds every rule of the protocol (command sequence, the TLS
// and AUTH gates, limits, error and junk counts), runs the hooks and
// returns the reply. The protocol loop drives it for real connections and
// hooks/hookstest drives it in tests, so both see the same behaviour.
//
// A Session is used from one goroutine.
type Session struct {
	ctx  context.Context
	conn *connection.Connection
	cfg  SessionConfig
	log  *slog.Logger
	tx   *transaction.Transaction
	dsn  bool // DSN is offered: every queue plugin carries it on

	errors    int // refused commands
	junk      int // NOOP, VRFY, HELP, RSET, HELO and EHLO since the last message
	overshoot int // recipients refused as too many (x.5.3)
	ended     bool
	followup  *hooks.Reply // a reply that ends the session, after the command's own

	sasl        *saslExchange
	refusedData bool // the last command was a refused DATA
	next        step
	chunk       chunk
	bdatFailed  *hooks.Reply // the failure of a BDAT sequence the client may still be sending chunks of
	inMessage   bool         // the message is being read (Message runs)
	spooling    bool         // holds a place of cfg.spooling, from DATA or the first BDAT to the end of the message
	limit       sizeLimit    // Message's size guard, reused
	txs         txState      // the transaction's figures and summary line
	xclient     bool         // the client may send XCLIENT
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
	if cfg.AuthLimiter == nil {
		cfg.AuthLimiter = &authlimit.Limiter{}
	}
	return &Session{ctx: ctx, conn: c, cfg: cfg, log: cfg.Logger.With("conn", c.ID), dsn: cfg.Chain.CarriesDSN(),
		xclient: inPrefixes(c.RemoteIP(), cfg.XClientHosts)}
}

// Conn returns the session's connection.
func (s *Session) Conn() *connection.Connection { return s.conn }

// Transaction returns the transaction in progress, or nil.
func (s *Session) Transaction() *transaction.Transaction { return s.tx }

// Ended reports whether a reply closed the session: the connection closes
// after it (and after Followup's, when there is one).
func (s *Session) Ended() bool { return s.ended }

// Followup returns the reply that goes after the last command's own and
// ends the session (421 after too many errors), once; ok is false when
// there is none.
func (s *Session) Followup() (rep hooks.Reply, ok bool) {
	if s.followup == nil {
		return hooks.Reply{}, false
	}
	rep = *s.followup
	s.followup = nil
	return rep, true
}

// MaxMessageBytes is the size cap in force: the listener's, lowered by any
// size plugin of the chain.
func (s *Session) MaxMessageBytes() int64 {
	m := s.cfg.Limits.MaxMessageBytes
	if c := s.cfg.Chain.MaxMessageBytes(); c > 0 && c < m {
		m = c
	}
	return m
}

// DSN reports whether the session offers DSN (RFC 3461).
func (s *Session) DSN() bool { return s.dsn }

// reply words a hook's decision and logs it when a plugin decided.
func (s *Session) reply(d hooks.Decision) hooks.Reply {
	rep := hooks.ReplyFor(d.Hook, d.Result)
	if d.Result.Code != hooks.Declined {
		s.decided(d, rep)
	}
	// A queue's OK is logged as "message queued", with its own words.
	if d.Result.Code != hooks.Declined && !(d.Hook == hooks.HookQueue && d.Result.Code == hooks.OK) &&
		s.log.Enabled(s.ctx, slog.LevelInfo) { // the arguments cost allocations even when not logged
		s.log.Info("hook decided", "hook", d.Hook, "plugin", d.Plugin, "code", d.Result.Code.String(), "reply", rep.String())
	}
	return rep
}

// replyBadSequence is 503 5.5.1 with msg: a command out of sequence.
func replyBadSequence(msg string) hooks.Reply {
	return hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: msg}
}

// replySyntax is 501 5.5.4 with msg: a bad argument.
func replySyntax(msg string) hooks.Reply {
	return hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 4}, Msg: msg}
}

// Replies of the protocol itself (not of a hook).
var (
	replyBadLine      = hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error: commands must end with CRLF, with no bare CR or LF"}
	replyEmpty        = hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error: empty command"}
	replyTooManyErrs  = hooks.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Msg: "Too many errors; closing connection", Close: true}
	replyTooMuchJunk  = hooks.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Msg: "Too many commands without a message; closing connection", Close: true}
	replyOvershoot    = hooks.Reply{Code: 421, Enhanced: [3]int{4, 5, 3}, Msg: "Too many recipients; closing connection", Close: true}
	replyPipelinedMsg = hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 0}, Msg: "Message sent without waiting for 354; closing connection", Close: true}
)

// recipientOvershootLimit is how many recipients over the limit one
// connection may be refused before it is closed.
const recipientOvershootLimit = 1000

// finish counts the reply of a command: a refusal is an error, and past
// MaxErrors the session ends with 421 after it. "Too many recipients"
// (x.5.3) is what a client that sends to many gets until the next
// transaction: it is no error, or a message with 121 recipients could never
// be delivered; past an overshoot limit (Postfix's
// smtpd_recipient_overshoot_limit) it is abuse.
func (s *Session) finish(rep hooks.Reply) hooks.Reply {
	switch {
	case rep.Close:
		s.ended = true
	case rep.Enhanced[1] == 5 && rep.Enhanced[2] == 3 && rep.Code >= 400:
		if s.overshoot++; s.overshoot > recipientOvershootLimit {
			s.log.Warn("too many recipients refused; closing", "refused", s.overshoot)
			s.end(replyOvershoot)
		}
	case rep.Code >= 400:
		if s.errors++; s.errors > s.cfg.Limits.MaxErrors {
			s.log.Warn("too many errors; closing", "errors", s.errors)
			s.end(replyTooManyErrs)
		}
	}
	return rep
}

// end ends the session with rep after the current command's reply.
func (s *Session) end(rep hooks.Reply) {
	s.followup = &rep
	s.ended = true
}

// junkCommand counts a command that does no work (NOOP, VRFY, HELP, RSET,
// HELO, EHLO) and, past MaxJunkCommands without a message accepted in
// between, returns the 421 that ends the session.
func (s *Session) junkCommand() (hooks.Reply, bool) {
	if s.junk++; s.junk <= s.cfg.Limits.MaxJunkCommands {
		return hooks.Reply{}, false
	}
	s.log.Warn("too many NOOP/VRFY/HELP/RSET/HELO without a message; closing", "count", s.junk)
	s.ended = true
	return replyTooMuchJunk, true
}

// Command runs one command line as the client sent it, line ending
// included: it parses the verb, applies the rules and returns the reply
// (for a BDAT whose chunk the loop must read first, a zero Reply). A
// SASL response line, while AUTH waits for one, goes to the exchange.
func (s *Session) Command(line string) hooks.Reply {
	s.next = stepNone
	text, ok := strings.CutSuffix(line, "\r\n")
	if !ok || strings.ContainsAny(text, "\r\n") {
		if s.sasl != nil {
			s.sasl = nil
			return s.finish(replySyntax("Authentication cancelled: the response must end with CRLF"))
		}
		s.refusedData = false
		return s.finish(replyBadLine)
	}
	if s.sasl != nil {
		return s.authResponse(text)
	}
	verb, arg := command.Split(text)
	if s.refusedData {
		// A client that sent its message after a refused DATA without
		// waiting for the reply: each line would run as a command.
		s.refusedData = false
		if _, known := commands[verb]; !known && verb != "EXPN" && verb != "ETRN" {
			s.log.Warn("message sent after a refused DATA; closing")
			return s.finish(replyPipelinedMsg)
		}
	}
	if verb != "BDAT" {
		s.bdatFailed = nil
	}
	cmd, ok := commands[verb]
	switch {
	case ok:
		return cmd(s, arg)
	case verb == "":
		return s.finish(replyEmpty)
	}
	return s.Unrecognized(verb, arg)
}

// Connect runs the connect hook and returns the greeting or the refusal.
func (s *Session) Connect() hooks.Reply {
	rep := s.reply(s.cfg.Chain.Connect(s.ctx, s.conn))
	if rep.Code == 220 && rep.Msg == hooks.ReplyFor(hooks.HookConnect, hooks.Result{}).Msg {
		if s.cfg.Greeting != "" {
			rep.Msg = s.cfg.Greeting
		} else {
			rep.Msg = s.conn.Hostname + " " + rep.Msg
		}
	}
	if rep.Close {
		s.ended = true
	}
	return rep
}

// Helo handles HELO with its raw argument.
func (s *Session) Helo(arg string) hooks.Reply { return s.helo("HELO", arg) }

// Ehlo handles EHLO with its raw argument; its reply lists the extensions
// on lines of their own (Msg holds them separated by "\n").
func (s *Session) Ehlo(arg string) hooks.Reply { return s.helo("EHLO", arg) }

// helo handles HELO and EHLO. A new one ends the transaction in progress,
// as RSET does.
func (s *Session) helo(verb, arg string) hooks.Reply {
	if rep, over := s.junkCommand(); over {
		return rep
	}
	if arg == "" {
		return s.finish(replySyntax("Syntax: " + verb + " hostname"))
	}
	host, ok := command.HeloName(arg)
	if !ok {
		return s.finish(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Invalid " + verb + " hostname: control characters, separators or bytes that are not UTF-8"})
	}
	esmtp := verb == "EHLO"
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
		return s.finish(rep)
	}
	if d.Result.Msg == "" {
		rep.Msg = s.conn.Hostname + " Hello " + host
	}
	if s.cfg.Bus != nil {
		e := s.event(monitor.KindHelo)
		e.Helo = host
		s.publish(e)
	}
	if esmtp {
		rep.Msg += s.extensions()
	}
	return s.finish(rep)
}

// extensions lists what EHLO offers, each on a line of its own.
func (s *Session) extensions() string {
	var b strings.Builder
	b.WriteString("\nPIPELINING\n8BITMIME\nENHANCEDSTATUSCODES\nCHUNKING\nSMTPUTF8")
	if s.dsn {
		b.WriteString("\nDSN")
	}
	if s.authOffered() {
		b.WriteString("\nAUTH PLAIN LOGIN")
	}
	b.WriteString("\nSIZE ")
	b.WriteString(strconv.FormatInt(s.MaxMessageBytes(), 10))
	if s.cfg.StartTLS && s.conn.TLS == nil {
		b.WriteString("\nSTARTTLS")
	}
	if s.xclient {
		b.WriteString("\nXCLIENT " + xclientAttrs)
	}
	return b.String()
}

// authOffered reports whether AUTH may be used on this connection now: an
// auth plugin exists, and the connection is encrypted or the listener allows
// plaintext AUTH from loopback.
func (s *Session) authOffered() bool {
	if !s.cfg.Chain.HasAuth() {
		return false
	}
	return s.conn.TLS != nil || (s.cfg.AuthPlaintextLoopback && s.conn.RemoteIP().IsLoopback())
}

// Authenticated reports whether the client has authenticated.
func (s *Session) Authenticated() bool { return s.conn.AuthUser != "" }

// Mail handles MAIL with its raw argument ("FROM:<a@example.org> SIZE=10"):
// the sequence and the TLS and AUTH gates, strict parsing, the size the
// client announced, then mail_pre and mail.
func (s *Session) Mail(arg string) hooks.Reply {
	c := s.conn
	switch {
	case s.tx != nil:
		return s.finish(replyBadSequence("Nested MAIL command: a transaction is already in progress"))
	case c.Helo == "":
		return s.finish(replyBadSequence("Send EHLO or HELO first"))
	case s.cfg.RequireTLS && c.TLS == nil:
		return s.finish(hooks.Reply{Code: 530, Enhanced: [3]int{5, 7, 0}, Msg: "Must issue a STARTTLS command first"})
	case s.cfg.RequireAuth && c.AuthUser == "":
		return s.finish(hooks.Reply{Code: 530, Enhanced: [3]int{5, 7, 0}, Msg: "Authentication required"})
	}
	m, err := command.ParseMail(arg, s.dsn)
	if err != nil {
		return s.finish(addrReply(err))
	}
	if m.Size > 0 && m.Size > s.MaxMessageBytes() {
		return s.finish(s.tooBig())
	}
	tx := transaction.New(s.cfg.SpoolDir, s.cfg.Limits.SpoolMemory)
	if s.cfg.SpoolBudget != nil {
		tx.Body.UseBudget(s.cfg.SpoolBudget)
	}
	tx.Params = transaction.MailParams{Size: m.Size, Body: m.Body, UTF8: m.UTF8, Auth: m.Auth, Ret: m.Ret, EnvID: m.EnvID}
	from := m.Sender
	s.txs.decisions = s.txs.decisions[:0]
	s.txs.inMail = true
	rep := s.reply(s.cfg.Chain.MailPre(s.ctx, s.conn, tx, &from))
	if rep.Code == 0 || rep.Positive() {
		tx.Sender = from
		rep = s.reply(s.cfg.Chain.Mail(s.ctx, s.conn, tx, from))
	}
	s.txs.inMail = false
	if !rep.Positive() {
		tx.Close()
		return s.finish(rep)
	}
	s.tx = tx
	s.txBegin(tx)
	return s.finish(rep)
}

func (s *Session) tooBig() hooks.Reply {
	return hooks.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Msg: fmt.Sprintf("Message size exceeds the limit of %d bytes", s.MaxMessageBytes())}
}

// Rcpt handles RCPT with its raw argument ("TO:<b@example.test>"): strict
// parsing, the recipient limit, rcpt_pre and rcpt; an accepted recipient
// is added to the transaction and told to the rcpt_ok observers.
func (s *Session) Rcpt(arg string) hooks.Reply {
	s.txs.decider = ""
	rep := s.rcpt(arg)
	if s.tx != nil && rep.Code >= 400 {
		s.txs.rcptRefusal, s.txs.rcptRefuser = rep, s.txs.decider
	}
	return rep
}

func (s *Session) rcpt(arg string) hooks.Reply {
	tx := s.tx
	if tx == nil {
		return s.finish(replyBadSequence("Need MAIL before RCPT"))
	}
	c := s.conn
	r, err := command.ParseRcpt(arg, tx.Params.UTF8, !c.Relay && c.AuthUser == "", s.dsn)
	if err != nil {
		return s.finish(addrReply(err))
	}
	if len(tx.Recipients) >= s.cfg.Limits.MaxRecipients {
		return s.finish(hooks.Reply{Code: 452, Enhanced: [3]int{4, 5, 3}, Msg: "Too many recipients"})
	}
	rcpt := r.Rcpt + s.cfg.RcptSuffix
	s.txs.rcpt = rcpt
	if rep := s.reply(s.cfg.Chain.RcptPre(s.ctx, c, tx, &rcpt)); rep.Code != 0 && !rep.Positive() {
		return s.finish(rep)
	}
	// The rcpt plugins see the recipient's DSN parameters; they stay only
	// if it is accepted.
	prev, hadPrev := tx.RcptParams[rcpt]
	dsn := r.Notify != nil || r.ORcpt != ""
	if dsn {
		if tx.RcptParams == nil {
			tx.RcptParams = map[string]transaction.RcptParams{}
		}
		tx.RcptParams[rcpt] = transaction.RcptParams{Notify: r.Notify, ORcptType: r.ORcptType, ORcpt: r.ORcpt}
	}
	rep := s.reply(s.cfg.Chain.Rcpt(s.ctx, c, tx, rcpt))
	if rep.Positive() {
		tx.Recipients = append(tx.Recipients, rcpt)
		if s.cfg.Bus != nil {
			e := s.event(monitor.KindRcpt)
			e.Rcpt = rcpt
			s.publish(e)
		}
		s.cfg.Chain.RcptOK(s.ctx, c, tx, rcpt)
	} else if dsn {
		if hadPrev {
			tx.RcptParams[rcpt] = prev
		} else {
			delete(tx.RcptParams, rcpt)
		}
	}
	return s.finish(rep)
}

// Data handles DATA: 354 when the client may send the message (the loop
// then reads it and calls Message), or the refusal.
func (s *Session) Data(arg string) hooks.Reply {
	rep := s.data(arg)
	if rep.Code == 354 {
		s.next = stepMessage
	} else {
		s.refusedData = true
		if s.tx != nil && rep.Code >= 400 {
			s.txs.refusal, s.txs.refuser = rep.Code, s.txs.decider
		}
	}
	return s.finish(rep)
}

func (s *Session) data(arg string) hooks.Reply {
	switch {
	case arg != "":
		return replySyntax("DATA takes no argument")
	case s.tx == nil:
		return replyBadSequence("Need MAIL command")
	case len(s.tx.Recipients) == 0:
		s.txs.decider = ""
		return hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 1}, Msg: "No valid recipients"}
	}
	s.txs.decider = ""
	if !s.startSpooling() {
		return replyTooBusy
	}
	rep := s.reply(s.cfg.Chain.Data(s.ctx, s.conn, s.tx))
	if rep.Code != 354 {
		s.stopSpooling()
	}
	return rep
}

// startSpooling takes a place among the messages the server receives at
// once, before the data hook runs; false (logged) when none is left.
func (s *Session) startSpooling() bool {
	if s.spooling {
		return true
	}
	if !s.cfg.spooling.Enter() {
		if s.cfg.refusals != nil {
			ip := s.conn.RemoteIP()
			s.cfg.refusals.Refused(ip, netip.AddrPortFrom(ip, 0), reasonSpooling)
		}
		return false
	}
	s.spooling = true
	return true
}

// stopSpooling gives the place back: at the end of the message, whatever
// ended it (Reset).
func (s *Session) stopSpooling() {
	if s.spooling {
		s.spooling = false
		s.cfg.spooling.Leave()
	}
}

// Bdat handles BDAT with its raw argument ("1000 LAST"). Its reply comes
// once the chunk is read, so it returns a zero Reply and the loop reads
// the chunk: into the message (see Message) or, when the chunk is refused,
// into nothing. Only an argument that does not say how long the chunk is
// gets a reply at once, and it closes: the chunk cannot be told from
// commands.
func (s *Session) Bdat(arg string) hooks.Reply {
	size, last, ok := command.ParseBdat(arg)
	if !ok {
		return s.finish(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 4}, Msg: "Syntax: BDAT size [LAST]; closing connection", Close: true})
	}
	if size > s.MaxMessageBytes() {
		// Reading that much to stay in step would serve nobody.
		return s.finish(hooks.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Msg: fmt.Sprintf("Message size exceeds the limit of %d bytes; closing connection", s.MaxMessageBytes()), Close: true})
	}
	s.next, s.chunk = stepChunk, chunk{size: size, last: last}
	var refused *hooks.Reply
	switch {
	case s.bdatFailed != nil:
		refused = s.bdatFailed
	case s.inMessage:
		return hooks.Reply{}
	case s.tx == nil:
		r := replyBadSequence("Need MAIL command")
		refused = &r
	case len(s.tx.Recipients) == 0:
		r := hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 1}, Msg: "No valid recipients"}
		refused = &r
	case !s.startSpooling():
		r := replyTooBusy
		refused = &r
	default:
		// The data hook runs at the first chunk, as at DATA.
		if rep := s.reply(s.cfg.Chain.Data(s.ctx, s.conn, s.tx)); !rep.Positive() {
			s.stopSpooling()
			refused = &rep
		}
	}
	if refused != nil {
		s.chunk.refused = refused
		if !last {
			s.bdatFailed = refused
		} else {
			s.bdatFailed = nil
		}
	}
	return hooks.Reply{}
}

// chunkRefused answers a BDAT chunk that was read and dropped.
func (s *Session) chunkRefused() hooks.Reply { return s.finish(*s.chunk.refused) }

// chunkReceived answers a BDAT chunk that went into the message, not the
// last one.
func (s *Session) chunkReceived(n int64) hooks.Reply {
	return hooks.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Msg: strconv.FormatInt(n, 10) + " octets received"}
}

// StartTLS handles STARTTLS: 220 when the loop is to run the handshake now,
// after which it calls TLSStarted.
func (s *Session) StartTLS(arg string) hooks.Reply {
	var rep hooks.Reply
	switch {
	case arg != "":
		rep = replySyntax("STARTTLS takes no argument")
	case !s.cfg.StartTLS:
		rep = hooks.Reply{Code: 502, Enhanced: [3]int{5, 5, 1}, Msg: "STARTTLS not available"}
	case s.conn.TLS != nil:
		rep = replyBadSequence("TLS already active")
	case s.Authenticated():
		// RFC 3207 4.2 would have AUTH forgotten; a client that
		// authenticated in plaintext (only possible where
		// auth_plaintext_loopback allows it) stays so.
		rep = replyBadSequence("STARTTLS is not allowed after AUTH")
	case s.tx != nil:
		rep = replyBadSequence("STARTTLS is not allowed during a mail transaction")
	default:
		s.next = stepTLS
		return hooks.Reply{Code: 220, Enhanced: [3]int{2, 0, 0}, Msg: "Ready to start TLS"}
	}
	return s.finish(rep)
}

// TLSStarted records a completed handshake and forgets what the client
// said before it (RFC 3207 4.2): the transaction and the HELO name.
func (s *Session) TLSStarted(st *tls.ConnectionState) {
	s.conn.TLS = st
	s.tlsStarted()
	s.Reset()
	s.conn.Helo, s.conn.ESMTP = "", false
}

// Rset handles RSET.
func (s *Session) Rset(arg string) hooks.Reply {
	if rep, over := s.junkCommand(); over {
		return rep
	}
	s.Reset()
	return s.finish(hooks.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Msg: "Session reset"})
}

// Reset ends the transaction in progress, if any, and runs
// reset_transaction. RSET, a new EHLO, the end of DATA and the end of the
// connection call it.
func (s *Session) Reset() {
	s.stopSpooling()
	if s.tx == nil {
		return
	}
	tx := s.tx
	s.txEnd(tx, hooks.Reply{})
	s.tx = nil
	s.cfg.Chain.Reset(s.ctx, s.conn, tx)
	tx.Close()
}

// Vrfy handles VRFY.
func (s *Session) Vrfy(arg string) hooks.Reply {
	if rep, over := s.junkCommand(); over {
		return rep
	}
	return s.finish(s.reply(s.cfg.Chain.Vrfy(s.ctx, s.conn, arg)))
}

// Noop handles NOOP.
func (s *Session) Noop(arg string) hooks.Reply {
	if rep, over := s.junkCommand(); over {
		return rep
	}
	return s.finish(s.reply(s.cfg.Chain.Noop(s.ctx, s.conn)))
}

// Help handles HELP.
func (s *Session) Help(topic string) hooks.Reply {
	if rep, over := s.junkCommand(); over {
		return rep
	}
	return s.finish(s.reply(s.cfg.Chain.Help(s.ctx, s.conn, topic)))
}

// Quit handles QUIT: the reply always closes the connection.
func (s *Session) Quit(arg string) hooks.Reply {
	rep := s.reply(s.cfg.Chain.Quit(s.ctx, s.conn))
	if rep.Msg == "Bye" {
		rep.Msg = s.conn.Hostname + " closing connection"
	}
	rep.Close = true
	return s.finish(rep)
}

// Unrecognized handles a command Sluice does not implement.
func (s *Session) Unrecognized(verb, arg string) hooks.Reply {
	return s.finish(s.reply(s.cfg.Chain.Unrecognized(s.ctx, s.conn, verb, arg)))
}

// Close ends the session: the transaction in progress is reset and the
// disconnect hook runs. Call it once, whoever closed the connection.
func (s *Session) Close() {
	s.sasl = nil
	s.Reset()
	s.cfg.Chain.Disconnect(s.ctx, s.conn)
}

// addrReply turns a parser refusal into its reply.
func addrReply(err error) hooks.Reply {
	if ae, ok := err.(*command.Error); ok {
		return hooks.Reply{Code: ae.Code, Enhanced: ae.Enhanced, Msg: ae.Msg}
	}
	return hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error"}
}

// pipelinedMessage ends a session whose client sent its message right
// after a refused DATA, without waiting for the reply.
func (s *Session) pipelinedMessage() hooks.Reply {
	s.log.Warn("message pipelined after a refused DATA; closing")
	return s.finish(replyPipelinedMsg)
}

// messageReadFailure answers a failure to read the rest of a message
// after its reply was decided (while dropping it).
func (s *Session) messageReadFailure(err error) hooks.Reply {
	return s.finish(s.readFailure(err))
}
