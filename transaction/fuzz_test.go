package transaction_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/sluice-mta/sluice/transaction"
)

// parse reads a header from b the way the server does.
func parse(t *testing.T, b []byte, max int64) (*transaction.Transaction, []byte, []byte, error) {
	t.Helper()
	tx := transaction.New("", 1<<10) // the body is never written
	br := bufio.NewReaderSize(bytes.NewReader(b), 16)
	pending, err := tx.ReadHeader(br, max)
	rest, rerr := io.ReadAll(br)
	if rerr != nil {
		t.Fatal(rerr)
	}
	return tx, pending, rest, err
}

// FuzzReadHeader parses the start of a message as a header. Untouched, the
// header written back, then the first body line the parser handed back and
// the unread rest, give the input byte for byte (only when a line that is
// no field ended the header does the header gain the empty line it lacked,
// ending like that line). A field added at the end and one prepended at the
// top, whatever their value, are exactly two more fields when the result
// is parsed again: a value can never start a field of its own or end the
// header. MessageSize is what WriteTo writes.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody"), "value")
	f.Fuzz(func(t *testing.T, in []byte, value string) {
		// A small limit too, so the too-long path runs.
		if _, _, _, err := parse(t, in, int64(len(in)/2)); err != nil && !errors.Is(err, transaction.ErrHeaderTooLong) {
			t.Fatalf("ReadHeader with a small limit: %v", err)
		}
		tx, pending, rest, err := parse(t, in, 1<<20)
		if err != nil {
			t.Fatalf("ReadHeader: %v", err)
		}
		h := tx.Header.Bytes()
		var w bytes.Buffer
		if n, err := tx.Header.WriteTo(&w); err != nil || n != int64(w.Len()) || !bytes.Equal(w.Bytes(), h) {
			t.Fatalf("WriteTo wrote %d (%v) %q; Bytes is %q", n, err, w.Bytes(), h)
		}
		if pending == nil {
			if got := append(h, rest...); !bytes.Equal(got, in) {
				t.Fatalf("untouched header does not reproduce the input:\n in  %q\n out %q", in, got)
			}
		} else {
			sep := []byte("\r\n")
			if bytes.HasSuffix(pending, []byte("\n")) && !bytes.HasSuffix(pending, sep) {
				sep = []byte("\n")
			}
			if !bytes.HasSuffix(h, sep) {
				t.Fatalf("header %q does not end with the empty line %q it was given", h, sep)
			}
			got := append(append(append([]byte{}, h[:len(h)-len(sep)]...), pending...), rest...)
			if !bytes.Equal(got, in) {
				t.Fatalf("header + first body line + rest does not reproduce the input:\n in  %q\n out %q", in, got)
			}
		}
		if got := tx.MessageSize(); got != int64(len(h)) {
			t.Fatalf("MessageSize %d, WriteTo writes %d", got, len(h))
		}
		for _, fl := range tx.Header.Fields() {
			if fl.Name == "" || len(fl.Raw) == 0 {
				t.Fatalf("empty field %+v", fl)
			}
			tx.Header.Get(fl.Name)
			tx.Header.Values(fl.Name)
		}

		n := tx.Header.Len()
		tx.Header.Add("X-Fuzz", value)
		tx.Header.Prepend("Received", value)
		again, _, _, err := parse(t, tx.Header.Bytes(), 1<<22)
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		fields := again.Header.Fields()
		if len(fields) != n+2 || fields[0].Name != "Received" || fields[len(fields)-1].Name != "X-Fuzz" {
			t.Fatalf("after Add and Prepend of %q: %d fields (want %d) in %q", value, len(fields), n+2, tx.Header.Bytes())
		}
	})
}
