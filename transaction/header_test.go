package transaction

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// read parses msg's header into a fresh transaction and returns it with
// what ReadHeader wrote to the body (nil when nothing: only a line that is
// no field, ending the header, goes there) and what is left of msg.
func read(t *testing.T, msg string, max int64) (*Transaction, []byte, string) {
	t.Helper()
	tx := New(t.TempDir(), 0)
	br := bufio.NewReader(strings.NewReader(msg))
	if err := tx.ReadHeader(br, HeaderLimits{MaxBytes: max}); err != nil {
		t.Fatalf("ReadHeader(%q): %v", msg, err)
	}
	rest, _ := io.ReadAll(br)
	return tx, bodyOf(t, tx), string(rest)
}

// bodyOf returns what tx.Body holds, nil when it is empty.
func bodyOf(t *testing.T, tx *Transaction) []byte {
	t.Helper()
	if tx.Body.Size() == 0 {
		return nil
	}
	b, err := io.ReadAll(tx.Body.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func names(h *Header) []string {
	var n []string
	for _, f := range h.Fields() {
		n = append(n, f.Name)
	}
	return n
}

func TestReadHeaderFields(t *testing.T) {
	msg := "From: Alice <alice@example.org>\r\n" +
		"To: bob@example.test,\r\n" +
		"\tcarol@example.test\r\n" +
		"Subject: a long\r\n" +
		"  subject\r\n" +
		"X-Empty:\r\n" +
		"\r\n" +
		"Body: not a header\r\n" +
		"\r\n" +
		"more body\r\n"
	tx, pending, rest := read(t, msg, 1<<20)
	if pending != nil {
		t.Fatalf("pending = %q", pending)
	}
	h := &tx.Header
	if got := names(h); !slices.Equal(got, []string{"From", "To", "Subject", "X-Empty"}) {
		t.Fatalf("fields = %v", got)
	}
	for name, want := range map[string]string{
		"From":    "Alice <alice@example.org>",
		"To":      "bob@example.test,\tcarol@example.test",
		"Subject": "a long  subject",
		"X-Empty": "",
		"Body":    "",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("Get(%q) = %q, want %q", name, got, want)
		}
	}
	if rest != "Body: not a header\r\n\r\nmore body\r\n" {
		t.Fatalf("the body left in the reader = %q", rest)
	}
	if got := string(h.Fields()[1].Raw); got != "To: bob@example.test,\r\n\tcarol@example.test\r\n" {
		t.Fatalf("folded field's Raw = %q", got)
	}
	// Untouched, the header is written back byte for byte.
	if got := string(h.Bytes()); got != msg[:len(msg)-len(rest)] {
		t.Fatalf("Bytes() = %q\nwant      %q", got, msg[:len(msg)-len(rest)])
	}
}

func TestReadHeaderLFOnly(t *testing.T) {
	msg := "Subject: hi\nX-Folded: a\n b\n\nbody\n"
	tx, _, rest := read(t, msg, 1<<20)
	if got := tx.Header.Get("x-folded"); got != "a b" {
		t.Fatalf("LF-only folded value = %q", got)
	}
	if rest != "body\n" {
		t.Fatalf("rest = %q", rest)
	}
	if got := string(tx.Header.Bytes()); got != "Subject: hi\nX-Folded: a\n b\n\n" {
		t.Fatalf("Bytes() = %q: LF-only input must be kept as is", got)
	}
}

func TestReadHeaderNoBody(t *testing.T) {
	msg := "Subject: no body\r\nX-A: 1\r\n"
	tx, pending, rest := read(t, msg, 1<<20)
	if pending != nil || rest != "" {
		t.Fatalf("pending %q rest %q", pending, rest)
	}
	if tx.Header.Len() != 2 || tx.Header.Get("X-A") != "1" {
		t.Fatalf("fields = %v", names(&tx.Header))
	}
	if got := string(tx.Header.Bytes()); got != msg {
		t.Fatalf("Bytes() = %q, want %q (no empty line was received, none is added)", got, msg)
	}
	// The empty message.
	tx, pending, rest = read(t, "", 1<<20)
	if tx.Header.Len() != 0 || pending != nil || rest != "" || len(tx.Header.Bytes()) != 0 {
		t.Fatalf("empty message: %d fields, pending %q, rest %q", tx.Header.Len(), pending, rest)
	}
}

func TestReadHeaderLastLineWithoutNewline(t *testing.T) {
	tx, _, _ := read(t, "Subject: cut", 1<<20)
	if tx.Header.Get("Subject") != "cut" {
		t.Fatalf("Subject = %q", tx.Header.Get("Subject"))
	}
	// A field added after it must not run into it.
	tx.Header.Add("X-Added", "yes")
	if tx.Header.Len() != 2 || tx.Header.Get("Subject") != "cut" || tx.Header.Get("X-Added") != "yes" {
		t.Fatalf("after Add: %q", tx.Header.Bytes())
	}
	if got := string(tx.Header.Bytes()); got != "Subject: cut\r\nX-Added: yes\r\n" {
		t.Fatalf("after Add: %q", got)
	}
}

func TestReadHeaderFirstLineNotAHeader(t *testing.T) {
	for _, tc := range []struct{ msg, pending string }{
		{"Hello Bob,\r\nhow are you?\r\n", "Hello Bob,\r\n"},
		{"  indented first line\r\nrest\r\n", "  indented first line\r\n"},
		{"no colon here\n", "no colon here\n"},
		{": empty name\r\n", ": empty name\r\n"},
	} {
		tx, pending, rest := read(t, tc.msg, 1<<20)
		if tx.Header.Len() != 0 {
			t.Errorf("%q: fields %v", tc.msg, names(&tx.Header))
		}
		if string(pending) != tc.pending || string(pending)+rest != tc.msg {
			t.Errorf("%q: pending %q rest %q", tc.msg, pending, rest)
		}
		// Once a trace field is added, the body must stay the body: an
		// indented first line must not become part of that field.
		tx.Header.Prepend("Received", "from x")
		var out bytes.Buffer
		tx.Header.WriteTo(&out)
		out.Write(pending)
		out.WriteString(rest)
		back, p2, _ := read(t, out.String(), 1<<20)
		if back.Header.Len() != 1 || back.Header.Get("Received") != "from x" || p2 != nil {
			t.Errorf("%q: written as %q, which reads back as fields %v, Received %q",
				tc.msg, out.String(), names(&back.Header), back.Header.Get("Received"))
		}
	}
}

func TestReadHeaderEndsAtANonHeaderLine(t *testing.T) {
	// A line that is neither a field nor a continuation ends the header,
	// and the written message says so with an empty line, so that the next
	// reader sees the same header Sluice's plugins saw.
	msg := "Subject: x\r\nthis line: starts the body\r\nbody\r\n"
	tx, pending, rest := read(t, msg, 1<<20)
	if tx.Header.Len() != 1 || string(pending) != "this line: starts the body\r\n" || rest != "body\r\n" {
		t.Fatalf("fields %v pending %q rest %q", names(&tx.Header), pending, rest)
	}
	if got := string(tx.Header.Bytes()); got != "Subject: x\r\n\r\n" {
		t.Fatalf("Bytes() = %q, want the header closed by an empty line", got)
	}
}

func TestReadHeaderObsoleteSpaceBeforeColon(t *testing.T) {
	// RFC 5322 4.5.1 (obs-optional): "From : x" is a From field. Readers
	// downstream take it as one, so the plugins must see it too.
	msg := "Subject: hi\r\nFrom : evil@example.net\r\n\r\nbody\r\n"
	tx, pending, rest := read(t, msg, 1<<20)
	if pending != nil || rest != "body\r\n" {
		t.Fatalf("pending %q rest %q", pending, rest)
	}
	if got := tx.Header.Get("From"); got != "evil@example.net" {
		t.Fatalf("Get(From) = %q (fields %v)", got, names(&tx.Header))
	}
	if got := string(tx.Header.Bytes()); got != msg[:len(msg)-len(rest)] {
		t.Fatalf("Bytes() = %q", got)
	}
}

func TestReadHeaderMaxBytes(t *testing.T) {
	msg := "Subject: 0123456789\r\nX: y\r\n\r\nbody"
	hdr := int64(len("Subject: 0123456789\r\nX: y\r\n\r\n"))
	if _, _, rest := read(t, msg, hdr); rest != "body" {
		t.Fatalf("a header of exactly maxBytes: rest %q", rest)
	}
	for _, max := range []int64{hdr - 1, 10, 1} {
		tx := New(t.TempDir(), 0)
		err := tx.ReadHeader(bufio.NewReader(strings.NewReader(msg)), HeaderLimits{MaxBytes: max})
		if !errors.Is(err, ErrHeaderTooLong) {
			t.Errorf("maxBytes %d: err = %v, want ErrHeaderTooLong", max, err)
		}
	}
	// One endless line, longer than bufio's buffer.
	long := "X-Long: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
	tx := New(t.TempDir(), 0)
	if err := tx.ReadHeader(bufio.NewReaderSize(strings.NewReader(long), 16), HeaderLimits{MaxBytes: 64 << 10}); !errors.Is(err, ErrHeaderTooLong) {
		t.Fatalf("a 100 KiB line with maxBytes 64 KiB: err = %v", err)
	}
	tx = New(t.TempDir(), 0)
	if err := tx.ReadHeader(bufio.NewReaderSize(strings.NewReader(long), 16), HeaderLimits{IndexBytes: 1 << 20}); err != nil || len(tx.Header.Get("X-Long")) != 100<<10 {
		t.Fatalf("a 100 KiB line under the limit: err %v, value %d bytes", err, len(tx.Header.Get("X-Long")))
	}
}

func TestReadHeaderPassesReadErrors(t *testing.T) {
	boom := errors.New("connection reset")
	tx := New(t.TempDir(), 0)
	r := io.MultiReader(strings.NewReader("Subject: x\r\nTo: "), errReader{boom})
	if err := tx.ReadHeader(bufio.NewReader(r), HeaderLimits{}); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the reader's", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func headerOf(t *testing.T, text string) *Header {
	t.Helper()
	tx, _, _ := read(t, text, 1<<20)
	return &tx.Header
}

func TestHeaderCaseInsensitive(t *testing.T) {
	h := headerOf(t, "Received: one\r\nreceived: two\r\nRECEIVED: three\r\nSubject: s\r\n\r\n")
	if got := h.Get("rEcEiVeD"); got != "one" {
		t.Fatalf("Get = %q, want the first", got)
	}
	if got := h.Values("received"); !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Fatalf("Values = %q", got)
	}
	if h.Count("RECEIVED") != 3 || h.Count("subject") != 1 || h.Count("To") != 0 {
		t.Fatalf("Count: %d %d %d", h.Count("RECEIVED"), h.Count("subject"), h.Count("To"))
	}
	if h.Values("To") != nil || h.Get("To") != "" {
		t.Fatal("a missing field has values")
	}
}

