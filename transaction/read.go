package transaction

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// HeaderLimits bound the header section ReadHeader reads, and the memory
// it keeps of it. A zero field means its default.
//
// Past MaxBytes a message is refused; past the index (IndexBytes,
// IndexFields) it is not. The index is there to bound memory, not to judge
// mail: RFC 5322 sets no limit on a header, and headers over 100 KiB or
// 1000 fields, though rare, are legitimate (a To of thousands of
// addresses, a long References or ARC chain) and were accepted before.
// Postfix keeps the first header_size_limit bytes of a header field and
// discards the rest; Sluice keeps the rest instead, unparsed and byte for
// byte, so that what it accepts is what it delivers. MaxBytes stays the
// refusal for headers no one should relay (552 5.3.4, as Sendmail's
// MaxHeadersLength and Exchange Online's header limit refuse).
type HeaderLimits struct {
	// MaxBytes caps the header section as received: past it ReadHeader
	// stops with ErrHeaderTooLong (the server answers 552 5.3.4). A header
	// of exactly MaxBytes passes.
	MaxBytes int64
	// IndexBytes caps the text of the fields parsed into Header (what
	// plugins see through Get, Values, Count and Fields), as Postfix's
	// header_size_limit caps what its cleanup keeps in memory.
	IndexBytes int
	// IndexFields caps the number of fields parsed into Header.
	IndexFields int
}

// The defaults of HeaderLimits.
const (
	DefaultMaxHeaderBytes    = 1 << 20
	DefaultHeaderIndexBytes  = 100 << 10
	DefaultHeaderIndexFields = 1000
)

func (l HeaderLimits) withDefaults() HeaderLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxHeaderBytes
	}
	if l.IndexBytes <= 0 {
		l.IndexBytes = DefaultHeaderIndexBytes
	}
	// Field records hold 32-bit offsets; nobody needs a gigabyte of
	// parsed header.
	l.IndexBytes = min(l.IndexBytes, 1<<30)
	if l.IndexFields <= 0 {
		l.IndexFields = DefaultHeaderIndexFields
	}
	return l
}

// ErrHeaderTooLong is returned by ReadHeader when the header section is
// longer than HeaderLimits.MaxBytes.
var ErrHeaderTooLong = errors.New("message header section too long")

// ErrSpool wraps the errors of writing a spool (a full disk, a spool
// directory gone): the message could not be kept, through no fault of the
// client's.
var ErrSpool = errors.New("cannot spool the message")

// maxNameScan is how far into a line the ':' of a field may be (RFC 5322
// 2.1.1's line limit of 998 bytes): a line with no ':' in its first 998
// bytes is no field. It bounds what a line is kept in memory for until its
// kind is known.
const maxNameScan = 998

// ReadHeader reads the header section of a message from r, up to and
// including the empty line that ends it, into t.Header (which it empties
// first). The body stays unread in r, but for one case: a line that is
// neither a field nor a continuation ends the header without an empty
// line; it is written to t.Body as the start of the body, and the header
// gets the empty line the message lacked, with that line's ending (so an
// indented first line cannot become part of a field added later, and the
// next reader sees the header end where the plugins saw it).
//
// The first l.IndexFields fields, as long as their text fits in
// l.IndexBytes, are parsed into t.Header. The header text past that is not
// parsed, lost or refused: it goes verbatim to a spool of its own (in
// memory up to 16 KiB, then an unlinked file in t.Body's directory) and is
// written back after the parsed fields (Header.Unparsed). A field that
// would straddle the limit goes there whole. So a header holds at most
// IndexBytes of text, 12 bytes per parsed field and 16 KiB of unparsed
// text in memory, whatever the client sends within l.MaxBytes.
//
// Past l.MaxBytes ReadHeader stops with ErrHeaderTooLong. A failure to
// write a spool is returned wrapped in ErrSpool, a read error as it is.
func (t *Transaction) ReadHeader(r *bufio.Reader, l HeaderLimits) error {
	if t.Body == nil {
		t.Body = NewSpool("", DefaultSpoolMemory)
	}
	t.Header.reset()
	p := headerReader{t: t, h: &t.Header, l: l.withDefaults()}
	err := p.read(r)
	if ferr := p.flush(); err == nil {
		err = ferr
	}
	t.Header.trim()
	return err
}

type lineKind uint8

const (
	undecided lineKind = iota
	fieldLine          // starts a field
	foldLine           // continues a field (starts with white space)
	blankLine          // the empty line that ends the header
	bodyLine           // anything else: the header has ended, the body begun
)

