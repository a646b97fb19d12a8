package queue

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/sluice-mta/sluice/transaction"
)

// This file decides what a message needs from a downstream server
// (SMTPUTF8, 8BITMIME) and converts an 8-bit message to 7 bit for a
// downstream without 8BITMIME, as RFC 6152 section 3 (RFC 1652) asks of a
// relay and as Postfix does (smtputf8_autodetect_classes, the 8BITMIME
// downgrade in smtp_proto.c).
//
// The MIME walk is our own, line by line: go-message's readers do not fit
// a relay that must keep every byte it does not convert. Its
// textproto.ReadHeader turns LF line endings into CRLF and fails on a
// malformed line; its MultipartReader drops the preamble and the epilogue,
// forgets the transport padding after a boundary and stops at the first
// irregular line. The walk here only finds the lines where a header, a
// delimiter or a body starts and copies everything else as it came; media
// types are parsed with mime.ParseMediaType, which is what go-message uses
// too (its ContentType drops the type when a parameter is malformed).

// ErrCannotConvert is in the chain of the error Write7Bit returns when the
// message cannot be made 7 bit: a header (the message's, a part's or an
// attached message's) holds raw 8-bit bytes, which only SMTPUTF8 can carry
// (RFC 6532), or the MIME structure is past what the converter walks
// (nesting, header size). The error is an *Error, permanent, 554 5.6.9 for
// an 8-bit header (RFC 6531's "UTF-8 header message cannot be transferred")
// and 554 5.6.3 ("conversion required but not supported", RFC 3463) for
// the rest, which a forwarder can pass to the client as it is or, by
// checking errors.Is(err, ErrCannotConvert), turn into a deferral.
var ErrCannotConvert = errors.New("the message cannot be converted to 7 bit")

// Limits of the MIME walk: past them Write7Bit returns ErrCannotConvert
// rather than guess. Both are far above what mail user agents produce.
const (
	// maxMIMEDepth is how deep multiparts and attached messages may nest.
	maxMIMEDepth = 50
	// maxPartHeader caps one header section held while it is read, the
	// cap the server puts on a message's header.
	maxPartHeader = transaction.DefaultMaxHeaderBytes
	// convertBuffer is the read buffer: lines longer than it are handled
	// in pieces, so memory stays bounded whatever the message holds.
	convertBuffer = 64 << 10
	// qpLineMax is the longest encoded line, soft break "=" included
	// (RFC 2045 section 6.7 rule 5).
	qpLineMax = 76
)

// NeedsUTF8 reports whether tx needs SMTPUTF8 downstream: a non-ASCII
// sender or recipient, or a non-ASCII byte in the header (RFC 6532
// headers). The body alone never needs it (it is 8BITMIME's business), nor
// does the SMTPUTF8 parameter the client gave: like Postfix's
// smtputf8_autodetect, what counts is what the message holds. Cheap: the
// header is in memory (but for a part past the header index, read from its
// spool); the body is not read. A failure to read that part reports false:
// the relay that follows reads it again and fails with the same error.
func NeedsUTF8(tx *transaction.Transaction) bool {
	if !isASCII(tx.Sender) || !allASCII(tx.Recipients) {
		return true
	}
	var s eightBitScan
	tx.Header.WriteTo(&s)
	return s.found
}

// Has8Bit reports whether the message (header or body) holds a byte >=
// 0x80, reading the body spool once with a fixed buffer. A message without
// one can go to any downstream as it is.
func Has8Bit(tx *transaction.Transaction) (bool, error) {
	var s eightBitScan
	if _, err := tx.Header.WriteTo(&s); s.found {
		return true, nil
	} else if err != nil {
		return false, fmt.Errorf("read the message header: %w", err)
	}
	if tx.Body == nil {
		return false, nil
	}
	if _, err := io.CopyBuffer(&s, tx.Body.Reader(), make([]byte, 32<<10)); s.found {
		return true, nil
	} else if err != nil {
		return false, fmt.Errorf("read the message body: %w", err)
	}
	return false, nil
}

