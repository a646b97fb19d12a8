package server

import (
	"bytes"
	"errors"
	"io"
	"strings"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server/command"
)

// The message as the client sends it: after DATA's 354, lines up to the
// one holding only "." (dotReader); after BDAT, chunks of announced sizes
// (chunkReader). Both apply the listener's bare-newline policy, so the
// queue only ever sees CRLF lines, and both read straight from the
// connection's buffer: the bytes are copied once, into Message's reader.

// BareNewline is the policy for a bare LF or bare CR inside a message, as
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

var (
	// errBareNewline: a bare CR or LF under the reject policy.
	errBareNewline = errors.New("bare CR or LF in the message")
	// errInterrupted: a command other than BDAT came before BDAT LAST.
	errInterrupted = errors.New("BDAT sequence interrupted by another command")
)

// dotReader is the DATA payload: dot-unstuffed, io.EOF at the line holding
// only ".". Only a CRLF the client sent starts a line where a dot is
// unstuffed and where "." ends the message (as Postfix: only CRLF.CRLF ends
// DATA); under normalize a line that starts after a bare CR or LF keeps
// its dot, and so does a lone "." ended by one, so the message reaches the
// queue as sent and no bare line end can end it.
type dotReader struct {
	c         *conn
	normalize bool
	lineStart bool // after a CRLF the client sent
	pendingCR bool // a CR ended what was read so far: what follows decides
	done      bool // the final dot was read
}

// newDotReader readies the connection's DATA reader for a new message.
func newDotReader(c *conn) *dotReader {
	c.dot = dotReader{c: c, normalize: c.l.cfg.BareNewline == BareNewlineNormalize, lineStart: true}
	return &c.dot
}

func (d *dotReader) Read(p []byte) (int, error) {
	if d.normalize {
		return d.readNormalize(p)
	}
	return d.readStrict(p)
}

// readStrict reads under the reject policy: whole lines at a time, each of
// which must end with CRLF.
func (d *dotReader) readStrict(p []byte) (int, error) {
	c := d.c
	n := 0
	for n < len(p) && !d.done {
		buf := c.in.bytes()
		undecided := d.lineStart && (string(buf) == "." || string(buf) == ".\r")
		if len(buf) == 0 || undecided {
			if n > 0 {
				break
			}
			if err := c.more(len(buf)); err != nil {
				return 0, err
			}
			continue
		}
		if d.lineStart && buf[0] == '.' {
			if len(buf) >= 3 && buf[1] == '\r' && buf[2] == '\n' {
				c.consume(3)
				d.done = true
				break
			}
			c.consume(1) // a stuffed dot
			d.lineStart = false
			continue
		}
		chunk, complete := buf, false
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < len(p)-n {
			chunk, complete = buf[:i+1], true
		} else if len(chunk) > len(p)-n {
			chunk = chunk[:len(p)-n]
		}
		if d.bareIn(chunk, complete) {
			return 0, errBareNewline
		}
		n += copy(p[n:], chunk)
		c.consume(len(chunk))
		d.lineStart = complete
	}
	if n == 0 && d.done {
		return 0, io.EOF
	}
	return n, nil
}

// bareIn reports a bare CR or LF in one of readStrict's chunks, which hold
// at most one LF, at their end when complete: a CR must be followed by LF
// and an LF preceded by CR. A CR that ends an incomplete chunk waits for
// the next.
func (d *dotReader) bareIn(chunk []byte, complete bool) bool {
	if d.pendingCR {
		d.pendingCR = false
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
		d.pendingCR = true
		return false
	}
	return true
}

// readNormalize reads under the normalize policy: each bare CR and bare LF
// becomes CRLF.
func (d *dotReader) readNormalize(p []byte) (int, error) {
	c := d.c
	n := 0
	for n+2 <= len(p) && !d.done { // room for a CRLF
		buf := c.in.bytes()
		if len(buf) == 0 || d.lineStart && buf[0] == '.' && (len(buf) == 1 || len(buf) == 2 && buf[1] == '\r') {
			if n > 0 {
				break
			}
			if err := c.more(len(buf)); err != nil {
				return 0, err
			}
			continue
		}
		switch {
		case d.pendingCR:
			d.pendingCR = false
			p[n], p[n+1] = '\r', '\n'
			n += 2
			if buf[0] == '\n' {
				c.consume(1)
				d.lineStart = true
			}
		case d.lineStart && buf[0] == '.':
			d.lineStart = false
			switch {
			case buf[1] == '\r' && buf[2] == '\n':
				c.consume(3)
				d.done = true
			case buf[1] == '\r', buf[1] == '\n':
				// "." ended by a bare line end: kept, never the end.
				p[n] = '.'
				n++
				c.consume(1)
			default:
				c.consume(1) // a stuffed dot
			}
		case buf[0] == '\r':
			c.consume(1)
			d.pendingCR = true
			d.lineStart = false
		case buf[0] == '\n': // bare LF
			c.consume(1)
			p[n], p[n+1] = '\r', '\n'
			n += 2
			d.lineStart = false
		default:
			run := buf
			if i := bytes.IndexAny(buf, "\r\n"); i >= 0 {
				run = buf[:i]
			}
			k := copy(p[n:len(p)-1], run) // keep a byte of room: a CRLF needs two
			c.consume(k)
			n += k
			d.lineStart = false
		}
	}
	if n == 0 && d.done {
		return 0, io.EOF
	}
	return n, nil
}

