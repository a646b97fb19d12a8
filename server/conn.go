package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server/input"
)

// conn is the protocol loop of one connection: it reads a bounded line,
// hands it to the Session, writes the reply, and does what the reply
// starts (read the message, a BDAT chunk, the TLS handshake). Replies to
// pipelined commands are written together once the client's input is used
// up (RFC 2920), and always before the loop waits for the client.
type conn struct {
	l   *listener
	raw net.Conn // the socket under transport; never changes
	// transport is changed (by the handshake) and read on the connection's
	// own goroutine without a lock; tmu orders the change with the
	// watchdog's read in stuck.
	tmu       sync.Mutex
	transport net.Conn     // the socket, or TLS over it
	in        input.Buffer // what the client sent, not yet consumed
	out       []byte       // replies not yet written
	sess      *Session
	key       netip.Addr // what MaxConnectionsPerIP counted this connection as
	log       *slog.Logger
	trace     *slog.Logger // the listener's Trace with the connection's id; nil: no trace
	cancel    context.CancelFunc

	// working is since when (unix ns) the server works on the client's
	// last input; 0 while it waits for the client. The watchdog reads it.
	working atomic.Int64
	// busy is set while a transaction is open: shutdown waits for it.
	busy      atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once

	inData     bool               // reading a message: the minimum data rate applies
	dataStart  time.Time          // when the message began
	dataBytes  int64              // message bytes read since then
	pending    string             // a command line read ahead (it ended a BDAT sequence)
	rc         syscall.RawConn    // the plain TCP socket, to wait for input without a buffer (nil under TLS)
	inputReady func(uintptr) bool // c.in.ReadFD, made once
	dot        input.Dot          // the DATA reader, reused from message to message
	chunks     input.Chunks       // the BDAT reader, likewise
	nextChunks input.NextChunk    // c.nextChunk, made once
	// endedBy is the reply to a BDAT command that ended its sequence
	// (Code 0: none), written after the message's own.
	endedBy hooks.Reply
	// The read and write deadlines last set on the transport (zero: unknown).
	readDeadline, writeDeadline time.Time
}

// flushAt is how many bytes of replies are kept back at most while
// pipelined commands are answered.
const flushAt = 4 << 10

var errLineTooLong = errors.New("command line too long")

func newConn(l *listener, transport net.Conn, sess *Session, log *slog.Logger, cancel context.CancelFunc) *conn {
	raw := transport
	if tc, ok := transport.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	c := &conn{l: l, raw: raw, transport: transport, sess: sess, log: log, cancel: cancel}
	// The poller's read (input.Buffer.ReadFD) reads the socket itself:
	// only for the net package's own sockets, never for a net.Conn of the
	// caller's (ServeConn) whose Read might do more than read the socket.
	var sc syscall.Conn
	switch t := raw.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		sc = t
	}
	if sc != nil && transport == raw {
		c.rc, _ = sc.SyscallConn()
		c.inputReady = c.in.ReadFD
	}
	c.in.Src = clientReader{c}
	c.nextChunks = c.nextChunk
	c.working.Store(time.Now().UnixNano()) // the connect hook runs before any read
	return c
}

// clientReader reads from the client's transport for the connection's
// buffer, and marks the time in between reads as the server's.
type clientReader struct{ c *conn }

func (r clientReader) Read(p []byte) (int, error) {
	r.c.working.Store(0)
	n, err := r.c.transport.Read(p) // the connection's own goroutine: it alone changes transport
	r.c.working.Store(time.Now().UnixNano())
	return n, err
}

// serve runs the session to its end.
func (c *conn) serve() {
	defer c.close()
	s := c.sess
	if tc, ok := c.transport.(*tls.Conn); ok { // implicit TLS
		if !c.handshake(tc) {
			return
		}
	}
	if d := c.l.cfg.GreetingDelay; d > 0 {
		c.watchEarlyTalker(d)
	}
	c.reply(s.Connect())
	for !s.Ended() && !c.closed.Load() {
		line := c.pending
		c.pending = ""
		if line == "" {
			var err error
			if line, err = c.readLine(); err != nil {
				c.readFailed(err, "waiting for a command")
				return
			}
		}
		c.command(line)
	}
}

// command runs one command line and what its reply starts.
func (c *conn) command(line string) {
	s := c.sess
	if c.trace != nil {
		c.traceCommand(line)
	}
	if rep := s.Command(line); rep.Code != 0 {
		c.reply(rep)
	}
	if rep, ok := s.Followup(); ok {
		c.reply(rep)
	}
	if s.Ended() {
		return
	}
	if s.refusedData && c.in.Buffered() > 0 {
		// The client sent its message without waiting for 354 (RFC 2920
		// forbids it): the body would run as commands.
		c.reply(s.pipelinedMessage())
		return
	}
	switch s.next {
	case stepMessage:
		c.readMessage()
	case stepChunk:
		c.readChunks()
	case stepTLS:
		c.startTLS()
	}
}

