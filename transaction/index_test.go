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

// readLimits parses msg's header with l and returns the transaction, what
// went to the body and what is left of msg.
func readLimits(t *testing.T, msg string, l HeaderLimits) (*Transaction, string, string) {
	t.Helper()
	tx := New(t.TempDir(), 0)
	t.Cleanup(func() { tx.Close() })
	br := bufio.NewReaderSize(strings.NewReader(msg), 16)
	if err := tx.ReadHeader(br, l); err != nil {
		t.Fatalf("ReadHeader(%q, %+v): %v", msg, l, err)
	}
	rest, _ := io.ReadAll(br)
	return tx, string(bodyOf(t, tx)), string(rest)
}

func TestReadHeaderPastTheFieldLimit(t *testing.T) {
	hdr := "A: 1\r\nB: 2\r\n\tfolded\r\nC: 3\r\nD: 4\r\n\r\n"
	tx, body, rest := readLimits(t, hdr+"body\r\n", HeaderLimits{IndexFields: 2})
	h := &tx.Header
	if got := names(h); !slices.Equal(got, []string{"A", "B"}) || body != "" || rest != "body\r\n" {
		t.Fatalf("fields %v, body %q, rest %q", got, body, rest)
	}
	if h.Get("B") != "2\tfolded" || h.Get("C") != "" || h.Count("D") != 0 {
		t.Fatalf("Get(B) %q, Get(C) %q, Count(D) %d: only the parsed fields are seen", h.Get("B"), h.Get("C"), h.Count("D"))
	}
	if h.Unparsed() != int64(len("C: 3\r\nD: 4\r\n")) {
		t.Fatalf("Unparsed = %d", h.Unparsed())
	}
	// Untouched, the header is written back byte for byte.
	if got := string(h.Bytes()); got != hdr || h.Size() != int64(len(hdr)) {
		t.Fatalf("Bytes() = %q (Size %d), want %q", got, h.Size(), hdr)
	}
	// Trace fields go on top; added ones after the parsed fields, before
	// the unparsed text, which keeps its place before the empty line.
	h.Prepend("Received", "from x")
	h.Add("X-Added", "y")
	want := "Received: from x\r\nA: 1\r\nB: 2\r\n\tfolded\r\nX-Added: y\r\nC: 3\r\nD: 4\r\n\r\n"
	if got := string(h.Bytes()); got != want {
		t.Fatalf("after Prepend and Add: %q\nwant %q", got, want)
	}
	var out bytes.Buffer
	if _, err := io.Copy(tx.Body, strings.NewReader(rest)); err != nil {
		t.Fatal(err)
	}
	if n, err := tx.WriteTo(&out); err != nil || out.String() != want+"body\r\n" || n != tx.MessageSize() {
		t.Fatalf("WriteTo = %d, %v: %q", n, err, out.String())
	}
}

func TestReadHeaderPastTheByteLimit(t *testing.T) {
	for _, tc := range []struct {
		name, hdr string
		parsed    []string
		unparsed  string
	}{
		{"a field that would straddle the limit goes past it whole",
			"A: 1\r\nB: " + strings.Repeat("b", 30) + "\r\nC: 3\r\n\r\n",
			[]string{"A"}, "B: " + strings.Repeat("b", 30) + "\r\nC: 3\r\n"},
		{"so does one whose fold crosses it",
			"A: 1\r\nB: 2\r\n\t" + strings.Repeat("b", 30) + "\r\nC: 3\r\n\r\n",
			[]string{"A"}, "B: 2\r\n\t" + strings.Repeat("b", 30) + "\r\nC: 3\r\n"},
		{"and a first field longer than the limit",
			"B: " + strings.Repeat("b", 30) + "\r\nA: 1\r\n\r\n",
			nil, "B: " + strings.Repeat("b", 30) + "\r\nA: 1\r\n"},
		{"a header of exactly the limit is parsed whole",
			"A: 1\r\nB: 22222222222222\r\n\r\n",
			[]string{"A", "B"}, ""},
	} {
		tx, _, rest := readLimits(t, tc.hdr+"body", HeaderLimits{IndexBytes: 26})
		h := &tx.Header
		var unparsed bytes.Buffer
		if h.rest != nil {
			io.Copy(&unparsed, h.rest.Reader())
		}
		if got := names(h); !slices.Equal(got, tc.parsed) || unparsed.String() != tc.unparsed || h.Unparsed() != int64(len(tc.unparsed)) {
			t.Errorf("%s: fields %v, unparsed %q (%d)", tc.name, got, unparsed.String(), h.Unparsed())
		}
		if got := string(h.Bytes()); got != tc.hdr || rest != "body" {
			t.Errorf("%s: Bytes() %q, rest %q", tc.name, got, rest)
		}
	}
}

