package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server/input"
	"github.com/sluice-mta/sluice/transaction"
)

// The message: what DATA and BDAT read goes through Message, once, into
// the transaction's header and body spool; then the hooks from
// data_headers_end to queue_post decide.

// errTooBig is returned by sizeLimit once more than the limit was read.
var errTooBig = errors.New("message exceeds the size limit")

// sizeLimit reads from r and fails with errTooBig past max bytes of the
// client's; exactly max bytes pass.
type sizeLimit struct {
	r    io.Reader
	adds interface{ Added() int64 } // r, when it adds bytes of its own (input.Chunks)
	n    int64
	max  int64
	over bool
}

func (l *sizeLimit) Read(p []byte) (int, error) {
	if l.over {
		return 0, errTooBig
	}
	if room := l.max + 1 + l.added() - l.n; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n-l.added() > l.max {
		l.over = true
		return n, errTooBig
	}
	return n, err
}

// added is how many bytes the reader added to what the client sent (the
// CRLF that ends a BDAT message without one): they do not count.
func (l *sizeLimit) added() int64 {
	if l.adds == nil {
		return 0
	}
	return l.adds.Added()
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
		return s.finish(replyBadSequence("Need MAIL command"))
	}
	s.next = stepNone
	s.inMessage = true
	s.txs.decider = ""
	rep := s.message(tx, r)
	s.inMessage = false
	s.txEnd(tx, rep)
	s.Reset() // the end of the message ends the transaction, whatever the reply
	if rep.Code/100 == 2 {
		s.junk = 0 // a message went through: the client is doing real work
	}
	if rep.Code == 0 { // the client interrupted a BDAT sequence
		return rep
	}
	return s.finish(rep)
}

func (s *Session) message(tx *transaction.Transaction, r io.Reader) hooks.Reply {
	limited := &s.limit // the Session's own: one allocation less per message
	*limited = sizeLimit{r: r, max: s.MaxMessageBytes()}
	limited.adds, _ = r.(interface{ Added() int64 })
	defer func() { limited.r, limited.adds = nil, nil }()
	br := messageReaders.Get().(*bufio.Reader)
	br.Reset(limited)
	defer func() {
		br.Reset(nil)
		messageReaders.Put(br)
	}()

	lim := s.cfg.Limits
	if err := tx.ReadHeader(br, transaction.HeaderLimits{MaxBytes: lim.MaxHeaderBytes, IndexBytes: lim.HeaderIndexBytes, IndexFields: lim.HeaderIndexFields}); err != nil {
		if errors.Is(err, transaction.ErrSpool) {
			return s.spoolFailure(err)
		}
		return s.readFailure(err)
	}
	if n := tx.Header.Unparsed(); n > 0 {
		s.log.Info("header past the index limits passed through unparsed", "tx", tx.ID, "unparsed_bytes", n)
	}
	if rep := s.reply(s.cfg.Chain.DataHeadersEnd(s.ctx, s.conn, tx)); rep.Code != 0 {
		if !rep.Close {
			// Drain what is left; past the size limit the rest is the
			// loop's to discard, and the plugin's reply stands.
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

	line := tx.Received(s.conn, s.cfg.ReceivedAuthUser, s.cfg.Now())
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
		s.queued(tx, d.Plugin)
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
	s.queued(tx, d.Plugin)
	if s.log.Enabled(s.ctx, slog.LevelInfo) {
		s.log.Info("message queued", "queue_id", tx.QueueID, "plugin", d.Plugin, "from", tx.Sender,
			"rcpts", len(tx.Recipients), "size", tx.MessageSize(), "detail", d.Result.Detail)
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
	case errors.Is(err, input.ErrBareNewline):
		s.log.Warn("bare CR or LF in the message; closing", "policy", "reject")
		return hooks.Reply{Code: 554, Enhanced: [3]int{5, 5, 2}, Msg: "Message contains a bare CR or LF: lines must end with CRLF; closing connection", Close: true}
	case errors.Is(err, errInterrupted):
		return hooks.Reply{}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.log.Info("timeout", "during", "reading the message")
		return hooks.Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Msg: "Timeout reading the message; closing connection", Close: true}
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Info("reading the message failed", "err", err)
	}
	return hooks.Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Msg: "Error reading the message; closing connection", Close: true}
}

func (s *Session) spoolFailure(err error) hooks.Reply {
	s.log.Error("spooling the message failed", "err", err)
	return hooks.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Msg: "Local error in processing; try again later"}
}
