package transaction

import (
	"bytes"
	"io"
	"math"
	"slices"
	"strings"
)

// Field is one header field exactly as it was received (or as a plugin
// built it): Raw holds "Name: value" with its folded continuation lines and
// its final line ending.
type Field struct {
	Name string
	Raw  []byte
}

// Value returns the field's value, unfolded and trimmed of surrounding
// white space.
func (f Field) Value() string { return fieldValue(f.Raw) }

// Header is a message's header section, parsed once while the message is
// read. Fields a plugin does not touch are written back byte for byte.
//
// The memory a header holds is bounded by the HeaderLimits it was read
// with, not by what the client sent: the text of the parsed fields lives in
// one buffer, each field is a 12-byte record of offsets into it, and the
// part of a long header that is past the index (Unparsed) waits in a spool
// (memory up to a threshold, then an unlinked temporary file) to be written
// back verbatim. The zero Header is empty and ready to use.
type Header struct {
	// buf holds the raw text of every field in fields, parsed or added,
	// and of fields since replaced or removed (dead bytes). It is only
	// appended to (or replaced by a compacted copy), so a Raw slice that
	// Fields returned stays intact.
	buf    []byte
	fields []field
	dead   int
	// rest is the header text past the index, written verbatim after the
	// fields; nil when every field was parsed.
	rest *Spool
	// sep is the empty line that ended the header ("\r\n" or "\n"), or ""
	// when the message had no body. When a line that is no header field
	// ended the header, sep is an empty line of the same ending that Sluice
	// adds, so that the next reader sees the header end where the plugins
	// saw it.
	sep string
}

// field is a header field inside Header.buf: its text is
// buf[off:off+n] and its name the first name bytes of it.
type field struct {
	off, n, name uint32
}

func (h *Header) raw(f field) []byte    { return h.buf[f.off : f.off+f.n : f.off+f.n] }
func (h *Header) nameOf(f field) []byte { return h.buf[f.off : f.off+f.name : f.off+f.name] }

// Fields returns the parsed and added fields in order, not those past the
// index (see Unparsed). It builds a new slice on every call; changing it
// changes nothing. Raw shares the header's memory and must not be
// modified.
func (h *Header) Fields() []Field {
	if len(h.fields) == 0 {
		return nil
	}
	fs := make([]Field, len(h.fields))
	for i, f := range h.fields {
		fs[i] = Field{Name: string(h.nameOf(f)), Raw: h.raw(f)}
	}
	return fs
}

// Len returns the number of fields Fields returns.
func (h *Header) Len() int { return len(h.fields) }

// Unparsed returns how many bytes of the received header are past the
// index (the HeaderLimits ReadHeader was given): they are not in Fields and
// Get, Values and Count do not see them, but they are written back verbatim
// after the parsed fields and before the empty line. 0 means every field of
// the header was parsed. A plugin whose verdict needs every field (one that
// refuses a forbidden field, say) should refuse or defer a message with
// Unparsed() > 0 rather than pass it unseen.
func (h *Header) Unparsed() int64 {
	if h.rest == nil {
		return 0
	}
	return h.rest.Size()
}

// Size returns the number of bytes WriteTo writes.
func (h *Header) Size() int64 {
	var n int64
	for _, f := range h.fields {
		n += int64(f.n)
	}
	return n + h.Unparsed() + int64(len(h.sep))
}

// Get returns the value of the first field named name (case-insensitive),
// or "".
func (h *Header) Get(name string) string {
	for _, f := range h.fields {
		if equalFold(h.nameOf(f), name) {
			return fieldValue(h.raw(f))
		}
	}
	return ""
}

// Values returns the values of every field named name, in order.
func (h *Header) Values(name string) []string {
	var vs []string
	for _, f := range h.fields {
		if equalFold(h.nameOf(f), name) {
			vs = append(vs, fieldValue(h.raw(f)))
		}
	}
	return vs
}

// Count returns how many fields are named name.
func (h *Header) Count(name string) int {
	n := 0
	for _, f := range h.fields {
		if equalFold(h.nameOf(f), name) {
			n++
		}
	}
	return n
}

// Prepend adds a field at the top of the header, where trace fields such as
// Received and Authentication-Results belong.
func (h *Header) Prepend(name, value string) {
	h.fields = slices.Insert(h.fields, 0, h.appendField(name, value))
}

