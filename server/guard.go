package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// BareNewline is the policy for a bare LF or bare CR inside DATA, as
// Postfix's smtpd_forbid_bare_newline.
type BareNewline string

const (
	// BareNewlineReject answers 554 5.5.2 and closes the connection;
	// nothing is queued.
	BareNewlineReject BareNewline = "reject"
	// BareNewlineNormalize turns every bare LF and bare CR into CRLF, so the
	// queue only ever sees CRLF lines.
	BareNewlineNormalize BareNewline = "normalize"
)

// guard sits between the client's socket and go-smtp. It reads the client's
// bytes one command line at a time and sees every reply go-smtp writes, so
// it is where Sluice adds what go-smtp has no seam for: the connect hook
// before the greeting; helo, ehlo, vrfy, noop, help, quit and
// unrecognized_command hooks; STARTTLS done by Sluice (nothing pipelined
// before the handshake survives it); strict line endings in commands and in
// DATA; line length, idle time and error limits; and the rewriting of
// go-smtp's reply texts into Sluice's.
//
// go-smtp only ever sees complete lines that the guard let through, one per
// Read, so when it asks for more input it has answered everything before.
type guard struct {
	transport net.Conn     // the TCP connection, or TLS over it
	raw       net.Conn     // the socket under transport; never changes
	tmu       sync.Mutex   // guards transport against the watchdog's reads
	working   atomic.Int64 // since when (unix ns) the server works on the client's last input; 0 while it waits for the client
	br        *bufio.Reader
	l         *listener
	sess      *Session
	log       *slog.Logger

	// pending is the rest of the line handed to go-smtp.
	pending          []byte
	dataMode         bool
	atLineStart      bool // in DATA: after a CRLF the client sent
	pendingCR        bool // in DATA: a CR ended the last chunk
	afterBare        bool // in DATA (normalize): after a bare CR or LF
	lastCmd          string
	override         *hooks.Reply // replaces go-smtp's next final reply
	closeAfterReply  bool
	wbuf             []byte   // a reply line go-smtp has not finished
	wscratch         []byte   // where Sluice's own reply lines are built
	multi            [][]byte // the lines of a multi-line reply so far
	greeted          bool
	errors           int
	closed           atomic.Bool
	busy             atomic.Bool // in a transaction: shutdown waits for it
	closeOnce        sync.Once
	cancel           context.CancelFunc // ends the connection's context
	saslMode         bool               // the next line answers a 334 challenge
	junk             int                // NOOP, VRFY, HELP, RSET, HELO and EHLO since the last message
	overshoot        int                // recipients refused as too many (x.5.3)
	afterRefusedData *hooks.Reply       // the refusal of the DATA just before this line
	dataStart        time.Time          // when the 354 went out
	dataBytes        int64              // message bytes read since then
	bodyEnd          bool               // in DATA (reject): the final dot was read
}

var errClosed = errors.New("connection closed by the server")

// readBufferSize is the guard's read buffer per connection: it bounds a
// command line's memory (MaxLineLength must fit) and keeps 10,000 idle
// connections cheap; message data streams through it in chunks.
const readBufferSize = 4 << 10

func newGuard(conn net.Conn, l *listener, sess *Session, log *slog.Logger) *guard {
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	g := &guard{transport: conn, raw: raw, l: l, sess: sess, log: log, atLineStart: true}
	g.br = bufio.NewReaderSize(clientReader{g}, readBufferSize)
	g.working.Store(time.Now().UnixNano()) // the connect hook runs before any read
	return g
}

// clientReader reads from the client's transport for the guard's buffer,
// and marks the time in between reads as the server's (see working).
type clientReader struct{ g *guard }

func (r clientReader) Read(p []byte) (int, error) {
	r.g.working.Store(0)
	r.g.tmu.Lock()
	t := r.g.transport
	r.g.tmu.Unlock()
	n, err := t.Read(p)
	r.g.working.Store(time.Now().UnixNano())
	return n, err
}

