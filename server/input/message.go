package input

import (
	"bytes"
	"errors"
	"io"
)

// Source is the connection a message is read from: its buffer, and a way
// to wait for more.
type Source interface {
	// Bytes returns what is buffered and not yet consumed.
	Bytes() []byte
	// More waits until more than have bytes are buffered; the client's
	// end of stream is io.ErrUnexpectedEOF, never the end of a message.
	More(have int) error
	// Consume drops n buffered bytes, counted as message data.
	Consume(n int)
}

// ErrBareNewline is a bare CR or LF in a message read under the reject
// policy.
var ErrBareNewline = errors.New("bare CR or LF in the message")

// Dot is the DATA payload: dot-unstuffed, io.EOF at the line holding
// only ".". Only a CRLF the client sent starts a line where a dot is
// unstuffed and where "." ends the message (as Postfix: only CRLF.CRLF ends
// DATA); under normalize a line that starts after a bare CR or LF keeps
// its dot, and so does a lone "." ended by one, so the message reaches the
// queue as sent and no bare line end can end it.
type Dot struct {
	c         Source
	normalize bool
	lineStart bool // after a CRLF the client sent
	pendingCR bool // a CR ended what was read so far: what follows decides
	done      bool // the final dot was read
	spill     spill
}

// Reset readies d for a new message read from c; normalize chooses the
// normalize policy for bare line ends (else reject: ErrBareNewline).
func (d *Dot) Reset(c Source, normalize bool) {
	*d = Dot{c: c, normalize: normalize, lineStart: true}
}

// Done reports whether the final dot was read.
func (d *Dot) Done() bool { return d.done }

func (d *Dot) Read(p []byte) (int, error) {
	if d.normalize {
		return d.spill.read(p, d.readNormalize)
	}
	return d.readStrict(p)
}

// spill serves a reader that needs room for two bytes (a CRLF it makes
// of a bare line end) to a caller with room for one: it reads two and
// keeps the second for the next call. Without it a one-byte Read (the
// size limit's check of a message exactly at the limit) would read
// nothing for ever.
type spill struct {
	two [2]byte // the read of two; two[1] is kept when ok
	ok  bool
}

func (sp *spill) read(p []byte, read func([]byte) (int, error)) (int, error) {
	switch {
	case len(p) == 0:
		return 0, nil
	case sp.ok:
		p[0], sp.ok = sp.two[1], false
		return 1, nil
	case len(p) >= 2:
		return read(p)
	}
	n, err := read(sp.two[:])
	if n == 2 {
		sp.ok = true
		n, err = 1, nil // an error comes again on the next read
	}
	p[0] = sp.two[0]
	return n, err
}