// Add appends a field after the last field of Fields. When part of the
// received header was not parsed (Unparsed), that part still comes after
// it, just before the empty line.
func (h *Header) Add(name, value string) {
	if n := len(h.fields); n > 0 {
		last := &h.fields[n-1]
		if r := h.raw(*last); len(r) > 0 && r[len(r)-1] != '\n' {
			// The message ended inside its last field: end that line
			// first so the new field does not run into it.
			if int(last.off+last.n) != len(h.buf) {
				h.dead += int(last.n)
				last.off = h.grow(r)
			}
			h.buf = append(h.buf, '\r', '\n')
			last.n += 2
		}
	}
	h.fields = append(h.fields, h.appendField(name, value))
}

// Set replaces the first field named name and removes the others; it
// appends the field when there is none.
func (h *Header) Set(name, value string) {
	for i, f := range h.fields {
		if equalFold(h.nameOf(f), name) {
			nf := h.appendField(name, value)
			h.dead += int(f.n)
			h.fields[i] = nf
			h.del(i+1, name)
			return
		}
	}
	h.Add(name, value)
}

// Del removes every field named name.
func (h *Header) Del(name string) { h.del(0, name) }

// DelFunc removes every field for which drop returns true, keeping the
// others in order, and returns how many it removed: to remove some fields
// of a name and keep the rest (an Authentication-Results field that claims
// to come from this server, say). drop sees the fields Fields returns.
func (h *Header) DelFunc(drop func(Field) bool) int {
	return h.delWhere(0, func(f field) bool {
		return drop(Field{Name: string(h.nameOf(f)), Raw: h.raw(f)})
	})
}

// Insert puts a field at position i of Fields (0 is the top; past the
// end, it is Add), as a milter's insheader does.
func (h *Header) Insert(i int, name, value string) {
	if i >= len(h.fields) {
		h.Add(name, value)
		return
	}
	h.fields = slices.Insert(h.fields, max(i, 0), h.appendField(name, value))
}

// Change replaces the value of the nth (from 1) field named name (the
// field keeps the case of its name), or
// removes it when value is "", as a milter's chgheader does; it reports
// whether there was such a field.
func (h *Header) Change(name string, n int, value string) bool {
	seen := 0
	for i, f := range h.fields {
		if !equalFold(h.nameOf(f), name) {
			continue
		}
		if seen++; seen != n {
			continue
		}
		h.dead += int(f.n)
		if value == "" {
			h.fields = slices.Delete(h.fields, i, i+1)
			h.compact()
			return true
		}
		h.fields[i] = h.appendField(string(h.nameOf(f)), value)
		return true
	}
	return false
}

func (h *Header) del(from int, name string) {
	h.delWhere(from, func(f field) bool { return equalFold(h.nameOf(f), name) })
}

// delWhere removes the fields from index from on for which drop returns
// true, keeping the others in order, and returns how many it removed.
func (h *Header) delWhere(from int, drop func(field) bool) int {
	out := h.fields[:from]
	for _, f := range h.fields[from:] {
		if drop(f) {
			h.dead += int(f.n)
		} else {
			out = append(out, f)
		}
	}
	n := len(h.fields) - len(out)
	clear(h.fields[len(out):])
	h.fields = out
	h.compact()
	return n
}

// compact copies the live fields into a new buffer once most of the
// buffer is text that no field uses any more (a plugin setting a field
// over and over), so the buffer stays proportional to the header.
func (h *Header) compact() {
	if h.dead < 4<<10 || h.dead < len(h.buf)/2 {
		return
	}
	buf := make([]byte, 0, len(h.buf)-h.dead)
	for i, f := range h.fields {
		h.fields[i].off = uint32(len(buf))
		buf = append(buf, h.raw(f)...)
	}
	h.buf, h.dead = buf, 0
}

// grow appends p to buf and returns where it starts.
func (h *Header) grow(p []byte) uint32 {
	off := len(h.buf)
	if off+len(p) > math.MaxUint32 {
		panic("transaction: header text over 4 GiB")
	}
	h.buf = append(h.buf, p...)
	return uint32(off)
}

