package transaction

import (
	"bufio"
	"strings"
	"sync"
	"testing"
)

func TestBudgetSpillsPastTheSharedLimit(t *testing.T) {
	dir := t.TempDir()
	b := NewBudget(100)
	a, c := NewSpool(dir, 1000), NewSpool(dir, 1000)
	a.UseBudget(b)
	c.UseBudget(b)
	a.Write([]byte(strings.Repeat("a", 60)))
	if !a.InMemory() || b.Used() != 60 {
		t.Fatalf("60 bytes in a budget of 100: InMemory %v, Used %d; want true, 60", a.InMemory(), b.Used())
	}
	c.Write([]byte(strings.Repeat("c", 50))) // 110 > 100: c spills
	if c.InMemory() || b.Used() != 60 {
		t.Fatalf("50 more bytes past the budget: c InMemory %v, Used %d; want false, 60", c.InMemory(), b.Used())
	}
	c.Write([]byte("more"))
	if got := readAll(t, c.Reader()); got != strings.Repeat("c", 50)+"more" {
		t.Fatalf("the spilled spool reads %q", got)
	}
	a.Write([]byte(strings.Repeat("a", 40))) // exactly 100
	if !a.InMemory() || b.Used() != 100 {
		t.Fatalf("up to the budget exactly: InMemory %v, Used %d; want true, 100", a.InMemory(), b.Used())
	}
	a.Write([]byte("x")) // past it: a spills and gives its 100 back
	if a.InMemory() || b.Used() != 0 {
		t.Fatalf("a spilled: InMemory %v, Used %d; want false, 0", a.InMemory(), b.Used())
	}
	a.Close()
	c.Close()
	if b.Used() != 0 {
		t.Fatalf("after Close, Used = %d; want 0", b.Used())
	}
}

func TestBudgetReleasedOnCloseAndReuse(t *testing.T) {
	b := NewBudget(1 << 20)
	s := NewSpool(t.TempDir(), 1000)
	s.UseBudget(b)
	s.Write([]byte("hello"))
	if b.Used() != 5 {
		t.Fatalf("Used = %d; want 5", b.Used())
	}
	s.Close()
	if b.Used() != 0 {
		t.Fatalf("after Close, Used = %d; want 0", b.Used())
	}
	s.Write([]byte("again")) // a closed spool is usable again, still budgeted
	if b.Used() != 5 {
		t.Fatalf("reused: Used = %d; want 5", b.Used())
	}
	s.Close()
	s.Close() // twice: nothing given back twice
	if b.Used() != 0 {
		t.Fatalf("after two Closes, Used = %d; want 0", b.Used())
	}
}

// The body, the unparsed header part and the spools a plugin makes from
// the transaction all count against the body's budget, and Close gives it
// all back.
func TestBudgetCoversTheTransaction(t *testing.T) {
	b := NewBudget(1 << 20)
	tx := New(t.TempDir(), 1<<20)
	tx.Body.UseBudget(b)
	hdr := "Subject: hi\r\n" + strings.Repeat("X-Long: "+strings.Repeat("y", 70)+"\r\n", 40) + "\r\n"
	if err := tx.ReadHeader(bufio.NewReader(strings.NewReader(hdr+"body\r\n")), HeaderLimits{IndexFields: 2}); err != nil {
		t.Fatal(err)
	}
	if tx.Header.Unparsed() == 0 || b.Used() == 0 {
		t.Fatalf("unparsed %d, Used %d: want the header's rest spooled against the budget", tx.Header.Unparsed(), b.Used())
	}
	scratch := tx.Scratch()
	scratch.Write([]byte("12345"))
	before := b.Used()
	if err := tx.ReplaceBody(strings.NewReader("new body\r\n")); err != nil {
		t.Fatal(err)
	}
	if b.Used() != before+int64(len("new body\r\n")) {
		t.Fatalf("ReplaceBody: Used = %d; want %d", b.Used(), before+10)
	}
	scratch.Close()
	tx.Close()
	if b.Used() != 0 {
		t.Fatalf("after the transaction's Close, Used = %d; want 0", b.Used())
	}
}

func TestBudgetConcurrent(t *testing.T) {
	b := NewBudget(4096)
	dir := t.TempDir()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				s := NewSpool(dir, 1024)
				s.UseBudget(b)
				for range 4 {
					s.Write([]byte(strings.Repeat("z", 100)))
					if u := b.Used(); u > 4096 {
						t.Errorf("Used = %d past the limit 4096", u)
					}
				}
				s.Close()
			}
		}()
	}
	wg.Wait()
	if b.Used() != 0 {
		t.Fatalf("Used = %d after every spool closed; want 0", b.Used())
	}
}
