package fixedwindow_test

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/fixedwindow"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const minute = time.Minute

func TestCountsWithinTheWindowAndStartsAgainAfterIt(t *testing.T) {
	var c fixedwindow.Counter[string]
	for i, at := range []time.Duration{0, 10 * time.Second, 59 * time.Second} {
		if n := c.Add("a", t0.Add(at), minute, 10); n != i+1 {
			t.Fatalf("event %d at +%s: count %d, want %d", i+1, at, n, i+1)
		}
	}
	if n := c.Count("a", t0.Add(59*time.Second), minute); n != 3 {
		t.Fatalf("Count inside the window = %d, want 3", n)
	}
	// The window began with the first event: it is over a minute later,
	// however recent the last event.
	if n := c.Count("a", t0.Add(minute), minute); n != 0 {
		t.Fatalf("Count once the window is over = %d, want 0", n)
	}
	if n := c.Add("a", t0.Add(minute), minute, 10); n != 1 {
		t.Fatalf("first event of the next window: count %d, want 1", n)
	}
	if n := c.Count("b", t0, minute); n != 0 {
		t.Fatalf("Count of a key never seen = %d", n)
	}
}

func TestAFullTableDropsTheOldestWindow(t *testing.T) {
	var c fixedwindow.Counter[int]
	c.Add(1, t0, minute, 2)
	c.Add(1, t0, minute, 2)
	c.Add(2, t0.Add(time.Second), minute, 2)
	c.Add(3, t0.Add(2*time.Second), minute, 2) // full: key 1, the oldest, goes
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want the cap of 2", c.Len())
	}
	now := t0.Add(3 * time.Second)
	if got := [3]int{c.Count(1, now, minute), c.Count(2, now, minute), c.Count(3, now, minute)}; got != [3]int{0, 1, 1} {
		t.Fatalf("counts of keys 1, 2, 3 = %v, want [0 1 1]", got)
	}
	// An event for a key already counted makes no room.
	c.Add(3, now, minute, 2)
	if c.Count(2, now, minute) != 1 || c.Count(3, now, minute) != 2 {
		t.Fatal("counting a tracked key dropped another")
	}
}

func TestExpiredWindowsAreForgottenAtTheNextAdd(t *testing.T) {
	var c fixedwindow.Counter[string]
	c.Add("a", t0, minute, 10)
	c.Add("b", t0.Add(30*time.Second), minute, 10)
	c.Add("c", t0.Add(70*time.Second), minute, 10) // a's window is over, b's is not
	if c.Len() != 2 || c.Count("b", t0.Add(70*time.Second), minute) != 1 {
		t.Fatalf("after a's window: Len %d, want 2 (b and c)", c.Len())
	}
}

func TestForget(t *testing.T) {
	var c fixedwindow.Counter[string]
	c.Add("a", t0, minute, 10)
	c.Add("a", t0, minute, 10)
	c.Forget("a")
	c.Forget("never seen")
	if c.Len() != 0 || c.Count("a", t0, minute) != 0 {
		t.Fatalf("after Forget: Len %d, Count %d", c.Len(), c.Count("a", t0, minute))
	}
	if n := c.Add("a", t0.Add(time.Second), minute, 10); n != 1 {
		t.Fatalf("first event after Forget: count %d, want 1", n)
	}
}