func TestHeaderEdits(t *testing.T) {
	orig := "Subject: s\r\nX-Spam: old1\r\nTo: t\r\nx-spam: old2\r\n\r\n"
	h := headerOf(t, orig)

	h.Prepend("Received", "from a by b")
	h.Add("X-Added", "last")
	if got := names(h); !slices.Equal(got, []string{"Received", "Subject", "X-Spam", "To", "x-spam", "X-Added"}) {
		t.Fatalf("after Prepend and Add: %v", got)
	}
	h.Set("X-SPAM", "new")
	if got := names(h); !slices.Equal(got, []string{"Received", "Subject", "X-SPAM", "To", "X-Added"}) {
		t.Fatalf("after Set: %v: Set replaces the first in place and drops the others", got)
	}
	if h.Get("x-spam") != "new" || h.Count("x-spam") != 1 {
		t.Fatalf("after Set: %q, count %d", h.Get("x-spam"), h.Count("x-spam"))
	}
	h.Set("X-New", "appended")
	if got := names(h); got[len(got)-1] != "X-New" {
		t.Fatalf("Set of a missing field: %v", got)
	}
	h.Del("subject")
	h.Del("nosuch")
	want := "Received: from a by b\r\nX-SPAM: new\r\nTo: t\r\nX-Added: last\r\nX-New: appended\r\n\r\n"
	if got := string(h.Bytes()); got != want {
		t.Fatalf("Bytes() = %q\nwant      %q", got, want)
	}
	var b bytes.Buffer
	n, err := h.WriteTo(&b)
	if err != nil || n != int64(len(want)) || b.String() != want {
		t.Fatalf("WriteTo = %d, %v, %q", n, err, b.String())
	}
	h.Del("x-spam")
	h.Del("To")
	h.Del("Received")
	h.Del("X-Added")
	h.Del("X-New")
	if h.Len() != 0 || string(h.Bytes()) != "\r\n" {
		t.Fatalf("all deleted: %d fields, %q", h.Len(), h.Bytes())
	}
}