// drain reads and drops the rest of the message after an early reply.
func (d *dotReader) drain() error {
	var buf [4 << 10]byte
	for !d.done {
		if _, err := d.Read(buf[:]); err != nil {
			return err
		}
	}
	return nil
}

// chunkReader is a BDAT message: the chunks of a BDAT sequence one after
// the other, io.EOF after the last. When a chunk that is not the last is
// used up, it answers it (250) and reads the next command, which must be
// BDAT; another command ends the message (errInterrupted) and is kept for
// the loop. A message that does not end with CRLF gets one.
type chunkReader struct {
	c         *conn
	s         *Session
	size      int64 // of the current chunk
	left      int64 // of it, still to read
	last      bool  // the current chunk is the last
	normalize bool
	pendingCR bool    // a CR ended what was read so far
	tail      [2]byte // the last two bytes given out
	given     int64
	eof       bool
	// When the sequence was interrupted: the line of the other command,
	// or the reply of a BDAT that ends the session.
	pendingLine  string
	pendingReply *hooks.Reply
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.eof {
		return 0, io.EOF
	}
	for r.left == 0 {
		if r.last {
			return r.end(p)
		}
		if err := r.nextChunk(); err != nil {
			return 0, err
		}
	}
	c := r.c
	buf := c.in.bytes()
	if len(buf) == 0 {
		if err := c.more(0); err != nil {
			return 0, err
		}
		buf = c.in.bytes()
	}
	if int64(len(buf)) > r.left {
		buf = buf[:r.left]
	}
	var n int
	if r.normalize {
		n = r.copyNormalized(p, buf)
	} else {
		if len(buf) > len(p) {
			buf = buf[:len(p)]
		}
		if r.bareIn(buf) {
			return 0, errBareNewline
		}
		n = copy(p, buf)
		c.consume(n)
		r.left -= int64(n)
	}
	r.remember(p[:n])
	return n, nil
}

// copyNormalized copies from buf into p with each bare CR and LF turned
// into CRLF, and consumes what it took.
func (r *chunkReader) copyNormalized(p, buf []byte) int {
	n, used := 0, 0
	for used < len(buf) && n+2 <= len(p) {
		b := buf[used]
		switch {
		case r.pendingCR:
			r.pendingCR = false
			p[n], p[n+1] = '\r', '\n'
			n += 2
			if b == '\n' {
				used++
			}
		case b == '\r':
			r.pendingCR = true
			used++
		case b == '\n':
			p[n], p[n+1] = '\r', '\n'
			n += 2
			used++
		default:
			p[n] = b
			n++
			used++
		}
	}
	r.c.consume(used)
	r.left -= int64(used)
	return n
}

// bareIn reports a bare CR or LF in b, a CR at its end waiting for what
// comes next (also in the next chunk).
func (r *chunkReader) bareIn(b []byte) bool {
	for _, x := range b {
		switch {
		case r.pendingCR:
			r.pendingCR = false
			if x != '\n' {
				return true
			}
		case x == '\r':
			r.pendingCR = true
		case x == '\n':
			return true
		}
	}
	return false
}

func (r *chunkReader) remember(out []byte) {
	r.given += int64(len(out))
	switch len(out) {
	case 0:
	case 1:
		r.tail = [2]byte{r.tail[1], out[0]}
	default:
		r.tail = [2]byte{out[len(out)-2], out[len(out)-1]}
	}
}

// end finishes the message after the last chunk: a CR left pending is
// bare (refused, or a line end under normalize), and a last line without
// its CRLF gets one.
func (r *chunkReader) end(p []byte) (int, error) {
	if r.pendingCR && !r.normalize {
		return 0, errBareNewline
	}
	bareCR := r.pendingCR // under normalize, a line end of its own
	r.pendingCR = false
	r.eof = true
	if r.given == 0 && !bareCR || r.tail == [2]byte{'\r', '\n'} && !bareCR || len(p) < 2 {
		return 0, io.EOF
	}
	p[0], p[1] = '\r', '\n'
	return 2, nil
}

// nextChunk answers the chunk just read and reads the next command: a
// BDAT goes on with the message.
func (r *chunkReader) nextChunk() error {
	r.c.reply(r.s.chunkReceived(r.size))
	line, err := r.c.readLine()
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF // the client's end of stream never ends a message
	}
	if err != nil {
		return err
	}
	if verb, _ := command.Split(strings.TrimRight(line, "\r\n")); verb != "BDAT" {
		r.c.log.Info("BDAT sequence ended by another command before BDAT LAST; message dropped", "command", verb)
		r.pendingLine = line
		return errInterrupted
	}
	if rep := r.s.Command(line); rep.Code != 0 {
		r.pendingReply = &rep
		return errInterrupted
	}
	r.size, r.left, r.last = r.s.chunk.size, r.s.chunk.size, r.s.chunk.last
	return nil
}