// stuck ends a connection whose server side has been working (in a
// plugin, as a rule) far past every deadline the chain gives its hooks: a
// plugin that ignores its context must not hold the client for ever. It
// runs on the watchdog's goroutine while the connection's own is blocked:
// it writes 421 and closes the socket; the session ends once the plugin
// returns.
func (g *guard) stuck(since time.Duration) {
	g.log.Error("connection stuck on the server side past every hook deadline (a plugin ignoring its context?); closing", "for", since.Round(time.Millisecond).String())
	g.tmu.Lock()
	t := g.transport
	g.tmu.Unlock()
	g.raw.SetWriteDeadline(time.Now().Add(time.Second))
	t.Write([]byte("421 4.3.0 Local error in processing; closing connection\r\n"))
	g.abort()
}

// LocalAddr, RemoteAddr and the deadline setters pass through: go-smtp
// uses them.
func (g *guard) LocalAddr() net.Addr                { return g.transport.LocalAddr() }
func (g *guard) RemoteAddr() net.Addr               { return g.transport.RemoteAddr() }
func (g *guard) SetDeadline(t time.Time) error      { return g.transport.SetDeadline(t) }
func (g *guard) SetReadDeadline(t time.Time) error  { return g.transport.SetReadDeadline(t) }
func (g *guard) SetWriteDeadline(t time.Time) error { return g.transport.SetWriteDeadline(t) }

// abort is how another goroutine (shutdown at its deadline) ends the
// connection: it closes the socket and cancels the connection's context,
// and leaves ending the session to the connection's own goroutine, which
// sees its reads and writes fail and calls Close. Running the session's
// hooks from here would race with the hook the connection is in.
func (g *guard) abort() {
	g.raw.Close()
	if g.cancel != nil {
		g.cancel()
	}
}

// Close closes the connection once and ends the session (reset_transaction
// and disconnect hooks run here). Only the connection's own goroutine calls
// it (go-smtp when it is done with the connection, or the guard itself).
func (g *guard) Close() error {
	var err error
	g.closeOnce.Do(func() {
		g.closed.Store(true)
		err = g.transport.Close()
		g.sess.Close()
		if g.cancel != nil {
			g.cancel()
		}
		g.l.forget(g)
		g.log.Info("disconnect")
	})
	return err
}

// send writes a reply of Sluice's own, bypassing go-smtp, and closes the
// connection when the reply says so.
func (g *guard) send(rep hooks.Reply) {
	g.busy.Store(g.sess.Transaction() != nil || g.dataMode)
	g.wscratch = appendReply(g.wscratch[:0], rep)
	g.writeRaw(g.wscratch)
	if rep.Close {
		g.Close()
		return
	}
	if rep.Enhanced[1] == 5 && rep.Enhanced[2] == 3 {
		// "Too many recipients" (x.5.3) is what a client that sends to many
		// gets until the next transaction: it is no error, or a message
		// with 121 recipients could never be delivered. Past an overshoot
		// limit (Postfix's smtpd_recipient_overshoot_limit) it is abuse.
		if g.overshoot++; g.overshoot > recipientOvershootLimit {
			g.log.Warn("too many recipients refused; closing", "refused", g.overshoot)
			g.writeRaw([]byte("421 4.5.3 Too many recipients; closing connection\r\n"))
			g.Close()
		}
		return
	}
	g.countError(rep.Code)
}

// tooMuchJunk counts a command that does no work (NOOP, VRFY, HELP, RSET,
// HELO, EHLO) and, past max_junk_commands without a message accepted in
// between, answers 421 and closes (Postfix's smtpd_junk_command_limit).
func (g *guard) tooMuchJunk() bool {
	if g.junk++; g.junk <= g.l.cfg.MaxJunkCommands {
		return false
	}
	g.log.Warn("too many NOOP/VRFY/HELP/RSET/HELO without a message; closing", "count", g.junk)
	g.send(hooks.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Msg: "Too many commands without a message; closing connection", Close: true})
	return true
}

// pipelinedBody closes a connection whose client sent its message after a
// refused DATA without waiting for the reply: each of its lines would run
// as a command.
func (g *guard) pipelinedBody(refused hooks.Reply) error {
	g.log.Warn("message pipelined after a refused DATA; closing", "reply", refused.String())
	g.send(hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 0}, Msg: "Message sent without waiting for 354; closing connection", Close: true})
	return io.EOF
}

// smtpVerbs are the commands a client may send after a refused DATA; any
// other line there is taken for the message the client did not hold back.
var smtpVerbs = map[string]bool{
	"HELO": true, "EHLO": true, "MAIL": true, "RCPT": true, "DATA": true, "BDAT": true, "RSET": true,
	"NOOP": true, "QUIT": true, "VRFY": true, "EXPN": true, "HELP": true, "STARTTLS": true, "AUTH": true, "ETRN": true,
}