func TestHeaderDelFunc(t *testing.T) {
	h := headerOf(t, "X-A: keep\r\nSubject: s\r\nx-a: drop\r\n folded\r\nX-A: keep too\r\n\r\n")
	var seen []string
	n := h.DelFunc(func(f Field) bool {
		seen = append(seen, f.Name+"="+f.Value())
		return strings.EqualFold(f.Name, "X-A") && strings.HasPrefix(f.Value(), "drop")
	})
	if n != 1 {
		t.Fatalf("DelFunc removed %d fields, want 1", n)
	}
	if want := []string{"X-A=keep", "Subject=s", "x-a=drop folded", "X-A=keep too"}; !slices.Equal(seen, want) {
		t.Fatalf("drop saw %q, want %q", seen, want)
	}
	want := "X-A: keep\r\nSubject: s\r\nX-A: keep too\r\n\r\n"
	if got := string(h.Bytes()); got != want {
		t.Fatalf("Bytes() = %q\nwant      %q", got, want)
	}
	if n := h.DelFunc(func(Field) bool { return false }); n != 0 || string(h.Bytes()) != want {
		t.Fatalf("dropping nothing removed %d: %q", n, h.Bytes())
	}
}

func TestNewFieldCannotInjectAField(t *testing.T) {
	for _, value := range []string{
		"x\r\nBcc: evil@example.net",
		"x\nBcc: evil@example.net",
		"x\rBcc: evil@example.net",
		"x\r\n\r\nBcc: evil@example.net", // an empty line would end the header
		"x\n \nBcc: evil@example.net",    // so would a blank one, to some readers
		"x\r\n",
	} {
		var h Header
		h.Add("X-Test", value)
		h.Add("X-After", "1")
		text := string(h.Bytes()) + "\r\nbody\r\n"
		back, pending, rest := read(t, text, 1<<20)
		if got := names(&back.Header); !slices.Equal(got, []string{"X-Test", "X-After"}) || pending != nil || rest != "body\r\n" {
			t.Errorf("value %q: written as %q, read back as %v (pending %q, rest %q)", value, text, got, pending, rest)
		}
		for _, line := range strings.SplitAfter(string(h.Fields()[0].Raw), "\r\n") {
			if line == "" {
				continue
			}
			if strings.TrimLeft(line, " \t") == "\r\n" {
				t.Errorf("value %q: field %q has a blank line", value, h.Fields()[0].Raw)
			}
			if !strings.HasSuffix(line, "\r\n") || strings.ContainsAny(strings.TrimSuffix(line, "\r\n"), "\r\n") {
				t.Errorf("value %q: bare line break in %q", value, h.Fields()[0].Raw)
			}
		}
	}
	var h Header
	h.Set("X-Test", "x\r\nBcc: evil")
	if got := string(h.Bytes()); got != "X-Test: x\r\n\tBcc: evil\r\n" {
		t.Fatalf("Set = %q", got)
	}
	if h.Count("Bcc") != 0 || h.Len() != 1 {
		t.Fatal("Set injected a Bcc field")
	}
	// A value folded the RFC 5322 way keeps its own white space.
	h.Set("X-Test", "a\r\n b")
	if got := string(h.Bytes()); got != "X-Test: a\r\n b\r\n" {
		t.Fatalf("a proper fold became %q", got)
	}
	if h.Get("X-Test") != "a b" {
		t.Fatalf("Get = %q", h.Get("X-Test"))
	}
}