// appendField writes a field built from name and value at the end of buf
// and returns its record. Line breaks in value (CRLF, CR or LF) are kept
// only as folds: a line that does not start with white space gets a tab, so
// a plugin can never inject a new field or end the header. Empty and blank
// lines are dropped: some readers take a blank line for the end of the
// header.
func (h *Header) appendField(name, value string) field {
	start := len(h.buf)
	b := append(h.buf, name...)
	b = append(b, ": "...)
	for first := true; ; first = false {
		line := value
		i := strings.IndexAny(value, "\r\n")
		if i >= 0 {
			line = value[:i]
		}
		switch {
		case first:
			b = append(b, line...)
		case strings.TrimLeft(line, " \t") != "":
			b = append(b, '\r', '\n')
			if line[0] != ' ' && line[0] != '\t' {
				b = append(b, '\t')
			}
			b = append(b, line...)
		}
		if i < 0 {
			break
		}
		if value[i] == '\r' && i+1 < len(value) && value[i+1] == '\n' {
			i++
		}
		value = value[i+1:]
	}
	b = append(b, '\r', '\n')
	if len(b) > math.MaxUint32 {
		panic("transaction: header text over 4 GiB")
	}
	h.buf = b
	return field{off: uint32(start), n: uint32(len(b) - start), name: uint32(len(name))}
}

// WriteTo writes the fields, the unparsed rest of the received header and
// the empty line that ends the header.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for i := 0; i < len(h.fields); {
		// Fields that follow each other in buf (all the parsed ones of an
		// untouched header) go out in one write.
		start, end := h.fields[i].off, h.fields[i].off+h.fields[i].n
		for i++; i < len(h.fields) && h.fields[i].off == end; i++ {
			end += h.fields[i].n
		}
		m, err := w.Write(h.buf[start:end])
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	if h.rest != nil {
		m, err := io.Copy(w, h.rest.Reader())
		n += m
		if err != nil {
			return n, err
		}
	}
	if h.sep != "" {
		m, err := io.WriteString(w, h.sep)
		n += int64(m)
		return n, err
	}
	return n, nil
}

// Bytes returns the header as WriteTo writes it, all of it in memory: for
// tests and small headers. The queue streams the header with WriteTo.
func (h *Header) Bytes() []byte {
	var b bytes.Buffer
	b.Grow(int(h.Size()))
	h.WriteTo(&b)
	return b.Bytes()
}

// reader returns a reader over what WriteTo writes.
func (h *Header) reader() io.Reader {
	var fields []byte
	for _, f := range h.fields {
		fields = append(fields, h.raw(f)...)
	}
	rs := []io.Reader{bytes.NewReader(fields)}
	if h.rest != nil {
		rs = append(rs, h.rest.Reader())
	}
	if h.sep != "" {
		rs = append(rs, strings.NewReader(h.sep))
	}
	return io.MultiReader(rs...)
}

// trim gives back the buffer's spare room when it is most of it (a long
// field that went past the index left the buffer grown and empty).
func (h *Header) trim() {
	if cap(h.buf)-len(h.buf) > 4<<10 && cap(h.buf) > 2*len(h.buf) {
		h.buf = slices.Clone(h.buf)
	}
}

// reset empties the header and releases its memory and spool.
func (h *Header) reset() error {
	var err error
	if h.rest != nil {
		err = h.rest.Close()
	}
	*h = Header{}
	return err
}

// fieldValue returns the value of a field's raw text: what follows the
// first ':', with every line break removed (a CR directly before a LF is
// part of the line break) and surrounding white space trimmed.
func fieldValue(raw []byte) string {
	_, v, _ := bytes.Cut(raw, []byte{':'})
	if i := bytes.IndexByte(v, '\n'); i < 0 || i == len(v)-1 {
		// One line, the common case: no copy but the string itself.
		if i >= 0 {
			v = v[:i]
			if len(v) > 0 && v[len(v)-1] == '\r' {
				v = v[:len(v)-1]
			}
		}
		return string(bytes.TrimSpace(v))
	}
	u := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\n':
		case v[i] == '\r' && i+1 < len(v) && v[i+1] == '\n':
			i++
		default:
			u = append(u, v[i])
		}
	}
	return string(bytes.TrimSpace(u))
}

// equalFold reports whether the field name b is s, ignoring case as
// strings.EqualFold does.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		// Different lengths can still fold to each other outside ASCII
		// (the Kelvin sign and k).
		return !isASCII(s) && strings.EqualFold(string(b), s)
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if c|d >= 0x80 {
			return strings.EqualFold(string(b), s)
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// ValidFieldName reports whether name is a header field name (RFC 5322
// section 3.6.8): one or more printable US-ASCII characters but ':'. Check
// a configured or received name with it before Add, Prepend or Set.
func ValidFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 127 || c == ':' {
			return false
		}
	}
	return true
}