// readMessage reads the message after DATA's 354 into the session.
func (c *conn) readMessage() {
	c.startData()
	defer c.endData()
	d := &c.dot
	d.Reset(c, c.l.cfg.BareNewline == BareNewlineNormalize)
	rep := c.sess.Message(d)
	if !rep.Close && !d.Done() {
		// An early reply (a size limit, a refusal at the end of the
		// header): the rest of the message is read and dropped.
		if err := d.Drain(); err != nil {
			rep = c.sess.messageReadFailure(err)
		}
	}
	c.reply(rep)
}

// readChunks reads a BDAT chunk: into a new message, or into nothing when
// the session refused it.
func (c *conn) readChunks() {
	s := c.sess
	ch := s.chunk
	c.startData()
	defer c.endData()
	if ch.refused != nil {
		if ch.refused.Close {
			c.reply(s.chunkRefused()) // closing: the chunk need not be read
			return
		}
		if err := c.skip(ch.size); err != nil {
			c.reply(s.messageReadFailure(err))
			return
		}
		c.reply(s.chunkRefused())
		return
	}
	r := &c.chunks
	r.Reset(c, ch.size, ch.last, c.l.cfg.BareNewline == BareNewlineNormalize, c.nextChunks)
	c.endedBy = hooks.Reply{}
	rep := s.Message(r)
	if !rep.Close && r.Left() > 0 {
		if err := c.skip(r.Left()); err != nil {
			rep = s.messageReadFailure(err)
		}
	}
	if rep.Code != 0 {
		if !r.Last() && !rep.Close {
			// Chunks the client pipelined after this one get the same
			// answer, their bytes dropped (RFC 3030 4).
			s.bdatFailed = &rep
		}
		c.reply(rep)
	}
	if c.endedBy.Code != 0 {
		c.reply(c.endedBy)
	}
}

func (c *conn) startData() {
	c.inData, c.dataStart, c.dataBytes = true, time.Now(), 0
}

func (c *conn) endData() { c.inData = false }

// startTLS runs the handshake after STARTTLS's 220. Anything the client
// pipelined after STARTTLS was sent in plaintext and must never run inside
// the TLS session (CVE-2011-0411 class): it is thrown away first, as
// Postfix does.
func (c *conn) startTLS() {
	if n := c.in.Buffered(); n > 0 {
		c.log.Warn("discarding plaintext pipelined after STARTTLS", "bytes", n)
		c.in.Drop()
	}
	if err := c.flush(); err != nil {
		c.abort()
		return
	}
	c.handshake(tls.Server(c.transport, c.l.cfg.TLS))
}

// handshake runs the TLS handshake on tc, makes it the transport and
// tells the session (TLSStarted). On failure it closes the connection
// (never go on in plaintext) and returns false.
func (c *conn) handshake(tc *tls.Conn) bool {
	if d := c.l.cfg.ReadTimeout; d > 0 {
		tc.SetDeadline(time.Now().Add(d))
	}
	if err := tc.Handshake(); err != nil {
		c.log.Info("TLS handshake failed; closing", "err", err)
		c.closed.Store(true)
		return false
	}
	tc.SetDeadline(time.Time{})
	c.readDeadline, c.writeDeadline = time.Time{}, time.Time{}
	c.tmu.Lock()
	c.transport = tc
	c.tmu.Unlock()
	c.rc = nil // TLS keeps buffers of its own: the poller's read is for the plain socket
	st := tc.ConnectionState()
	c.sess.TLSStarted(&st)
	c.log.Info("TLS started", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite))
	return true
}

// watchEarlyTalker holds the greeting back for d and marks a client that
// sends anything meanwhile (connection.EarlyTalker). It waits the whole
// delay either way, as qpsmtpd's check_earlytalker does: talking early
// must not earn a faster greeting. The early bytes stay unread: they are
// the client's first command once it is greeted, unless a plugin refuses
// the connection.
func (c *conn) watchEarlyTalker(d time.Duration) {
	end := time.Now().Add(d)
	c.transport.SetReadDeadline(end)
	c.readDeadline = end
	if _, err := c.in.Peek(1); err == nil {
		c.sess.conn.EarlyTalker = true
		c.log.Info("client talked before the greeting", "greeting_delay", d.String())
		t := time.NewTimer(time.Until(end))
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.sess.ctx.Done():
		}
	}
}