// eightBitScan is a writer that stops its writer (with errFound) at the
// first byte >= 0x80.
type eightBitScan struct{ found bool }

var errFound = errors.New("8-bit byte found")

func (s *eightBitScan) Write(p []byte) (int, error) {
	if has8Bit(p) {
		s.found = true
		return 0, errFound
	}
	return len(p), nil
}

func has8Bit(p []byte) bool {
	for _, b := range p {
		if b >= 0x80 {
			return true
		}
	}
	return false
}

// Write7Bit writes tx's message to w converted to 7 bit, as RFC 6152
// section 3 asks of a relay whose downstream lacks 8BITMIME:
//
//   - Every leaf part whose content holds 8-bit bytes and whose
//     Content-Transfer-Encoding is 8bit, binary, 7bit or absent is
//     re-encoded quoted-printable and its Content-Transfer-Encoding field
//     says so (the first such field is replaced in place, others removed;
//     when there was none, one is added at the end of the part's header).
//     Quoted-printable whatever the type, as Postfix does: 8bit content is
//     line-oriented by definition (RFC 2045 section 2.8), so every line
//     break stays a hard line break (with its own ending, CRLF or LF) and
//     decoding gives back the exact bytes; mostly-ASCII text stays
//     readable. The price is size: a byte >= 0x80 takes three.
//   - A leaf that needs it but has no Content-Type gets "text/plain;
//     charset=unknown-8bit" (RFC 1428, sendmail's DefaultCharSet), and a
//     message without MIME-Version gets "MIME-Version: 1.0": without them
//     the encoded content would claim to be US-ASCII, or not MIME at all.
//     An existing Content-Type, charset included, is never touched.
//   - A quoted-printable part holding raw 8-bit bytes (malformed) gets
//     them escaped as =XX, which decodes to the same bytes. A base64 or
//     other encoded part holding them is copied as it is: there is no
//     faithful fix.
//   - Multipart structure, delimiter lines, preambles and epilogues, every
//     7-bit part and every header field but the changed ones are copied
//     byte for byte. A multipart or message/rfc822 entity labelled 8bit or
//     binary is relabelled 7bit, which its content now is. Should a
//     preamble or an epilogue (text no reader shows, RFC 2046 section
//     5.1.1) hold 8-bit bytes, they become "?".
//   - message/rfc822 parts are walked like the message itself. Other
//     message/* types (message/global included: RFC 6532 section 3.7 lets
//     it be encoded) are leaves.
//
// A message without an 8-bit byte is written as it is: nothing is
// relabelled or added. A header with raw 8-bit bytes cannot be converted:
// that takes SMTPUTF8.
// Write7Bit then returns an *Error holding ErrCannotConvert (see there).
// The message is read twice: a first pass finds what to convert and every
// reason to refuse, so nothing is written to w unless the whole message
// can be converted; the second pass writes. Memory is bounded (a 64 KiB
// read buffer, one header at a time, one bit per leaf part), whatever the
// message's size.
func Write7Bit(w io.Writer, tx *transaction.Transaction) (int64, error) {
	scan := newWalker(tx.Message(), nil, nil)
	if err := scan.run(); err != nil {
		return 0, err
	}
	if !scan.found {
		return tx.WriteTo(w)
	}
	return convert7Bit(w, tx, scan.leaves)
}

