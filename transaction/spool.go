package transaction

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// DefaultSpoolMemory is how many bytes of a message body stay in memory
// before the spool moves to a temporary file.
const DefaultSpoolMemory = 256 << 10

// Spool holds a message body while it is received: in memory up to a
// threshold, then in an unlinked temporary file, so a large message is never
// held whole in memory and a crash or a vanished client leaves no file
// behind. Write it once, then read it any number of times with Reader.
type Spool struct {
	dir       string
	threshold int64
	mem       bytes.Buffer
	file      *os.File
	size      int64
	budget    *Budget // shared with other spools; nil: no shared cap
	reserved  int64   // bytes of mem counted against budget
}

// NewSpool returns a spool that keeps up to threshold bytes in memory and
// then writes to a temporary file in dir ("" means os.TempDir()).
func NewSpool(dir string, threshold int64) *Spool {
	if threshold < 0 {
		threshold = 0
	}
	return &Spool{dir: dir, threshold: threshold}
}

// UseBudget makes the spool count its memory against b, shared with other
// spools: past b's limit the spool moves to its file even below its own
// threshold. Call it before the first Write. Spools made from a
// transaction's body (Transaction.Scratch, ReplaceBody, the unparsed
// header's) share the body's budget.
func (s *Spool) UseBudget(b *Budget) { s.budget = b }

// Write appends p to the spool.
func (s *Spool) Write(p []byte) (int, error) {
	if s.file == nil {
		want := int64(s.mem.Len() + len(p))
		if want > s.threshold || want > s.reserved && !s.reserve(want-s.reserved) {
			if err := s.toFile(); err != nil {
				return 0, err
			}
		}
	}
	var n int
	var err error
	if s.file != nil {
		n, err = s.file.Write(p)
	} else {
		n, err = s.mem.Write(p)
	}
	s.size += int64(n)
	return n, err
}

// reserve counts n more bytes of memory against the budget.
func (s *Spool) reserve(n int64) bool {
	if !s.budget.reserve(n) {
		return false
	}
	s.reserved += n
	return true
}

// unreserve gives the spool's memory back to the budget.
func (s *Spool) unreserve() {
	s.budget.release(s.reserved)
	s.reserved = 0
}

func (s *Spool) toFile() error {
	// Unlinked from the start: the data lives as long as the descriptor,
	// and nothing is left behind if the process dies.
	f, err := createUnlinked(s.dir)
	if err != nil {
		return fmt.Errorf("spool: create a temporary file in %q: %w", s.dir, err)
	}
	if _, err := f.Write(s.mem.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("spool: write to the temporary file: %w", err)
	}
	s.mem = bytes.Buffer{}
	s.unreserve()
	s.file = f
	return nil
}

// Size returns the number of bytes written.
func (s *Spool) Size() int64 { return s.size }

// InMemory reports whether the spool has not yet moved to a file.
func (s *Spool) InMemory() bool { return s.file == nil }

// Reader returns a reader over everything written so far. Readers are
// independent; each starts at the beginning.
func (s *Spool) Reader() io.Reader {
	if s.file != nil {
		return io.NewSectionReader(s.file, 0, s.size)
	}
	return bytes.NewReader(s.mem.Bytes())
}

// Close releases the memory or the temporary file. The spool is empty and
// usable again afterwards.
func (s *Spool) Close() error {
	var err error
	if s.file != nil {
		err = s.file.Close()
		s.file = nil
	}
	s.mem = bytes.Buffer{}
	s.unreserve()
	s.size = 0
	return err
}