// readLine reads the next command line, CRLF included, writing the
// replies kept back before it waits.
func (c *conn) readLine() (string, error) {
	if !c.inData {
		// Before any wait: shutdown wakes only the connections not busy.
		c.busy.Store(c.sess.tx != nil)
		if c.l.shuttingDown() && !c.busy.Load() {
			return "", errShuttingDown
		}
	}
	if c.in.Buffered() == 0 {
		if err := c.flush(); err != nil {
			return "", err
		}
	}
	c.setReadDeadline()
	if err := c.waitInput(); err != nil {
		return "", err
	}
	line, err := c.in.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > c.l.cfg.MaxLineLength {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return string(line), nil
}

var errShuttingDown = errors.New("server shutting down")

// waitInput waits, within the read deadline (set by the caller), until
// the client has sent something and reads it, holding no read buffer while
// it waits (see input.Buffer.ReadFD). Only on a plain TCP socket with
// nothing buffered (TLS keeps buffers of its own); elsewhere the read
// itself waits.
func (c *conn) waitInput() error {
	if c.rc == nil || c.in.Buffered() > 0 {
		return nil
	}
	c.in.Release()
	c.working.Store(0)
	err := c.rc.Read(c.inputReady)
	c.working.Store(time.Now().UnixNano())
	return err
}

// Bytes, More and Consume make the connection the input.Source of the
// message readers.

// Bytes returns the message bytes buffered.
func (c *conn) Bytes() []byte { return c.in.Bytes() }

// More waits until the buffer holds more than have bytes of a message,
// within the read deadline. The client's end of stream is never the end
// of a message: it is io.ErrUnexpectedEOF here.
func (c *conn) More(have int) error {
	if have == 0 && c.in.Buffered() == 0 {
		if err := c.flush(); err != nil {
			return err
		}
	}
	c.setReadDeadline()
	_, err := c.in.Peek(have + 1)
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Consume drops n message bytes from the buffer, counted for the data
// rate.
func (c *conn) Consume(n int) {
	c.in.Discard(n)
	c.dataBytes += int64(n)
}

// skip reads and drops n message bytes (a refused BDAT chunk).
func (c *conn) skip(n int64) error {
	for n > 0 {
		if c.in.Buffered() == 0 {
			if err := c.More(0); err != nil {
				return err
			}
		}
		k := int(min(n, int64(c.in.Buffered())))
		c.Consume(k)
		n -= int64(k)
	}
	return nil
}

// setReadDeadline sets the deadline for the next read from the client:
// the idle timeout, refreshed on every read.
//
// Inside a message the deadline also enforces the minimum data rate: the
// client may take MinDataRateGrace plus one second per MinDataRate bytes it
// has sent, so a slow-drip client cannot hold a connection for ever while
// an honest slow one is never cut off mid-message by a fixed deadline.
//
// A deadline is a runtime timer moved on every command: an idle deadline
// that would move later by less than a 64th of the timeout is left where
// it is (the client may find the idle timeout that much shorter). One
// that moves earlier always moves, and so do the minimum data rate's and
// every deadline once the server is shutting down (listener.wakeIdle sets
// the deadline of the connections it finds idle to now; one that has
// since opened a transaction must get its own back).
func (c *conn) setReadDeadline() {
	now := time.Now()
	deadline := now.Add(c.l.cfg.ReadTimeout)
	exact := c.l.shuttingDown() // wakeIdle may have set a deadline of its own: replace it
	if c.inData && c.l.cfg.MinDataRate > 0 {
		allowed := c.l.cfg.MinDataRateGrace + time.Duration(float64(c.dataBytes)/float64(c.l.cfg.MinDataRate)*float64(time.Second))
		if rate := c.dataStart.Add(allowed); rate.Before(deadline) {
			deadline, exact = rate, true // the client's allowance, to the byte
		}
	}
	if exact || moveDeadline(c.readDeadline, deadline, c.l.cfg.ReadTimeout) {
		c.readDeadline = deadline
		c.transport.SetReadDeadline(deadline)
	}
}

// moveDeadline tells whether a deadline set at last should move to next:
// not when next is later by less than a 64th of timeout.
func moveDeadline(last, next time.Time, timeout time.Duration) bool {
	return last.IsZero() || !next.After(last) || next.Sub(last) >= timeout>>6
}

// readFailed answers a failed command read: 500 for a line too long, 421
// on a timeout or at shutdown, nothing when the client went away. The
// connection closes either way.
func (c *conn) readFailed(err error, during string) {
	var ne net.Error
	switch {
	case errors.Is(err, errLineTooLong):
		c.log.Warn("command line too long; closing", "max", c.l.cfg.MaxLineLength)
		c.reply(hooks.Reply{Code: 500, Enhanced: [3]int{5, 5, 2}, Msg: "Line too long (limit " + strconv.Itoa(c.l.cfg.MaxLineLength) + " bytes); closing connection", Close: true})
	case errors.Is(err, errShuttingDown):
		c.reply(replyShuttingDown)
	case errors.As(err, &ne) && ne.Timeout():
		if c.l.shuttingDown() && !c.busy.Load() {
			c.reply(replyShuttingDown)
		} else {
			c.log.Info("timeout", "during", during)
			c.reply(hooks.Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Msg: "Timeout " + during + "; closing connection", Close: true})
		}
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		c.log.Info("read error", "during", during, "err", err)
	}
	c.closed.Store(true)
}

var replyShuttingDown = hooks.Reply{Code: 421, Enhanced: [3]int{4, 3, 2}, Msg: "Service shutting down; try again later", Close: true}

// reply queues rep for the client; a reply that closes is written at once.
func (c *conn) reply(rep hooks.Reply) {
	if c.trace != nil {
		c.trace.Debug("reply", "code", rep.Code)
	}
	c.out = rep.AppendWire(c.out)
	if rep.Close {
		c.flush()
		c.closed.Store(true)
		return
	}
	if len(c.out) >= flushAt {
		c.flush()
	}
}

// flush writes the replies kept back.
func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	if d := c.l.cfg.WriteTimeout; d > 0 {
		if next := time.Now().Add(d); moveDeadline(c.writeDeadline, next, d) {
			c.writeDeadline = next
			c.raw.SetWriteDeadline(next)
		}
	}
	_, err := c.transport.Write(c.out)
	if cap(c.out) > 4*flushAt {
		c.out = nil // a burst of replies leaves no large buffer behind
	} else {
		c.out = c.out[:0]
	}
	if err != nil {
		c.closed.Store(true)
	}
	return err
}