// validHeloArg accepts what HELO and EHLO may name: a domain (UTF-8
// U-labels allowed, RFC 6531) or an address literal; it refuses what
// would reach the Received header and the logs as garbage: control
// characters, DEL and bytes that are not UTF-8.
func validHeloArg(s string) bool {
	if len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// recipientOvershootLimit is how many recipients over the limit one
// connection may be refused before it is closed.
const recipientOvershootLimit = 1000

func (g *guard) writeRaw(b []byte) error {
	if g.closed.Load() {
		return errClosed
	}
	if d := g.l.cfg.WriteTimeout; d > 0 {
		g.transport.SetWriteDeadline(time.Now().Add(d))
	}
	_, err := g.transport.Write(b)
	return err
}

// countError closes the connection (421) after too many refused commands.
func (g *guard) countError(code int) {
	if code < 400 {
		return
	}
	g.errors++
	if max := g.l.cfg.MaxErrors; max > 0 && g.errors > max && !g.closed.Load() {
		g.log.Warn("too many errors; closing", "errors", g.errors)
		g.writeRaw([]byte("421 4.7.0 Too many errors; closing connection\r\n"))
		g.Close()
	}
}

// Read hands go-smtp the next line the guard lets through.
func (g *guard) Read(p []byte) (int, error) {
	for len(g.pending) == 0 {
		if g.closed.Load() {
			return 0, io.EOF
		}
		var err error
		if g.dataMode {
			err = g.readData()
		} else {
			err = g.readCommand()
		}
		if err != nil {
			return 0, err
		}
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// fill sets the deadline for the next read from the client: the idle
// timeout, refreshed on every read.
//
// Inside DATA the deadline also enforces the minimum data rate: the client
// may take MinDataRateGrace plus one second per MinDataRate bytes it has
// sent, so a slow-drip client cannot hold a connection for ever while an
// honest slow one is never cut off mid-message by a fixed deadline.
func (g *guard) fill() {
	now := time.Now()
	deadline := now.Add(g.l.cfg.ReadTimeout)
	if g.dataMode && g.l.cfg.MinDataRate > 0 {
		allowed := g.l.cfg.MinDataRateGrace + time.Duration(float64(g.dataBytes)/float64(g.l.cfg.MinDataRate)*float64(time.Second))
		if rate := g.dataStart.Add(allowed); rate.Before(deadline) {
			deadline = rate
		}
	}
	g.transport.SetReadDeadline(deadline)
}

// readFailed answers a read error: 421 on a timeout, nothing when the
// client went away; the connection is closed either way.
func (g *guard) readFailed(err error, during string) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		if g.l.shuttingDown() && !g.busy.Load() {
			g.writeRaw([]byte("421 4.3.2 Service shutting down; try again later\r\n"))
		} else {
			g.log.Info("timeout", "during", during)
			g.writeRaw([]byte("421 4.4.2 Timeout " + during + "; closing connection\r\n"))
		}
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		g.log.Info("read error", "during", during, "err", err)
	}
	g.Close()
	if during == "reading the message" {
		return fmt.Errorf("client connection failed %s: %w", during, err)
	}
	return io.EOF
}

func (g *guard) readCommand() error {
	if g.l.shuttingDown() && !g.busy.Load() {
		g.writeRaw([]byte("421 4.3.2 Service shutting down; try again later\r\n"))
		g.Close()
		return io.EOF
	}
	g.fill()
	line, err := g.br.ReadSlice('\n')
	max := g.l.cfg.MaxLineLength
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > max {
		g.log.Warn("command line too long; closing", "max", max)
		g.send(hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: fmt.Sprintf("Line too long (limit %d bytes); closing connection", max), Close: true})
		return io.EOF
	}
	if err != nil {
		return g.readFailed(err, "waiting for a command")
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
		if g.saslMode {
			// go-smtp waits for the SASL answer: cancel the exchange for it.
			g.saslMode = false
			g.pending = append(g.pending[:0], "*\r\n"...)
			return nil
		}
		g.send(hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error: commands must end with CRLF, with no bare CR or LF"})
		return nil
	}
	if g.saslMode {
		// A SASL response to go-smtp's 334, not a command.
		g.saslMode = false
		g.pending = append(g.pending[:0], line...)
		return nil
	}
	text := string(line[:len(line)-2])
	verb, arg, _ := strings.Cut(text, " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	return g.command(verb, arg, line)
}

// command runs one command line: the guard answers some itself, and lets
// the rest through to go-smtp.
func (g *guard) command(verb, arg string, line []byte) error {
	if refused := g.afterRefusedData; refused != nil {
		g.afterRefusedData = nil
		if !smtpVerbs[verb] {
			return g.pipelinedBody(*refused)
		}
	}
	switch verb {
	case "HELO", "EHLO":
		if arg == "" {
			g.send(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 4}, Msg: "Syntax: " + verb + " hostname"})
			return nil
		}
		if !validHeloArg(arg) {
			g.send(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Invalid " + verb + " hostname: control characters or bytes that are not UTF-8"})
			return nil
		}
		if g.tooMuchJunk() {
			return io.EOF
		}
		rep := g.sess.Helo(arg, verb == "EHLO")
		if !rep.Positive() {
			g.send(rep)
			return nil
		}
		g.override = &rep
	case "MAIL":
		c := g.sess.Conn()
		switch {
		case c.Helo == "":
			g.send(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Send EHLO or HELO first"})
			return nil
		case g.l.cfg.RequireTLS && c.TLS == nil:
			g.send(hooks.Reply{Code: 530, Enhanced: [3]int{5, 7, 0}, Msg: "Must issue a STARTTLS command first"})
			return nil
		case g.l.cfg.RequireAuth && c.AuthUser == "":
			g.send(hooks.Reply{Code: 530, Enhanced: [3]int{5, 7, 0}, Msg: "Authentication required"})
			return nil
		}
		m, err := ParseMailArg(arg)
		if err != nil {
			g.send(addrReply(err))
			return nil
		}
		params := transaction.MailParams{Size: m.Size, Body: m.Body, UTF8: m.UTF8, Auth: m.Auth}
		if !g.decided(g.sess.Mail(m.Sender, params)) {
			return nil
		}
		// Sluice parsed and decided; go-smtp only records that MAIL was
		// given, from a line its parser cannot misread.
		line = []byte("MAIL FROM:<>\r\n")
	case "RCPT":
		c := g.sess.Conn()
		tx := g.sess.Transaction()
		if tx == nil {
			g.send(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Need MAIL before RCPT"})
			return nil
		}
		r, err := ParseRcptArg(arg, tx.Params.UTF8, !c.Relay && c.AuthUser == "")
		if err != nil {
			g.send(addrReply(err))
			return nil
		}
		if !g.decided(g.sess.Rcpt(r.Rcpt)) {
			return nil
		}
		line = []byte("RCPT TO:<recipient@sluice.invalid>\r\n")
	case "RSET":
		if g.tooMuchJunk() {
			return io.EOF
		}
	case "DATA":
		if arg != "" {
			g.send(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 4}, Msg: "DATA takes no argument"})
			return nil
		}
		rep := g.sess.Data()
		if rep.Code != 354 {
			g.send(rep)
			if g.closed.Load() {
				return io.EOF
			}
			if g.br.Buffered() > 0 {
				// The client sent its message without waiting for 354
				// (RFC 2920 forbids it): the body would run as commands.
				return g.pipelinedBody(rep)
			}
			// Should the body come in a later write, its first line is
			// no command: see pipelinedBody.
			g.afterRefusedData = &rep
			return nil
		}
		g.override = &rep
	case "BDAT":
		// CHUNKING is not advertised: the chunk that follows cannot be told
		// from commands, so the only safe answer is to close.
		g.send(hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 1}, Msg: "BDAT is not supported (CHUNKING was not offered); closing connection", Close: true})
		return io.EOF
	case "STARTTLS":
		return g.startTLS(arg)
	case "AUTH":
		switch {
		case !g.sess.cfg.Chain.HasAuth():
			g.send(hooks.Reply{Code: 502, Enhanced: [3]int{5, 5, 1}, Msg: "AUTH not available on this port"})
			return nil
		case !g.authOffered():
			g.send(hooks.Reply{Code: 538, Enhanced: [3]int{5, 7, 11}, Msg: "Encryption required for authentication: use STARTTLS first"})
			return nil
		case g.sess.Conn().Helo == "":
			// Also right after STARTTLS, which forgets the EHLO (RFC 3207
			// 4.2) where go-smtp would remember it.
			g.send(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Send EHLO first"})
			return nil
		}
		// go-smtp runs the SASL exchange and calls the adapter's Auth.
	case "NOOP", "VRFY", "HELP":
		if g.tooMuchJunk() {
			return io.EOF
		}
		switch verb {
		case "NOOP":
			g.send(g.sess.Noop())
		case "VRFY":
			g.send(g.sess.Vrfy(arg))
		default:
			g.send(g.sess.Help(arg))
		}
		return nil
	case "QUIT":
		g.send(g.sess.Quit())
		return io.EOF
	default:
		if verb == "" {
			g.send(hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error: empty command"})
			return nil
		}
		g.send(g.sess.Unrecognized(verb, arg))
		return nil
	}
	g.lastCmd = verb
	g.pending = append(g.pending[:0], line...)
	return nil
}

// decided sends a refusal and returns false, or keeps a positive reply to
// word go-smtp's and returns true.
func (g *guard) decided(rep hooks.Reply) bool {
	if !rep.Positive() {
		g.send(rep)
		return false
	}
	if rep.Close {
		g.closeAfterReply = true
	}
	g.override = &rep
	return true
}

// addrReply turns a parser refusal into its reply.
func addrReply(err error) hooks.Reply {
	var ae *AddrError
	if errors.As(err, &ae) {
		return hooks.Reply{Code: ae.Code, Enhanced: ae.Enhanced, Msg: ae.Msg}
	}
	return hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Syntax error"}
}

func (g *guard) startTLS(arg string) error {
	switch {
	case arg != "":
		g.send(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 4}, Msg: "STARTTLS takes no argument"})
		return nil
	case g.l.cfg.TLS == nil || g.l.cfg.ImplicitTLS:
		g.send(hooks.Reply{Code: 502, Enhanced: [3]int{5, 5, 1}, Msg: "STARTTLS not available"})
		return nil
	case g.sess.Conn().TLS != nil:
		g.send(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "TLS already active"})
		return nil
	case g.sess.Authenticated():
		// RFC 3207 4.2 would have AUTH forgotten, and go-smtp cannot
		// forget it: a client that authenticated in plaintext (only
		// possible where auth_plaintext_loopback allows it) stays so.
		g.send(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "STARTTLS is not allowed after AUTH"})
		return nil
	}
	// Anything the client pipelined after STARTTLS was sent in plaintext
	// and must never run inside the TLS session (CVE-2011-0411 class):
	// it is thrown away before the handshake, as Postfix does.
	if n := g.br.Buffered(); n > 0 {
		g.log.Warn("discarding plaintext pipelined after STARTTLS", "bytes", n)
		g.br.Discard(n)
	}
	if err := g.writeRaw([]byte("220 2.0.0 Ready to start TLS\r\n")); err != nil {
		g.Close()
		return io.EOF
	}
	// Never go on in plaintext after a failed handshake: handshake closes.
	if err := g.handshake(tls.Server(g.transport, g.l.cfg.TLS)); err != nil {
		return io.EOF
	}
	// RFC 3207 4.2: forget everything learnt before TLS.
	g.sess.Reset()
	c := g.sess.Conn()
	c.Helo, c.ESMTP = "", false
	return nil
}