// classify tells the kind of a line from its first bytes b; complete
// means b is the whole line. inField is whether a field has started. For
// a field it also returns the length of the name (RFC 5322: printable
// ASCII but ':', then the obsolete white space before the ':' that readers
// still accept).
func classify(b []byte, complete, inField bool) (lineKind, int) {
	if len(b) == 0 {
		return undecided, 0
	}
	switch b[0] {
	case ' ', '\t':
		if inField {
			return foldLine, 0
		}
		return bodyLine, 0
	case '\n':
		return blankLine, 0
	case '\r':
		if len(b) > 1 && b[1] == '\n' {
			return blankLine, 0
		}
		if len(b) == 1 && !complete {
			return undecided, 0
		}
		return bodyLine, 0
	}
	name := 0
	for i, c := range b {
		if i >= maxNameScan {
			return bodyLine, 0
		}
		switch {
		case c == ':':
			if name == 0 {
				return bodyLine, 0
			}
			return fieldLine, name
		case c == ' ' || c == '\t':
			// White space between the name and its ':'.
		case c > ' ' && c < 127:
			if name != i {
				return bodyLine, 0 // white space inside the name
			}
			name++
		default:
			return bodyLine, 0
		}
	}
	if complete {
		return bodyLine, 0
	}
	return undecided, 0
}

type headerReader struct {
	t *Transaction
	// sizeHint and fieldsHint size the index when the whole header was
	// in the reader's buffer at the start (0: unknown).
	sizeHint, fieldsHint int
	h                    *Header
	l                    HeaderLimits
	total                int64 // header bytes read, for MaxBytes
	indexed              int   // bytes of the parsed fields, for IndexBytes
	inField              bool  // a field has started, parsed or not
	past                 bool  // past the index: header text goes to h.rest
	// start keeps the first bytes of a line while its kind is unknown
	// (at most maxNameScan and one read's worth).
	start []byte
	// pend gathers unparsed text for h.rest, so that a header of tiny
	// lines is not a write (a system call, once the spool is a file) per
	// line.
	pend []byte
}

// pendSize is the most unparsed text gathered before it is written.
const pendSize = 16 << 10

func isReadError(err error) bool {
	return err != nil && err != io.EOF && err != bufio.ErrBufferFull
}

func (p *headerReader) read(r *bufio.Reader) error {
	// Have the reader fill its buffer, for headerSize. Its error is the
	// one the first ReadSlice below would return (Peek hands it over).
	if _, err := r.Peek(1); err == io.EOF {
		return nil // an empty message
	} else if isReadError(err) {
		return err
	}
	p.sizeHint, p.fieldsHint = headerSize(r)
	for {
		// Read until the line's kind is known.
		var data []byte
		var err error
		var kind lineKind
		var name int
		p.start = p.start[:0]
		for {
			var chunk []byte
			chunk, err = r.ReadSlice('\n')
			if isReadError(err) {
				return err
			}
			data = chunk
			if len(p.start) > 0 {
				p.start = append(p.start, chunk...)
				data = p.start
			}
			kind, name = classify(data, err != bufio.ErrBufferFull, p.inField)
			if kind != undecided || err != bufio.ErrBufferFull {
				break
			}
			if len(p.start) == 0 {
				p.start = append(p.start, chunk...)
			}
		}
		if len(data) == 0 {
			return nil // the message ended at the end of a line
		}
		more := err == bufio.ErrBufferFull
		switch kind {
		case blankLine:
			if err := p.count(len(data)); err != nil {
				return err
			}
			p.h.sep = "\n"
			if data[0] == '\r' {
				p.h.sep = "\r\n"
			}
			return nil
		case bodyLine:
			return p.body(r, data, more)
		case fieldLine:
			p.inField = true
			if err := p.text(data, name); err != nil {
				return err
			}
		default: // foldLine
			if err := p.text(data, -1); err != nil {
				return err
			}
		}
		// The rest of a long line.
		for more {
			var chunk []byte
			chunk, err = r.ReadSlice('\n')
			if isReadError(err) {
				return err
			}
			more = err == bufio.ErrBufferFull
			if err := p.text(chunk, -1); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil // the message ended inside its header
		}
	}
}

// headerRoom is the room left in a header's buffer sized to a header
// read whole, for the fields added to it: a Received field is about 250
// bytes.
const headerRoom = 512

// headerSize returns the size of the header and its number of fields
// (lines that do not start with white space) when the whole header,
// blank line included, is in r's buffer already; else 0, 0.
func headerSize(r *bufio.Reader) (size, fields int) {
	buf, _ := r.Peek(r.Buffered())
	for off := 0; off < len(buf); {
		i := bytes.IndexByte(buf[off:], '\n')
		if i < 0 {
			return 0, 0
		}
		line := buf[off : off+i+1]
		off += i + 1
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			return off, fields
		}
		if line[0] != ' ' && line[0] != '\t' {
			fields++
		}
	}
	return 0, 0
}