// convert7Bit is Write7Bit's second pass: it writes tx's message with the
// leaves a scan found 8-bit (leaves) converted, and every composite entity
// labelled 8bit or binary relabelled.
func convert7Bit(w io.Writer, tx *transaction.Transaction, leaves []uint64) (int64, error) {
	cw := &countWriter{w: w}
	out := bufio.NewWriterSize(cw, 32<<10)
	conv := newWalker(tx.Message(), out, leaves)
	err := conv.run()
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// cannotConvert is Write7Bit's refusal.
func cannotConvert(enhanced [3]int, msg string, format string, args ...any) error {
	return permanent(enhanced, msg, fmt.Errorf("%w: %s", ErrCannotConvert, fmt.Sprintf(format, args...)))
}

// walker walks a message's MIME structure line by line. Without out it
// scans (filling leaves and stopping at the first reason to refuse); with
// out it writes the converted message, reading leaves filled by a scan of
// the same message.
type walker struct {
	in  *bufio.Reader
	out *bufio.Writer // nil when scanning

	// leaves holds, per leaf part in walk order, whether it holds an
	// 8-bit byte; leaf counts the leaves met so far.
	leaves []uint64
	leaf   int
	// found says the scan met an 8-bit byte in content (a leaf, a
	// preamble or an epilogue): there is something to convert.
	found bool

	// bounds are the boundaries of the open multiparts, outermost first.
	bounds [][]byte

	// line is the current line, or a piece of it when it is longer than
	// the buffer; start says it begins a line; eof that the input ended.
	line  []byte
	start bool
	eof   bool
}

func newWalker(in io.Reader, out *bufio.Writer, leaves []uint64) *walker {
	return &walker{in: bufio.NewReaderSize(in, convertBuffer), out: out, leaves: leaves, start: true}
}

func (w *walker) scanning() bool { return w.out == nil }

func (w *walker) run() error {
	if err := w.advance(); err != nil {
		return err
	}
	return w.entity(0, "text/plain", true)
}

// advance moves to the next line or piece of a line.
func (w *walker) advance() error {
	if n := len(w.line); n > 0 {
		w.start = w.line[n-1] == '\n'
	}
	line, err := w.in.ReadSlice('\n')
	w.line = line
	switch err {
	case nil, bufio.ErrBufferFull:
	case io.EOF:
		w.eof = len(line) == 0
	default:
		return fmt.Errorf("read the message: %w", err)
	}
	return nil
}

// write copies p to the output when writing.
func (w *walker) write(p []byte) {
	if w.out != nil {
		w.out.Write(p) // a write error stays in the bufio.Writer for Flush
	}
}

func (w *walker) writeString(s string) {
	if w.out != nil {
		w.out.WriteString(s)
	}
}

// delimiter reports whether the current line is a delimiter line of an
// open multipart: the index of its boundary in bounds (innermost first
// tried), or -1, and whether it is a close delimiter.
func (w *walker) delimiter() (int, bool) {
	if !w.start || w.eof || !bytes.HasPrefix(w.line, []byte("--")) {
		return -1, false
	}
	rest := w.line[2:]
	for i := len(w.bounds) - 1; i >= 0; i-- {
		r, ok := bytes.CutPrefix(rest, w.bounds[i])
		if !ok {
			continue
		}
		r, closing := bytes.CutPrefix(r, []byte("--"))
		// Transport padding: white space before the line ending.
		r = bytes.TrimLeft(r, " \t")
		if len(r) == 0 || string(r) == "\n" || string(r) == "\r\n" {
			return i, closing
		}
	}
	return -1, false
}

// atEnd reports whether the current entity's content has ended: the
// input did, or a delimiter of an open multipart starts here.
func (w *walker) atEnd() bool {
	if w.eof {
		return true
	}
	i, _ := w.delimiter()
	return i >= 0
}

// header is one entity's header section as received.
type header struct {
	raw    []byte
	fields [][2]int // each field's [start, end) in raw, continuation lines included
	sep    []byte   // the empty line that ended it, or nil
}

// readHeader reads the header section at the current line: field lines
// up to the empty line (kept in sep), a line that is no field (which
// starts the body: the header ends without an empty line), a delimiter or
// the end of the input.
func (w *walker) readHeader() (*header, error) {
	h := &header{}
	inField := false
	for !w.atEnd() {
		line := w.line
		if w.start {
			switch {
			case string(line) == "\r\n" || string(line) == "\n":
				h.sep = bytes.Clone(line)
				return h, w.advance()
			case inField && (line[0] == ' ' || line[0] == '\t'):
				// continuation line
			case isFieldLine(line):
				h.fields = append(h.fields, [2]int{len(h.raw), len(h.raw)})
				inField = true
			default:
				return h, nil
			}
		}
		if len(h.raw)+len(line) > maxPartHeader {
			return nil, cannotConvert([3]int{5, 6, 3}, "Message has a MIME header section too long to convert to 7 bit for the downstream server",
				"a header section is longer than %d bytes", maxPartHeader)
		}
		h.raw = append(h.raw, line...)
		h.fields[len(h.fields)-1][1] = len(h.raw)
		if err := w.advance(); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// isFieldLine reports whether line starts a header field: a name of
// visible characters (bytes >= 0x80 allowed, so that a raw UTF-8 name is
// seen as the 8-bit header it is), optional white space, a colon.
func isFieldLine(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c == 127 {
			return false
		}
	}
	return true
}

func (h *header) name(i int) []byte {
	f := h.raw[h.fields[i][0]:h.fields[i][1]]
	n, _, _ := bytes.Cut(f, []byte(":"))
	return bytes.TrimRight(n, " \t")
}

// get returns the unfolded, trimmed value of the first field named name,
// and whether there is one.
func (h *header) get(name string) (string, bool) {
	for i, f := range h.fields {
		if !strings.EqualFold(string(h.name(i)), name) {
			continue
		}
		_, v, _ := bytes.Cut(h.raw[f[0]:f[1]], []byte(":"))
		v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
		v = bytes.ReplaceAll(v, []byte("\n"), nil)
		return string(bytes.TrimSpace(v)), true
	}
	return "", false
}

// lineEnding returns the line ending the header uses: its first line's,
// or CRLF when it has none.
func (h *header) lineEnding() string {
	line := h.raw
	if len(line) == 0 {
		line = h.sep
	}
	i := bytes.IndexByte(line, '\n')
	if i == 0 || i > 0 && line[i-1] != '\r' {
		return "\n"
	}
	return "\r\n"
}

// entity walks one entity (the message, a part, an attached message) from
// its header to the end of its content. defaultType is the type it has
// without Content-Type; message says it is a message (top level or
// message/rfc822), which MIME-Version belongs to.
func (w *walker) entity(depth int, defaultType string, message bool) error {
	if depth > maxMIMEDepth {
		return cannotConvert([3]int{5, 6, 3}, "Message nests MIME parts too deep to convert to 7 bit for the downstream server",
			"MIME parts nest deeper than %d levels", maxMIMEDepth)
	}
	h, err := w.readHeader()
	if err != nil {
		return err
	}
	if has8Bit(h.raw) {
		return cannotConvert([3]int{5, 6, 9}, "Message has non-ASCII header fields, which cannot be converted to 7 bit for a downstream server without 8BITMIME",
			"raw 8-bit bytes in a header section (RFC 6532)")
	}
	typ, params := defaultType, map[string]string(nil)
	if v, ok := h.get("Content-Type"); ok {
		// A media type with a malformed parameter still counts (Go
		// returns it with ErrInvalidMediaParameter); one without a valid
		// type counts as the default, as RFC 2045 section 5.2 says.
		if t, p, err := mime.ParseMediaType(v); t != "" && (err == nil || errors.Is(err, mime.ErrInvalidMediaParameter)) {
			typ, params = t, p
		}
	}
	cte, _ := h.get("Content-Transfer-Encoding")
	cte = strings.ToLower(cte)
	identity := cte == "" || cte == "7bit" || cte == "8bit" || cte == "binary"
	switch {
	case identity && strings.HasPrefix(typ, "multipart/") && params["boundary"] != "":
		w.writeHeader(h, relabel(cte), false, false)
		child := "text/plain"
		if typ == "multipart/digest" {
			child = "message/rfc822"
		}
		return w.multipart(depth, []byte(params["boundary"]), child)
	case identity && typ == "message/rfc822":
		w.writeHeader(h, relabel(cte), false, false)
		return w.entity(depth+1, "text/plain", true)
	}
	return w.leafPart(h, cte, message)
}

// relabel returns the Content-Transfer-Encoding a composite entity gets
// once its content is 7 bit: "7bit" for 8bit and binary, "" (unchanged)
// otherwise.
func relabel(cte string) string {
	if cte == "8bit" || cte == "binary" {
		return "7bit"
	}
	return ""
}

// writeHeader writes h, with its Content-Transfer-Encoding set to cte
// unless cte is "", and with the fields a converted leaf needs added.
func (w *walker) writeHeader(h *header, cte string, addType, addVersion bool) {
	if w.scanning() {
		return
	}
	nl := h.lineEnding()
	done := false
	for i, f := range h.fields {
		if cte != "" && strings.EqualFold(string(h.name(i)), "Content-Transfer-Encoding") {
			if !done {
				w.writeString("Content-Transfer-Encoding: " + cte + nl)
				done = true
			}
			continue
		}
		w.write(h.raw[f[0]:f[1]])
	}
	if len(h.fields) > 0 && !bytes.HasSuffix(h.raw, []byte("\n")) {
		// The input ended inside the last field: end it before adding.
		if addVersion || addType || cte != "" && !done {
			w.writeString(nl)
		}
	}
	if addVersion {
		w.writeString("MIME-Version: 1.0" + nl)
	}
	if addType {
		w.writeString("Content-Type: text/plain; charset=unknown-8bit" + nl)
	}
	if cte != "" && !done {
		w.writeString("Content-Transfer-Encoding: " + cte + nl)
	}
	w.write(h.sep)
}

// multipart walks a multipart body: preamble, parts, epilogue.
func (w *walker) multipart(depth int, boundary []byte, childType string) error {
	w.bounds = append(w.bounds, boundary)
	own := len(w.bounds) - 1
	defer func() { w.bounds = w.bounds[:own] }()
	closed := false
	for !w.eof {
		i, closing := w.delimiter()
		switch {
		case i >= 0 && i < own:
			// An enclosing multipart's delimiter: this one ends here
			// (malformed: without its close delimiter).
			return nil
		case i == own && !closed:
			w.write(w.line)
			if err := w.advance(); err != nil {
				return err
			}
			if closing {
				closed = true
				continue
			}
			if err := w.entity(depth+1, childType, false); err != nil {
				return err
			}
			continue
		}
		// Preamble or epilogue.
		w.writeSanitized(w.line)
		if err := w.advance(); err != nil {
			return err
		}
	}
	return nil
}

// writeSanitized writes p with every byte >= 0x80 as "?".
func (w *walker) writeSanitized(p []byte) {
	if w.scanning() {
		w.found = w.found || has8Bit(p)
		return
	}
	if !has8Bit(p) {
		w.write(p)
		return
	}
	for _, b := range p {
		if b >= 0x80 {
			b = '?'
		}
		w.out.WriteByte(b)
	}
}

// leafPart walks a leaf entity's content: when scanning, it notes whether
// the content holds an 8-bit byte; when writing, it converts the content
// that does and copies the rest.
func (w *walker) leafPart(h *header, cte string, message bool) error {
	n := w.leaf
	w.leaf++
	if w.scanning() {
		found := false
		for !w.atEnd() {
			found = found || has8Bit(w.line)
			if err := w.advance(); err != nil {
				return err
			}
		}
		if found {
			w.found = true
			for len(w.leaves) <= n/64 {
				w.leaves = append(w.leaves, 0)
			}
			w.leaves[n/64] |= 1 << (n % 64)
		}
		return nil
	}
	eightBit := n/64 < len(w.leaves) && w.leaves[n/64]&(1<<(n%64)) != 0
	switch {
	case !eightBit || cte != "" && cte != "7bit" && cte != "8bit" && cte != "binary" && cte != "quoted-printable":
		w.writeHeader(h, "", false, false)
		return w.copyContent(w.write)
	case cte == "quoted-printable":
		w.writeHeader(h, "", false, false)
		return w.copyContent(w.writeEscaped)
	}
	_, hasType := h.get("Content-Type")
	_, hasVersion := h.get("MIME-Version")
	w.writeHeader(h, "quoted-printable", !hasType, message && !hasVersion)
	q := qpEncoder{w: w.out, nl: h.lineEnding()}
	if err := w.copyContent(q.write); err != nil {
		return err
	}
	q.flush()
	return nil
}

// copyContent passes every line of the current entity's content to emit.
func (w *walker) copyContent(emit func([]byte)) error {
	for !w.atEnd() {
		emit(w.line)
		if err := w.advance(); err != nil {
			return err
		}
	}
	return nil
}

// writeEscaped writes quoted-printable text with its raw 8-bit bytes
// escaped, which a decoder turns back into the same bytes.
func (w *walker) writeEscaped(p []byte) {
	if !has8Bit(p) {
		w.write(p)
		return
	}
	for _, b := range p {
		if b >= 0x80 {
			writeHex(w.out, b)
		} else {
			w.out.WriteByte(b)
		}
	}
}

// qpEncoder encodes line-oriented content quoted-printable (RFC 2045
// section 6.7), fed one line or piece of a line at a time. Every line
// break of the input stays a hard line break with its own ending (CRLF or
// LF), so decoding gives back the exact bytes; a CR that ends no line is
// encoded. mime/quotedprintable's Writer is not used because it writes
// every line break as CRLF and takes a bare CR for a line break: the bytes
// would not come back.
//
// Two more rules keep the output safe inside a multipart: no encoded line
// starts with "-" (it is written =2D), so cutting a long line can never
// make a delimiter; and white space before a line break is encoded, since
// decoders drop it.
type qpEncoder struct {
	w   *bufio.Writer
	nl  string // the ending of soft line breaks: the last hard one's
	col int    // characters on the current output line
	ws  byte   // a space or tab not yet written, 0 if none
}

const hexDigits = "0123456789ABCDEF"

// writeHex writes b as =XX, byte by byte: a slice literal handed to
// bufio.Writer.Write escapes to the heap, one allocation per byte.
func writeHex(w *bufio.Writer, b byte) {
	w.WriteByte('=')
	w.WriteByte(hexDigits[b>>4])
	w.WriteByte(hexDigits[b&15])
}

func (q *qpEncoder) write(p []byte) {
	content, ending := p, ""
	if bytes.HasSuffix(p, []byte("\r\n")) {
		content, ending = p[:len(p)-2], "\r\n"
	} else if bytes.HasSuffix(p, []byte("\n")) {
		content, ending = p[:len(p)-1], "\n"
	}
	for _, b := range content {
		if q.ws != 0 {
			q.emit(q.ws, false)
			q.ws = 0
		}
		if b == ' ' || b == '\t' {
			q.ws = b
			continue
		}
		q.emit(b, b == '=' || b < ' ' || b > '~')
	}
	if ending != "" {
		q.flush()
		q.w.WriteString(ending)
		q.nl, q.col = ending, 0
	}
}

// emit writes b, encoded when encode says so or when it is a "-" that
// starts a line, after a soft line break when the line would be too long.
func (q *qpEncoder) emit(b byte, encode bool) {
	n := 1
	if encode {
		n = 3
	}
	if q.col+n > qpLineMax-1 {
		q.w.WriteByte('=')
		q.w.WriteString(q.nl)
		q.col = 0
	}
	if q.col == 0 && b == '-' && !encode {
		encode, n = true, 3
	}
	if encode {
		writeHex(q.w, b)
	} else {
		q.w.WriteByte(b)
	}
	q.col += n
}

// flush writes a pending space or tab encoded: it ends a line (or the
// content), where a decoder would drop it bare.
func (q *qpEncoder) flush() {
	if q.ws != 0 {
		q.emit(q.ws, true)
		q.ws = 0
	}
}