// handshake runs the TLS handshake on tc and makes it the transport; on
// failure it closes the connection.
func (g *guard) handshake(tc *tls.Conn) error {
	if d := g.l.cfg.ReadTimeout; d > 0 {
		tc.SetDeadline(time.Now().Add(d))
	}
	if err := tc.Handshake(); err != nil {
		g.log.Info("TLS handshake failed; closing", "err", err)
		g.Close()
		return err
	}
	tc.SetDeadline(time.Time{})
	g.tmu.Lock()
	g.transport = tc
	g.tmu.Unlock()
	g.br = bufio.NewReaderSize(clientReader{g}, readBufferSize)
	st := tc.ConnectionState()
	g.sess.Conn().TLS = &st
	g.log.Info("TLS started", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite))
	return nil
}

// readData passes the message through, line by line, until the line
// holding only ".": it enforces the bare CR / bare LF policy, so that only
// CRLF.CRLF ever ends a message.
func (g *guard) readData() error {
	g.fill()
	chunk, err := g.br.ReadSlice('\n')
	if len(chunk) == 0 && err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = nil
		} else {
			return g.readFailed(err, "reading the message")
		}
	}
	complete := len(chunk) > 0 && chunk[len(chunk)-1] == '\n'
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) && !complete {
		return g.readFailed(err, "reading the message")
	}
	if g.atLineStart && string(chunk) == ".\r\n" {
		g.dataMode = false
		g.pending = append(g.pending[:0], chunk...)
		return nil
	}
	g.dataBytes += int64(len(chunk))
	if g.l.cfg.BareNewline == BareNewlineNormalize {
		g.pending = g.normalize(g.pending[:0], chunk)
		return nil
	}
	if g.hasBareNewline(chunk, complete) {
		g.log.Warn("bare CR or LF in DATA; closing", "policy", "reject")
		g.send(hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 2}, Msg: "Message contains a bare CR or LF: lines must end with CRLF; closing connection", Close: true})
		return errors.New("bare CR or LF in the message")
	}
	g.pending = append(g.pending[:0], chunk...)
	g.atLineStart = complete
	return nil
}