func TestReadHeaderEndsAtANonFieldLinePastTheIndex(t *testing.T) {
	msg := "A: 1\r\nB: 2\r\n\tb\r\nnot a field\r\nbody\r\n"
	tx, body, rest := readLimits(t, msg, HeaderLimits{IndexFields: 1})
	if got := names(&tx.Header); !slices.Equal(got, []string{"A"}) || tx.Header.Unparsed() != int64(len("B: 2\r\n\tb\r\n")) {
		t.Fatalf("fields %v, %d bytes unparsed", got, tx.Header.Unparsed())
	}
	if body != "not a field\r\n" || rest != "body\r\n" {
		t.Fatalf("body %q, rest %q", body, rest)
	}
	if got := string(tx.Header.Bytes()); got != "A: 1\r\nB: 2\r\n\tb\r\n\r\n" {
		t.Fatalf("Bytes() = %q: the header must end with the empty line it lacked", got)
	}
}

func TestReadHeaderFirstBodyLineIsNotHeader(t *testing.T) {
	// A long line that ends the header is body: it streams to the body
	// spool, and the header limit does not count it.
	line := "no field here " + strings.Repeat("x", 200<<10) + "\n"
	tx, body, rest := readLimits(t, "Subject: x\n"+line+"rest\n", HeaderLimits{MaxBytes: 1 << 10})
	if body != line || rest != "rest\n" || tx.Header.Get("Subject") != "x" {
		t.Fatalf("body %d bytes, rest %q, Subject %q", len(body), rest, tx.Header.Get("Subject"))
	}
	if got := string(tx.Header.Bytes()); got != "Subject: x\n\n" {
		t.Fatalf("Bytes() = %q", got)
	}
}