// count adds n bytes to the header's size.
func (p *headerReader) count(n int) error {
	p.total += int64(n)
	if p.total > p.l.MaxBytes {
		return ErrHeaderTooLong
	}
	return nil
}

// text takes header text: the start of a field whose name is name bytes
// long, or (name < 0) more of the current field.
func (p *headerReader) text(b []byte, name int) error {
	if err := p.count(len(b)); err != nil {
		return err
	}
	h := p.h
	if !p.past && name >= 0 && (len(h.fields) >= p.l.IndexFields || p.indexed+len(b) > p.l.IndexBytes) {
		p.past = true
	}
	if !p.past && name < 0 && p.indexed+len(b) > p.l.IndexBytes {
		// The field outgrew the index: it goes past it whole, and all
		// that follows it too.
		last := h.fields[len(h.fields)-1]
		h.fields = h.fields[:len(h.fields)-1]
		p.indexed -= int(last.n)
		p.past = true
		if err := p.unparsed(h.buf[last.off:]); err != nil {
			return err
		}
		h.buf = h.buf[:last.off]
	}
	if p.past {
		return p.unparsed(b)
	}
	if name >= 0 {
		if h.fields == nil {
			// Room for the header at once, rather than a dozen
			// reallocations on the way: its size when it was all
			// buffered, with room for the fields the server and plugins
			// add (Received); else for a common header.
			size, n := 4<<10, 32
			if p.sizeHint > 0 {
				size, n = p.sizeHint+headerRoom, min(p.fieldsHint, p.l.IndexFields)+4
			}
			h.fields = make([]field, 0, n)
			h.buf = make([]byte, 0, min(size, p.l.IndexBytes))
		}
		h.fields = append(h.fields, field{off: uint32(len(h.buf)), name: uint32(name)})
	}
	if need := len(h.buf) + len(b); need > cap(h.buf) {
		// Double, rather than append's quarter steps near the limit, and
		// never past what the index can hold.
		buf := make([]byte, len(h.buf), max(need, min(2*cap(h.buf), p.l.IndexBytes)))
		copy(buf, h.buf)
		h.buf = buf
	}
	h.buf = append(h.buf, b...)
	h.fields[len(h.fields)-1].n += uint32(len(b))
	p.indexed += len(b)
	return nil
}

// unparsed writes header text past the index to h.rest.
func (p *headerReader) unparsed(b []byte) error {
	if p.h.rest == nil {
		p.h.rest = NewSpool(p.t.Body.dir, min(p.t.Body.threshold, pendSize))
		p.h.rest.budget = p.t.Body.budget
	}
	if len(p.pend)+len(b) > pendSize {
		if err := p.flush(); err != nil {
			return err
		}
		if len(b) >= pendSize {
			return p.write(b)
		}
	}
	if p.pend == nil {
		p.pend = make([]byte, 0, pendSize)
	}
	p.pend = append(p.pend, b...)
	return nil
}

// flush writes the gathered unparsed text to h.rest.
func (p *headerReader) flush() error {
	if len(p.pend) == 0 {
		return nil
	}
	err := p.write(p.pend)
	p.pend = p.pend[:0]
	return err
}

func (p *headerReader) write(b []byte) error {
	if _, err := p.h.rest.Write(b); err != nil {
		return fmt.Errorf("%w: %w", ErrSpool, err)
	}
	return nil
}

// body writes the line that ended the header without an empty line (data,
// then the rest of it from r when more) to t.Body, and gives the header an
// empty line with that line's ending.
func (p *headerReader) body(r *bufio.Reader, data []byte, more bool) error {
	var last [2]byte // the line's last two bytes
	for {
		if _, err := p.t.Body.Write(data); err != nil {
			return fmt.Errorf("%w: %w", ErrSpool, err)
		}
		if len(data) >= 2 {
			last = [2]byte{data[len(data)-2], data[len(data)-1]}
		} else if len(data) == 1 {
			last = [2]byte{last[1], data[0]}
		}
		if !more {
			break
		}
		var err error
		data, err = r.ReadSlice('\n')
		if isReadError(err) {
			return err
		}
		more = err == bufio.ErrBufferFull
	}
	p.h.sep = "\r\n"
	if last[1] == '\n' && last[0] != '\r' {
		p.h.sep = "\n"
	}
	return nil
}