// bodyReader is the message as Session.Message reads it under the reject
// policy: straight from the guard's buffer, whole lines at a time, with the
// dot-stuffing undone and io.EOF at the final dot. It does the work that
// go-smtp's data reader would otherwise do one byte at a time, on bytes
// the guard had already copied once; go-smtp's reader then sees only the
// final ".". Under the normalize policy the message goes through readData
// and go-smtp instead.
type bodyReader guard

func (b *bodyReader) Read(p []byte) (int, error) { return (*guard)(b).readBody(p) }

// readBody fills p with message bytes. It blocks only while it has nothing
// to return; a line holding only "." ends the message (io.EOF) and is handed
// to go-smtp, which then ends its DATA. Every line must end with CRLF, as
// readData checks.
func (g *guard) readBody(p []byte) (int, error) {
	n := 0
	for n < len(p) && !g.bodyEnd {
		buf, _ := g.br.Peek(g.br.Buffered())
		undecided := g.atLineStart && (string(buf) == "." || string(buf) == ".\r")
		if len(buf) == 0 || undecided {
			if n > 0 {
				break
			}
			if g.closed.Load() {
				return 0, errClosed
			}
			g.fill()
			var err error
			if buf, err = g.br.Peek(len(buf) + 1); err != nil {
				return 0, g.readFailed(err, "reading the message")
			}
			buf, _ = g.br.Peek(g.br.Buffered())
			continue
		}
		if g.atLineStart && buf[0] == '.' {
			if string(buf[:min(3, len(buf))]) == ".\r\n" {
				g.br.Discard(3)
				g.dataBytes += 3
				g.bodyEnd, g.dataMode = true, false
				g.pending = append(g.pending[:0], ".\r\n"...)
				break
			}
			g.br.Discard(1) // a stuffed dot
			g.dataBytes++
			g.atLineStart = false
			continue
		}
		chunk, complete := buf, false
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < len(p)-n {
			chunk, complete = buf[:i+1], true
		} else if len(chunk) > len(p)-n {
			chunk = chunk[:len(p)-n]
		}
		if g.bareIn(chunk, complete) {
			g.log.Warn("bare CR or LF in DATA; closing", "policy", "reject")
			g.send(hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 2}, Msg: "Message contains a bare CR or LF: lines must end with CRLF; closing connection", Close: true})
			return 0, errors.New("bare CR or LF in the message")
		}
		n += copy(p[n:], chunk)
		g.br.Discard(len(chunk))
		g.dataBytes += int64(len(chunk))
		g.atLineStart = complete
	}
	if n == 0 && g.bodyEnd {
		return 0, io.EOF
	}
	return n, nil
}

