package hooks

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waitClosed fails unless ch closes before the deadline.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Done never closed", what)
	}
}

func TestHookContextDeadline(t *testing.T) {
	hc := newHookContext(context.Background(), 20*time.Millisecond)
	if err := hc.Err(); err != nil {
		t.Fatalf("Err at start = %v", err)
	}
	d, ok := hc.Deadline()
	if !ok || time.Until(d) > 20*time.Millisecond || time.Until(d) < -time.Second {
		t.Fatalf("Deadline = %v, %v", d, ok)
	}
	waitClosed(t, hc.Done(), "past the deadline")
	if err := hc.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline = %v", err)
	}
	hc.end()
	if err := hc.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after end = %v; the deadline error stays, as with context.WithTimeout", err)
	}
}

func TestHookContextLazyDeadlineWithoutDone(t *testing.T) {
	hc := newHookContext(context.Background(), time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for hc.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Err never reported the deadline")
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(hc.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", hc.Err())
	}
	// Done taken after the deadline is closed at once.
	waitClosed(t, hc.Done(), "Done after the deadline")
}

func TestHookContextParentAndEnd(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	hc := newHookContext(parent, time.Hour)
	if hc.Value(key{}) != "v" {
		t.Errorf("Value does not reach the parent")
	}
	done := hc.Done()
	cancel()
	waitClosed(t, done, "parent cancelled")
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Errorf("Err = %v, want the parent's Canceled", hc.Err())
	}

	hc = newHookContext(context.Background(), time.Hour)
	done = hc.Done()
	hc.end()
	waitClosed(t, done, "hook returned")
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Errorf("Err after end = %v, want Canceled", hc.Err())
	}
}

func TestHookContextStaysDoneAfterEnd(t *testing.T) {
	// Ended without anyone taking Done: Err stays Canceled, and a Done
	// taken later is closed at once.
	hc := newHookContext(context.Background(), time.Hour)
	hc.end()
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Fatalf("Err after end = %v, want Canceled", hc.Err())
	}
	waitClosed(t, hc.Done(), "Done taken after end")
	// A second context, as the next hook gets, does not revive the first.
	next := newHookContext(context.Background(), time.Hour)
	if next == hc || next.Err() != nil {
		t.Fatalf("the next hook's context = %p (Err %v), the ended one %p", next, next.Err(), hc)
	}
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Fatalf("the ended context came back to life: Err = %v", hc.Err())
	}
	next.end()
	// A parent cancelled after the end does not change the error.
	parent, cancel := context.WithCancel(context.Background())
	hc = newHookContext(parent, time.Hour)
	hc.end()
	cancel()
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Fatalf("Err = %v", hc.Err())
	}
}

func TestHookContextAllocatesOnce(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		hc := newHookContext(context.Background(), time.Hour)
		if hc.Err() != nil {
			t.Fatal("Err")
		}
		hc.end()
	})
	if allocs > 1 {
		t.Errorf("%v allocations per hook context, want at most 1", allocs)
	}
}