// close writes what is left, closes the connection once and ends the
// session (reset_transaction and disconnect run here, on the connection's
// own goroutine).
func (c *conn) close() {
	c.closeOnce.Do(func() {
		c.flush()
		c.closed.Store(true)
		c.transport.Close()
		c.in.Drop()
		c.sess.Close()
		c.cancel()
		c.l.forget(c)
		c.log.Info("disconnect")
		if r := c.l.srv.recorder; r != nil {
			r.ConnClosed()
		}
		if c.l.srv.bus != nil {
			e := c.sess.event(monitor.KindDisconnect)
			e.Duration = time.Since(c.sess.conn.Started)
			c.l.srv.bus.Publish(e)
		}
	})
}

// abort is how another goroutine (shutdown at its deadline) ends the
// connection: it closes the socket and cancels the connection's context,
// and leaves ending the session to the connection's own goroutine, which
// sees its reads and writes fail. Running the session's hooks from here
// would race with the hook the connection is in.
func (c *conn) abort() {
	c.raw.Close()
	c.cancel()
}

// stuck ends a connection whose server side has been working (in a
// plugin, as a rule) far past every deadline the chain gives its hooks: a
// plugin that ignores its context must not hold the client for ever. It
// runs on the watchdog's goroutine while the connection's own is blocked:
// it writes 421 and closes the socket; the session ends once the plugin
// returns.
func (c *conn) stuck(since time.Duration) {
	c.log.Error("connection stuck on the server side past every hook deadline (a plugin ignoring its context?); closing", "for", since.Round(time.Millisecond).String())
	c.tmu.Lock()
	t := c.transport
	c.tmu.Unlock()
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	t.Write([]byte("421 4.3.0 Local error in processing; closing connection\r\n"))
	c.abort()
}

// traceCommand logs a command line for the listener's trace, without
// what AUTH carries: a SASL response line is not logged at all, and an
// AUTH line only up to its mechanism.
func (c *conn) traceCommand(line string) {
	if c.sess.sasl != nil {
		c.trace.Debug("command", "line", "(SASL response not logged)")
		return
	}
	text := strings.TrimRight(line, "\r\n")
	if len(text) >= 5 && strings.EqualFold(text[:5], "AUTH ") {
		mech, _, more := strings.Cut(strings.TrimSpace(text[5:]), " ")
		text = text[:5] + mech
		if more {
			text += " (initial response not logged)"
		}
	}
	c.trace.Debug("command", "line", text)
}