// bareIn is hasBareNewline for readBody's chunks, which hold at most one
// LF, at their end when complete: a CR must be followed by LF and an LF
// preceded by CR. A CR that ends an incomplete chunk waits for the next.
func (g *guard) bareIn(chunk []byte, complete bool) bool {
	if g.pendingCR {
		g.pendingCR = false
		return chunk[0] != '\n'
	}
	text := chunk
	if complete {
		if len(chunk) < 2 || chunk[len(chunk)-2] != '\r' {
			return true
		}
		text = chunk[:len(chunk)-2]
	}
	switch i := bytes.IndexByte(text, '\r'); {
	case i < 0:
		return false
	case !complete && i == len(text)-1:
		g.pendingCR = true
		return false
	}
	return true
}

// drainBody reads and drops what is left of the message after Session
// stopped reading early (a size limit, a refusal at the end of the header),
// so that go-smtp goes on at the next command.
func (g *guard) drainBody() {
	var buf [4 << 10]byte
	for !g.bodyEnd && !g.closed.Load() {
		if _, err := g.readBody(buf[:]); err != nil {
			return
		}
	}
}

// hasBareNewline reports a CR not followed by LF or an LF not preceded by
// CR in chunk, remembering a CR that ends an incomplete chunk.
func (g *guard) hasBareNewline(chunk []byte, complete bool) bool {
	prevCR := g.pendingCR
	g.pendingCR = false
	for i, b := range chunk {
		switch {
		case prevCR && b != '\n':
			return true
		case b == '\n' && !prevCR:
			return true
		}
		prevCR = b == '\r'
		if prevCR && i == len(chunk)-1 && !complete {
			g.pendingCR = true
		}
	}
	return false
}

