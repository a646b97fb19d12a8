package transaction_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/sluice-mta/sluice/transaction"
)

// parsed is a header read the way the server reads it.
type parsed struct {
	tx   *transaction.Transaction
	body []byte // what ReadHeader wrote to the body
	rest []byte // what it left unread
}

// parse reads a header from b through a 16-byte read buffer, so that lines
// span reads. Spools past 1 KiB move to unlinked files in dir.
func parse(t *testing.T, dir string, b []byte, l transaction.HeaderLimits) (parsed, error) {
	t.Helper()
	tx := transaction.New(dir, 1<<10)
	t.Cleanup(func() { tx.Close() })
	br := bufio.NewReaderSize(bytes.NewReader(b), 16)
	err := tx.ReadHeader(br, l)
	rest, rerr := io.ReadAll(br)
	if rerr != nil {
		t.Fatal(rerr)
	}
	body, rerr := io.ReadAll(tx.Body.Reader())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return parsed{tx, body, rest}, err
}

// all is a limit no input of the fuzzer reaches: every field is parsed.
var all = transaction.HeaderLimits{MaxBytes: 1 << 22, IndexBytes: 1 << 22, IndexFields: 1 << 20}

// FuzzReadHeader parses the start of a message as a header, once with
// every field parsed and once with small index limits. Untouched, the
// header written back, then what ReadHeader wrote to the body and the
// unread rest, give the input byte for byte (only when a line that is no
// field ended the header does the header gain the empty line it lacked,
// ending like that line). The limited parse has the first fields of the
// full one, within its limits, and writes the others back verbatim. A field
// added at the end and one prepended at the top, whatever their value, are
// exactly two more fields when the result is parsed again: a value can
// never start a field of its own or end the header, nor can the unparsed
// rest. MessageSize is what WriteTo writes.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody"), "value", uint16(5), uint8(1))
	f.Add([]byte("A: 1\r\nB: 2\r\n\tfolded\r\nC: 3\r\nnot a field\r\nbody"), "v", uint16(8), uint8(2))
	f.Add([]byte("a:\r\na:\r\na:\r\na:\r\n\r\n"), "v\r\nBcc: x", uint16(100), uint8(2))
	// One directory for every run: spool files are unlinked as they are
	// made, and a directory per run made the fuzzer crawl.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte, value string, indexBytes uint16, indexFields uint8) {
		// A small limit too, so the too-long path runs.
		if _, err := parse(t, dir, in, transaction.HeaderLimits{MaxBytes: int64(len(in)/2 + 1)}); err != nil && !errors.Is(err, transaction.ErrHeaderTooLong) {
			t.Fatalf("ReadHeader with a small limit: %v", err)
		}
		full, err := parse(t, dir, in, all)
		if err != nil {
			t.Fatalf("ReadHeader: %v", err)
		}
		checkParsed(t, in, full)
		if full.tx.Header.Unparsed() != 0 {
			t.Fatalf("%d bytes unparsed with no limit", full.tx.Header.Unparsed())
		}

		limits := transaction.HeaderLimits{MaxBytes: all.MaxBytes, IndexBytes: int(indexBytes) + 1, IndexFields: int(indexFields)%8 + 1}
		part, err := parse(t, dir, in, limits)
		if err != nil {
			t.Fatalf("ReadHeader with limits %+v: %v", limits, err)
		}
		checkParsed(t, in, part)
		pf, ff := part.tx.Header.Fields(), full.tx.Header.Fields()
		if len(pf) > limits.IndexFields || len(pf) > len(ff) {
			t.Fatalf("%d fields parsed, limit %d, %d in all", len(pf), limits.IndexFields, len(ff))
		}
		var indexed, unparsed int64
		for i, fl := range ff {
			if i < len(pf) {
				if pf[i].Name != fl.Name || !bytes.Equal(pf[i].Raw, fl.Raw) {
					t.Fatalf("field %d is %q, parsed in full %q", i, pf[i].Raw, fl.Raw)
				}
				indexed += int64(len(fl.Raw))
			} else {
				unparsed += int64(len(fl.Raw))
			}
		}
		if indexed > int64(limits.IndexBytes) || part.tx.Header.Unparsed() != unparsed {
			t.Fatalf("parsed %d bytes (limit %d), unparsed %d, want %d", indexed, limits.IndexBytes, part.tx.Header.Unparsed(), unparsed)
		}
		if !bytes.Equal(part.tx.Header.Bytes(), full.tx.Header.Bytes()) {
			t.Fatal("the header with limits is written back unlike the one without")
		}

		for _, p := range []parsed{full, part} {
			h := &p.tx.Header
			n := h.Len()
			h.Add("X-Fuzz", value)
			h.Prepend("Received", value)
			again, err := parse(t, dir, h.Bytes(), all)
			if err != nil {
				t.Fatalf("reparse: %v", err)
			}
			fields := again.tx.Header.Fields()
			if len(fields) != len(ff)+2 || fields[0].Name != "Received" || fields[n+1].Name != "X-Fuzz" {
				t.Fatalf("after Add and Prepend of %q to %d fields: %d fields (want %d) in %q", value, n, len(fields), len(ff)+2, h.Bytes())
			}
			if len(again.body) != 0 || len(again.rest) != 0 {
				t.Fatalf("after Add and Prepend of %q: the header %q ends early", value, h.Bytes())
			}
		}
	})
}

