package transaction

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
)

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading the spool: %v", err)
	}
	return string(b)
}

func TestSpoolStaysInMemoryUpToTheThreshold(t *testing.T) {
	dir := t.TempDir()
	s := NewSpool(dir, 10)
	defer s.Close()
	for _, p := range []string{"01234", "56789"} {
		if n, err := s.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if !s.InMemory() || s.Size() != 10 {
		t.Fatalf("10 bytes with threshold 10: InMemory %v, Size %d", s.InMemory(), s.Size())
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Fatalf("in memory, yet the spool dir holds %v", got)
	}
	if got := readAll(t, s.Reader()); got != "0123456789" {
		t.Fatalf("Reader = %q", got)
	}
}

func TestSpoolMovesToAnUnlinkedFile(t *testing.T) {
	dir := t.TempDir()
	s := NewSpool(dir, 10)
	s.Write([]byte("0123456789"))
	s.Write([]byte("X")) // one byte past the threshold
	if s.InMemory() {
		t.Fatal("11 bytes with threshold 10: still in memory")
	}
	big := strings.Repeat("abcdefgh", 64<<10) // 512 KiB
	if n, err := s.Write([]byte(big)); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	want := "0123456789X" + big
	if s.Size() != int64(len(want)) {
		t.Fatalf("Size = %d, want %d", s.Size(), len(want))
	}
	// The temporary file is unlinked at once: nothing in the directory,
	// even while the spool is in use.
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Fatalf("the spool left %v in its directory", got)
	}
	// Readers are independent and can be read any number of times.
	r1, r2 := s.Reader(), s.Reader()
	head := make([]byte, 5)
	if _, err := io.ReadFull(r1, head); err != nil || string(head) != "01234" {
		t.Fatalf("first reader: %q, %v", head, err)
	}
	if got := readAll(t, r2); got != want {
		t.Fatalf("second reader: %d bytes, want %d", len(got), len(want))
	}
	if got := readAll(t, r1); got != want[5:] {
		t.Fatal("the first reader lost its place when the second read")
	}
	if got := readAll(t, s.Reader()); got != want {
		t.Fatal("a third reader differs")
	}
	// Writing after reading appends; a new reader sees it.
	s.Write([]byte("tail"))
	if got := readAll(t, s.Reader()); got != want+"tail" {
		t.Fatal("a write after reading was lost")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Size() != 0 || !s.InMemory() || readAll(t, s.Reader()) != "" {
		t.Fatalf("after Close: Size %d, InMemory %v", s.Size(), s.InMemory())
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Fatalf("after Close the directory holds %v", got)
	}
}

func TestSpoolThresholdZeroAndReuse(t *testing.T) {
	dir := t.TempDir()
	s := NewSpool(dir, -5) // negative means 0: straight to a file
	s.Write([]byte("a"))
	if s.InMemory() {
		t.Fatal("threshold 0: a byte stayed in memory")
	}
	s.Close()
	// Usable again after Close, starting empty.
	s.Write([]byte("second"))
	if got := readAll(t, s.Reader()); got != "second" {
		t.Fatalf("after Close and Write: %q", got)
	}
	s.Close()
}

func TestSpoolCloseFreesMemory(t *testing.T) {
	s := NewSpool(t.TempDir(), 1<<20)
	s.Write(bytes.Repeat([]byte("x"), 1000))
	s.Close()
	if s.Size() != 0 || s.mem.Cap() != 0 {
		t.Fatalf("after Close: Size %d, buffer cap %d", s.Size(), s.mem.Cap())
	}
}

func TestSpoolCloseClosesTheFile(t *testing.T) {
	s := NewSpool(t.TempDir(), 0)
	s.Write([]byte("data"))
	f := s.file
	s.Close()
	if _, err := f.Write([]byte("x")); err == nil {
		t.Fatal("the temporary file is still open after Close")
	}
}

func TestSpoolBadDir(t *testing.T) {
	s := NewSpool(t.TempDir()+"/missing", 1)
	if _, err := s.Write([]byte("two")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Write to a missing dir: %v", err)
	}
}

func TestTransactionClose(t *testing.T) {
	dir := t.TempDir()
	tx := New(dir, 0)
	if tx.ID == "" || tx.Started.IsZero() || tx.Body == nil {
		t.Fatalf("New: %+v", tx)
	}
	if other := New(dir, 0); other.ID == tx.ID {
		t.Fatal("two transactions share an id")
	}
	tx.Body.Write([]byte("body"))
	if err := tx.Close(); err != nil {
		t.Fatal(err)
	}
	if tx.Body.Size() != 0 {
		t.Fatal("Close kept the body")
	}
	if err := (&Transaction{}).Close(); err != nil {
		t.Fatal("Close of a zero Transaction failed")
	}
}