// normalize appends chunk to dst under the normalize policy: each bare CR
// and bare LF becomes CRLF. Only a CRLF the client sent starts a line where
// go-smtp unstuffs a leading dot and where "." ends the message (as
// Postfix's normalize: only CRLF.CRLF ends DATA). So a line that starts
// after a bare CR or LF, and a lone "." ended by one, get their dot
// doubled: go-smtp takes one off, the line reaches the queue as sent, and
// it can never end the message, however the chunks fall. A CR that ends a
// chunk is held back until the next byte says whether it is bare.
func (g *guard) normalize(dst, chunk []byte) []byte {
	for i := 0; i < len(chunk); i++ {
		b := chunk[i]
		if g.pendingCR {
			g.pendingCR = false
			dst = append(dst, '\r', '\n')
			if b == '\n' {
				g.atLineStart, g.afterBare = true, false
				continue
			}
			g.afterBare = true
		}
		if b == '.' && (g.afterBare || g.atLineStart && loneDot(chunk[i+1:])) {
			dst = append(dst, '.')
		}
		g.atLineStart, g.afterBare = false, false
		switch {
		case b == '\r' && i+1 == len(chunk):
			g.pendingCR = true
		case b == '\r' && chunk[i+1] == '\n':
			dst = append(dst, '\r', '\n')
			g.atLineStart = true
			i++
		case b == '\r', b == '\n':
			dst = append(dst, '\r', '\n')
			g.afterBare = true
		default:
			dst = append(dst, b)
		}
	}
	return dst
}

// loneDot reports whether rest, what follows a dot at the start of a line,
// ends that line with a bare CR or LF, or is empty (undecided).
func loneDot(rest []byte) bool {
	return len(rest) == 0 || rest[0] == '\n' || rest[0] == '\r' && (len(rest) == 1 || rest[1] != '\n')
}

