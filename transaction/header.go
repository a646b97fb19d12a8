package transaction

import (
	"bytes"
	"io"
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
func (f Field) Value() string {
	_, v, _ := bytes.Cut(f.Raw, []byte{':'})
	s := string(v)
	s = strings.ReplaceAll(s, "\r\n", "")
	s = strings.ReplaceAll(s, "\n", "")
	return strings.TrimSpace(s)
}

// Header is a message's header section: the fields in order, parsed once
// while the message is read. Fields a plugin does not touch are written back
// byte for byte.
type Header struct {
	fields []Field
	// sep is the empty line that ended the header ("\r\n"), or nil when the
	// message had no body. When a line that is no header field ended the
	// header, sep is an empty line of the same ending that Sluice adds, so
	// that the next reader sees the header end where the plugins saw it.
	sep []byte
}

// Fields returns the fields in order. The slice must not be modified.
func (h *Header) Fields() []Field { return h.fields }

// Len returns the number of fields.
func (h *Header) Len() int { return len(h.fields) }

// Get returns the value of the first field named name (case-insensitive),
// or "".
func (h *Header) Get(name string) string {
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			return f.Value()
		}
	}
	return ""
}

// Values returns the values of every field named name, in order.
func (h *Header) Values(name string) []string {
	var vs []string
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			vs = append(vs, f.Value())
		}
	}
	return vs
}

// Count returns how many fields are named name.
func (h *Header) Count(name string) int {
	n := 0
	for _, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			n++
		}
	}
	return n
}

// Prepend adds a field at the top of the header, where trace fields such as
// Received and Authentication-Results belong.
func (h *Header) Prepend(name, value string) {
	h.fields = append([]Field{newField(name, value)}, h.fields...)
}

// Add appends a field at the end of the header.
func (h *Header) Add(name, value string) {
	if n := len(h.fields); n > 0 && !bytes.HasSuffix(h.fields[n-1].Raw, []byte{'\n'}) {
		// The message ended inside its last field: end that line first so
		// the new field does not run into it.
		h.fields[n-1].Raw = append(h.fields[n-1].Raw, '\r', '\n')
	}
	h.fields = append(h.fields, newField(name, value))
}

// Set replaces the first field named name and removes the others; it
// appends the field when there is none.
func (h *Header) Set(name, value string) {
	for i, f := range h.fields {
		if strings.EqualFold(f.Name, name) {
			h.fields[i] = newField(name, value)
			h.fields = deleteFields(h.fields, i+1, name)
			return
		}
	}
	h.Add(name, value)
}

// Del removes every field named name.
func (h *Header) Del(name string) { h.fields = deleteFields(h.fields, 0, name) }

func deleteFields(fields []Field, from int, name string) []Field {
	out := fields[:from]
	for _, f := range fields[from:] {
		if !strings.EqualFold(f.Name, name) {
			out = append(out, f)
		}
	}
	return out
}

// newField builds a field from name and value. Line breaks in value are
// kept only as folds (CRLF followed by white space); a bare line break
// becomes a fold so a plugin can never inject a new field or end the header.
// Empty and blank lines are dropped: some readers take a blank line for the
// end of the header.
func newField(name, value string) Field {
	value = strings.ReplaceAll(value, "\r\n", "\n")
	value = strings.ReplaceAll(value, "\r", "\n")
	lines := strings.Split(value, "\n")
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(": ")
	for i, l := range lines {
		if i > 0 {
			if strings.TrimLeft(l, " \t") == "" {
				continue
			}
			b.WriteString("\r\n")
			if l[0] != ' ' && l[0] != '\t' {
				b.WriteString("\t")
			}
		}
		b.WriteString(l)
	}
	b.WriteString("\r\n")
	return Field{Name: name, Raw: []byte(b.String())}
}

// WriteTo writes the fields and the empty line that ends the header.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, f := range h.fields {
		m, err := w.Write(f.Raw)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	if len(h.sep) > 0 {
		m, err := w.Write(h.sep)
		n += int64(m)
		return n, err
	}
	return n, nil
}

// Bytes returns the header as WriteTo writes it.
func (h *Header) Bytes() []byte {
	var b bytes.Buffer
	h.WriteTo(&b)
	return b.Bytes()
}

// fieldName returns the name of a header line, or "" when line does not
// start a header field (RFC 5322: printable ASCII but ':' then ':', with
// the obsolete white space before the ':' that readers still accept).
func fieldName(line []byte) string {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return ""
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return ""
	}
	for _, c := range name {
		if c <= ' ' || c >= 127 {
			return ""
		}
	}
	return string(name)
}

func isBlankLine(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

func isContinuation(line []byte) bool {
	return len(line) > 0 && (line[0] == ' ' || line[0] == '\t')
}