// readStrict reads under the reject policy: whole lines at a time, each of
// which must end with CRLF.
func (d *Dot) readStrict(p []byte) (int, error) {
	c := d.c
	n := 0
	for n < len(p) && !d.done {
		buf := c.Bytes()
		undecided := d.lineStart && (string(buf) == "." || string(buf) == ".\r")
		if len(buf) == 0 || undecided {
			if n > 0 {
				break
			}
			if err := c.More(len(buf)); err != nil {
				return 0, err
			}
			continue
		}
		if d.lineStart && buf[0] == '.' {
			if len(buf) >= 3 && buf[1] == '\r' && buf[2] == '\n' {
				c.Consume(3)
				d.done = true
				break
			}
			c.Consume(1) // a stuffed dot
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
			return 0, ErrBareNewline
		}
		n += copy(p[n:], chunk)
		c.Consume(len(chunk))
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
func (d *Dot) bareIn(chunk []byte, complete bool) bool {
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
func (d *Dot) readNormalize(p []byte) (int, error) {
	c := d.c
	n := 0
	for n+2 <= len(p) && !d.done { // room for a CRLF
		buf := c.Bytes()
		if len(buf) == 0 || d.lineStart && buf[0] == '.' && (len(buf) == 1 || len(buf) == 2 && buf[1] == '\r') {
			if n > 0 {
				break
			}
			if err := c.More(len(buf)); err != nil {
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
				c.Consume(1)
				d.lineStart = true
			}
		case d.lineStart && buf[0] == '.':
			d.lineStart = false
			switch {
			case buf[1] == '\r' && buf[2] == '\n':
				c.Consume(3)
				d.done = true
			case buf[1] == '\r', buf[1] == '\n':
				// "." ended by a bare line end: kept, never the end.
				p[n] = '.'
				n++
				c.Consume(1)
			default:
				c.Consume(1) // a stuffed dot
			}
		case buf[0] == '\r':
			c.Consume(1)
			d.pendingCR = true
			d.lineStart = false
		case buf[0] == '\n': // bare LF
			c.Consume(1)
			p[n], p[n+1] = '\r', '\n'
			n += 2
			d.lineStart = false
		default:
			run := buf
			if i := bytes.IndexAny(buf, "\r\n"); i >= 0 {
				run = buf[:i]
			}
			k := copy(p[n:len(p)-1], run) // keep a byte of room: a CRLF needs two
			c.Consume(k)
			n += k
			d.lineStart = false
		}
	}
	if n == 0 && d.done {
		return 0, io.EOF
	}
	return n, nil
}

// Drain reads and drops the rest of the message after an early reply.
func (d *Dot) Drain() error {
	_, err := io.Copy(io.Discard, d)
	return err
}

// Chunks is a BDAT message: the chunks of a BDAT sequence one after the
// other, io.EOF after the last. When a chunk that is not the last is used
// up, it calls next with that chunk's size for the next one (the server
// answers the chunk and reads the next BDAT command); next's error ends
// the message. A message
// that does not end with CRLF gets one.
type Chunks struct {
	c         Source
	next      NextChunk
	size      int64 // of the current chunk
	left      int64 // of it, still to read
	last      bool  // the current chunk is the last
	normalize bool
	pendingCR bool    // a CR ended what was read so far
	tail      [2]byte // the last two bytes given out
	given     int64
	added     int64 // bytes given out that the client did not send (a final CRLF)
	err       error // io.EOF after the end, or next's error: the message ended with it
	spill     spill
}

// NextChunk is told the size of the chunk just read and gives the size
// of the next one and whether it is the last; its error ends the message.
type NextChunk func(done int64) (size int64, last bool, err error)

// NewChunks returns the message whose first chunk is size bytes (the last
// one when last) read from c; next, told the size of the chunk just read,
// gives the size of the one after it.
func NewChunks(c Source, size int64, last, normalize bool, next NextChunk) *Chunks {
	r := new(Chunks)
	r.Reset(c, size, last, normalize, next)
	return r
}

// Reset makes r a new message, as NewChunks does, so that a connection
// reuses one Chunks from message to message.
func (r *Chunks) Reset(c Source, size int64, last, normalize bool, next NextChunk) {
	*r = Chunks{c: c, next: next, size: size, left: size, last: last, normalize: normalize}
}

// Left returns how many bytes of the current chunk are still unread from
// the client (what the server skips after an early reply).
func (r *Chunks) Left() int64 { return r.left }

// Added returns how many bytes Read gave out that the client did not send:
// once the message's end is given out, 2 for the CRLF that a message
// without one gets, 1 for the LF after a bare CR at its end (normalize),
// else 0.
// A size limit counts the client's bytes.
func (r *Chunks) Added() int64 { return r.added }

// Last reports whether the current chunk is the last.
func (r *Chunks) Last() bool { return r.last }

func (r *Chunks) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.normalize || r.spill.ok {
		return r.spill.read(p, r.read)
	}
	return r.read(p) // a plain copy: one byte is room enough
}

func (r *Chunks) read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err // next is asked once: it reads the client's next command
	}
	for r.left == 0 {
		if r.last {
			return r.end(p)
		}
		if err := r.nextChunk(); err != nil {
			r.err = err
			return 0, err
		}
	}
	c := r.c
	buf := c.Bytes()
	if len(buf) == 0 {
		if err := c.More(0); err != nil {
			return 0, err
		}
		buf = c.Bytes()
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
			return 0, ErrBareNewline
		}
		n = copy(p, buf)
		c.Consume(n)
		r.left -= int64(n)
	}
	r.remember(p[:n])
	return n, nil
}

// copyNormalized copies from buf into p with each bare CR and LF turned
// into CRLF, and consumes what it took.
func (r *Chunks) copyNormalized(p, buf []byte) int {
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
	r.c.Consume(used)
	r.left -= int64(used)
	return n
}

// bareIn reports a bare CR or LF in b, a CR at its end waiting for what
// comes next (also in the next chunk).
func (r *Chunks) bareIn(b []byte) bool {
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

func (r *Chunks) remember(out []byte) {
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
func (r *Chunks) end(p []byte) (int, error) {
	if r.pendingCR && !r.normalize {
		return 0, ErrBareNewline
	}
	bareCR := r.pendingCR // under normalize, a line end of its own
	r.pendingCR = false
	r.err = io.EOF
	if r.given == 0 && !bareCR || r.tail == [2]byte{'\r', '\n'} && !bareCR {
		return 0, io.EOF
	}
	r.added = 2
	if bareCR {
		r.added = 1 // the CR is the client's, only the LF is added
	}
	if len(p) == 1 { // the CR now, the LF on the next Read
		p[0], r.spill = '\r', spill{two: [2]byte{'\r', '\n'}, ok: true}
		return 1, nil
	}
	p[0], p[1] = '\r', '\n'
	return 2, nil
}

// nextChunk moves to the next chunk.
func (r *Chunks) nextChunk() error {
	size, last, err := r.next(r.size)
	if err != nil {
		return err
	}
	r.size, r.left, r.last = size, size, last
	return nil
}