// Write takes go-smtp's replies, line by line: it turns the first into the
// connect hook's greeting, rewrites the replies Sluice words itself, and
// switches to DATA mode after 354.
func (g *guard) Write(p []byte) (int, error) {
	if g.closed.Load() {
		return 0, errClosed
	}
	buf := p
	if len(g.wbuf) > 0 {
		g.wbuf = append(g.wbuf, p...)
		buf = g.wbuf
	}
	for {
		i := bytes.Index(buf, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := buf[:i+2] // replyLine copies what it keeps
		buf = buf[i+2:]
		if err := g.replyLine(line); err != nil {
			g.wbuf = g.wbuf[:0]
			return 0, err
		}
	}
	g.wbuf = append(g.wbuf[:0], buf...)
	return len(p), nil
}

func (g *guard) replyLine(line []byte) error {
	if len(line) >= 4 && line[3] == '-' {
		g.multi = append(g.multi, append([]byte(nil), line...))
		return nil
	}
	lines := [][]byte{line}
	if len(g.multi) > 0 {
		lines = append(g.multi, line)
	}
	g.multi = nil
	code, _ := strconv.Atoi(string(line[:min(3, len(line))]))

	if !g.greeted {
		g.greeted = true
		if tc, ok := g.transport.(*tls.Conn); ok {
			if err := g.handshake(tc); err != nil {
				return errClosed
			}
		}
		rep := g.sess.Connect()
		g.send(rep)
		if rep.Close {
			return errClosed
		}
		return nil
	}
	out := lines
	switch {
	case g.lastCmd == "EHLO" && code == 250:
		out = g.ehloReply(lines)
	case g.override != nil:
		rep := *g.override
		if code/100 == rep.Code/100 || (rep.Code == 354 && code == 354) {
			g.wscratch = appendReply(g.wscratch[:0], rep)
			out = [][]byte{g.wscratch}
		}
	case g.lastCmd == "AUTH" && code == 454 && bytes.Contains(line, []byte("Invalid base64")):
		// go-smtp answers an undecodable SASL response 454; RFC 4954 4
		// wants 501. The client's mistake, not a guess: not counted.
		g.log.Info("AUTH: SASL response is not base64", "ip", g.sess.Conn().RemoteIP().String())
		code = 501
		g.wscratch = appendReply(g.wscratch[:0], hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Invalid base64 data"})
		out = [][]byte{g.wscratch}
	}
	g.override = nil
	g.saslMode = code == 334
	if g.lastCmd == "DATA" && code/100 == 2 {
		g.junk = 0 // a message went through: the client is doing real work
	}
	if g.lastCmd == "MAIL" && code >= 400 {
		g.sess.Reset() // go-smtp refused what Sluice accepted: stay in step
	}
	if code == 354 {
		g.dataMode, g.atLineStart, g.pendingCR, g.afterBare, g.bodyEnd = true, true, false, false, false
		g.dataStart, g.dataBytes = time.Now(), 0
	}
	g.busy.Store(g.sess.Transaction() != nil || g.dataMode)
	wire := out[0]
	if len(out) > 1 {
		wire = bytes.Join(out, nil)
	}
	if err := g.writeRaw(wire); err != nil {
		return err
	}
	if g.closeAfterReply {
		g.closeAfterReply = false
		g.Close()
		return errClosed
	}
	g.countError(code)
	return nil
}

// appendReply appends rep as the client gets it, CRLF included: what
// rep.String() + "\r\n" gives, without fmt.
func appendReply(b []byte, rep hooks.Reply) []byte {
	b = strconv.AppendInt(b, int64(rep.Code), 10)
	if e := rep.Enhanced; e != [3]int{} {
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(e[0]), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(e[1]), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(e[2]), 10)
	}
	if rep.Msg != "" {
		b = append(b, ' ')
		b = append(b, rep.Msg...)
	}
	return append(b, '\r', '\n')
}

// authOffered reports whether AUTH may be used on this connection now: an
// auth plugin exists, and the connection is encrypted or the listener allows
// plaintext AUTH from loopback.
func (g *guard) authOffered() bool {
	c := g.sess.Conn()
	if !g.sess.cfg.Chain.HasAuth() {
		return false
	}
	return c.TLS != nil || (g.l.cfg.AuthPlaintextLoopback && c.RemoteIP().IsLoopback())
}

// ehloReply rewrites go-smtp's EHLO reply: Sluice's greeting line, SIZE
// with the limit in force, STARTTLS when TLS is configured and not yet
// active, no CHUNKING (BDAT is refused).
func (g *guard) ehloReply(lines [][]byte) [][]byte {
	rep := g.override
	g.override = nil
	first := g.sess.Conn().Hostname
	if rep != nil {
		first = rep.Msg
	}
	caps := []string{first}
	for _, l := range lines[1:] {
		c := strings.TrimSpace(string(l[4:]))
		switch {
		case c == "CHUNKING", strings.HasPrefix(c, "SIZE"), c == "STARTTLS":
		default:
			caps = append(caps, c)
		}
	}
	caps = append(caps, fmt.Sprintf("SIZE %d", g.sess.MaxMessageBytes()))
	if g.l.cfg.TLS != nil && !g.l.cfg.ImplicitTLS && g.sess.Conn().TLS == nil {
		caps = append(caps, "STARTTLS")
	}
	out := make([][]byte, len(caps))
	for i, c := range caps {
		sep := "-"
		if i == len(caps)-1 {
			sep = " "
		}
		out[i] = []byte("250" + sep + c + "\r\n")
	}
	return out
}