func TestWriteToReproducesInput(t *testing.T) {
	msg := "Return-Path: <a@example.org>\r\n" +
		"Received: from x\r\n\tby y; Mon, 1 Jan 2026 00:00:00 +0000\r\n" +
		"DKIM-Signature: v=1; a=rsa-sha256;\r\n  b=abc\r\n   def\r\n" +
		"Subject:   spaced   \r\n" +
		"\r\n" +
		"Hello.\r\n.dot\r\n\r\n"
	tx := New(t.TempDir(), 4)
	br := bufio.NewReader(strings.NewReader(msg))
	if err := tx.ReadHeader(br, HeaderLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := br.WriteTo(tx.Body); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := tx.WriteTo(&out)
	if err != nil || out.String() != msg || n != int64(len(msg)) {
		t.Fatalf("WriteTo = %d, %v:\n%q\nwant\n%q", n, err, out.String(), msg)
	}
	if tx.MessageSize() != int64(len(msg)) {
		t.Fatalf("MessageSize = %d, want %d", tx.MessageSize(), len(msg))
	}
	all, _ := io.ReadAll(tx.Message())
	if string(all) != msg {
		t.Fatalf("Message() = %q", all)
	}
	all, _ = io.ReadAll(tx.Message())
	if string(all) != msg {
		t.Fatalf("Message() a second time = %q", all)
	}
	if tx.Header.Get("subject") != "spaced" {
		t.Fatalf("Get trims: %q", tx.Header.Get("subject"))
	}
	if err := tx.Close(); err != nil {
		t.Fatal(err)
	}
}

// failWriter takes up to room bytes, then fails.
type failWriter struct{ room int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.room {
		n := w.room
		w.room = 0
		return n, errors.New("disk full")
	}
	w.room -= len(p)
	return len(p), nil
}

func TestWriteToStopsAtTheFirstError(t *testing.T) {
	text := "A: 1\r\nB: 2\r\nC: 3\r\n\r\n"
	tx, _, _ := read(t, text, 1<<20)
	// C is past the index: WriteTo writes from three places.
	if err := tx.ReadHeader(bufio.NewReader(strings.NewReader(text)), HeaderLimits{IndexFields: 2}); err != nil {
		t.Fatal(err)
	}
	tx.Header.Prepend("Received", "x")
	text = "Received: x\r\n" + text
	for room := 0; room < len(text); room++ {
		n, err := tx.Header.WriteTo(&failWriter{room: room})
		if err == nil || n != int64(room) {
			t.Fatalf("room for %d bytes: WriteTo = %d, %v", room, n, err)
		}
	}
	var b bytes.Buffer
	if n, err := tx.Header.WriteTo(&b); err != nil || n != int64(len(text)) || b.String() != text {
		t.Fatalf("WriteTo = %d, %v, %q", n, err, b.String())
	}
}

func TestValidFieldName(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Spam-Flag": true, "DKIM-Signature": true, "a": true, "!#~": true,
		"": false, "X Spam": false, "X:Spam": false, "X-\u00e9": false, "X\tY": false, "X\x7f": false,
	} {
		if got := ValidFieldName(name); got != want {
			t.Errorf("ValidFieldName(%q) = %v, want %v", name, got, want)
		}
	}
}