func TestFieldNameWithin998Bytes(t *testing.T) {
	name := strings.Repeat("n", maxNameScan-2)
	for _, tc := range []struct {
		line  string
		field bool
	}{
		{name + " :x\r\n", true}, // the ':' at byte 998
		{name + "  :x\r\n", false},
		{strings.Repeat("n", 5000) + ":x\r\n", false},
	} {
		tx, body, _ := readLimits(t, "A: 1\r\n"+tc.line+"\r\n", HeaderLimits{})
		if isField := tx.Header.Len() == 2; isField != tc.field || (body == "") != tc.field {
			t.Errorf("a line with its ':' at byte %d: %d fields, body %q", strings.IndexByte(tc.line, ':')+1, tx.Header.Len(), abbrev(body))
		}
	}
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func TestReadHeaderOverTheMaximum(t *testing.T) {
	msg := strings.Repeat("a:\r\n", 1000) + "\r\nbody"
	tx := New(t.TempDir(), 0)
	defer tx.Close()
	err := tx.ReadHeader(bufio.NewReader(strings.NewReader(msg)), HeaderLimits{MaxBytes: 3999, IndexFields: 10})
	if !errors.Is(err, ErrHeaderTooLong) {
		t.Fatalf("err = %v, want ErrHeaderTooLong", err)
	}
	tx2, _, rest := readLimits(t, msg, HeaderLimits{MaxBytes: 4002, IndexFields: 10})
	if rest != "body" || tx2.Header.Len() != 10 || tx2.Header.Unparsed() != 3960 {
		t.Fatalf("a header of exactly MaxBytes: rest %q, %d fields, %d unparsed", rest, tx2.Header.Len(), tx2.Header.Unparsed())
	}
}

func TestReadHeaderSpoolFailure(t *testing.T) {
	gone := t.TempDir() + "/gone"
	for _, msg := range []string{
		"A: 1\r\nB: 2\r\n\r\n",    // B goes past the index, to a file
		"A: 1\r\nnot a field\r\n", // the first body line goes to the body
	} {
		tx := New(gone, 0)
		err := tx.ReadHeader(bufio.NewReader(strings.NewReader(msg)), HeaderLimits{IndexFields: 1})
		if !errors.Is(err, ErrSpool) {
			t.Errorf("%q with no spool directory: err = %v, want ErrSpool", msg, err)
		}
		tx.Close()
	}
}

func TestCloseReleasesTheHeader(t *testing.T) {
	tx, _, _ := readLimits(t, "A: 1\r\nB: 2\r\n\r\n", HeaderLimits{IndexFields: 1})
	if err := tx.Close(); err != nil {
		t.Fatal(err)
	}
	h := &tx.Header
	if h.Len() != 0 || h.Unparsed() != 0 || h.Size() != 0 || h.buf != nil || h.rest != nil {
		t.Fatalf("after Close: %d fields, %d unparsed, %d bytes", h.Len(), h.Unparsed(), h.Size())
	}
}

func TestSetOverAndOverKeepsTheBufferSmall(t *testing.T) {
	h := headerOf(t, "Subject: s\r\nX-Spam: 0\r\n\r\n")
	before := h.Fields()
	value := strings.Repeat("v", 1000)
	for range 10000 {
		h.Set("X-Spam", value)
	}
	if cap(h.buf) > 16<<10 {
		t.Fatalf("after 10,000 Sets of a 1 KB field the buffer holds %d bytes", cap(h.buf))
	}
	if string(before[1].Raw) != "X-Spam: 0\r\n" || h.Get("Subject") != "s" || h.Get("X-Spam") != value || h.Len() != 2 {
		t.Fatalf("Raw of an earlier Fields changed to %q, or the header did: %q", before[1].Raw, h.Bytes())
	}
}

// oldValue is how Field.Value was computed when every field was a string.
func oldValue(raw []byte) string {
	_, v, _ := bytes.Cut(raw, []byte{':'})
	s := strings.ReplaceAll(string(v), "\r\n", "")
	s = strings.ReplaceAll(s, "\n", "")
	return strings.TrimSpace(s)
}

func TestFieldValue(t *testing.T) {
	for _, raw := range []string{
		"A: b\r\n", "A:b", "A:  b  \r\n", "A: b\r\n\tc\r\n", "A: b\n c\n", "A: b\r\r\n\n", "A:\r\n",
		"A: \u00a0b\u00a0\r\n", "A: b\rc\r\n", "A: b: c\r\n", "A: b\r\n \r\n", "A: \r\n\r\n", "A",
	} {
		if got, want := fieldValue([]byte(raw)), oldValue([]byte(raw)); got != want {
			t.Errorf("value of %q = %q, want %q", raw, got, want)
		}
	}
}

func TestEqualFold(t *testing.T) {
	for _, tc := range [][2]string{
		{"Subject", "subject"}, {"SUBJECT", "subject"}, {"Subject", "Subjecu"}, {"X-A", "x-a"},
		{"K", "\u212a"}, {"k", "\u212a"}, {"ß", "SS"}, {"Aé", "aÉ"}, {"a", "ab"}, {"", ""}, {"@", "`"},
	} {
		if got, want := equalFold([]byte(tc[0]), tc[1]), strings.EqualFold(tc[0], tc[1]); got != want {
			t.Errorf("equalFold(%q, %q) = %v, want %v", tc[0], tc[1], got, want)
		}
	}
}