// checkParsed checks that p gives back the input and agrees with itself.
func checkParsed(t *testing.T, in []byte, p parsed) {
	t.Helper()
	tx := p.tx
	h := tx.Header.Bytes()
	var w bytes.Buffer
	if n, err := tx.Header.WriteTo(&w); err != nil || n != int64(w.Len()) || !bytes.Equal(w.Bytes(), h) {
		t.Fatalf("WriteTo wrote %d (%v) %q; Bytes is %q", n, err, w.Bytes(), h)
	}
	if len(p.body) == 0 {
		if got := append(append([]byte{}, h...), p.rest...); !bytes.Equal(got, in) {
			t.Fatalf("untouched header does not reproduce the input:\n in  %q\n out %q", in, got)
		}
	} else {
		if i := bytes.IndexByte(p.body, '\n'); i >= 0 && i != len(p.body)-1 {
			t.Fatalf("ReadHeader wrote more than a line to the body: %q", p.body)
		}
		sep := []byte("\r\n")
		if bytes.HasSuffix(p.body, []byte("\n")) && !bytes.HasSuffix(p.body, sep) {
			sep = []byte("\n")
		}
		if !bytes.HasSuffix(h, sep) {
			t.Fatalf("header %q does not end with the empty line %q it was given", h, sep)
		}
		got := append(append(append([]byte{}, h[:len(h)-len(sep)]...), p.body...), p.rest...)
		if !bytes.Equal(got, in) {
			t.Fatalf("header + first body line + rest does not reproduce the input:\n in  %q\n out %q", in, got)
		}
	}
	var msg bytes.Buffer
	if n, err := tx.WriteTo(&msg); err != nil || n != int64(msg.Len()) || !bytes.Equal(msg.Bytes(), append(append([]byte{}, h...), p.body...)) {
		t.Fatalf("Transaction.WriteTo wrote %d (%v) %q", n, err, msg.Bytes())
	}
	if all, err := io.ReadAll(tx.Message()); err != nil || !bytes.Equal(all, msg.Bytes()) {
		t.Fatalf("Message() gives %q (%v), WriteTo %q", all, err, msg.Bytes())
	}
	if got := tx.MessageSize(); got != int64(msg.Len()) {
		t.Fatalf("MessageSize %d, WriteTo writes %d", got, msg.Len())
	}
	if got := tx.Header.Size(); got != int64(len(h)) {
		t.Fatalf("Header.Size %d, WriteTo writes %d", got, len(h))
	}
	for _, fl := range tx.Header.Fields() {
		if fl.Name == "" || len(fl.Raw) == 0 {
			t.Fatalf("empty field %+v", fl)
		}
		if tx.Header.Get(fl.Name) == "" && fl.Value() != "" && tx.Header.Count(fl.Name) == 1 {
			t.Fatalf("Get(%q) is empty, the field's value %q", fl.Name, fl.Value())
		}
		tx.Header.Values(fl.Name)
	}
}
