package hooks

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/transaction"
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
	hc := startHook(context.Background(), nil, 20*time.Millisecond)
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
	hc := startHook(context.Background(), nil, time.Millisecond)
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
	hc := startHook(parent, nil, time.Hour)
	if hc.Value(key{}) != "v" {
		t.Errorf("Value does not reach the parent")
	}
	done := hc.Done()
	cancel()
	waitClosed(t, done, "parent cancelled")
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Errorf("Err = %v, want the parent's Canceled", hc.Err())
	}

	hc = startHook(context.Background(), nil, time.Hour)
	done = hc.Done()
	hc.end()
	waitClosed(t, done, "hook returned")
	if !errors.Is(hc.Err(), context.Canceled) {
		t.Errorf("Err after end = %v, want Canceled", hc.Err())
	}
}

func TestHookContextReusedWithinATransaction(t *testing.T) {
	tx := transaction.New("", 0)
	a := startHook(context.Background(), tx, time.Hour)
	if b := startHook(context.Background(), tx, time.Hour); b == a {
		t.Fatal("a running hook's context was handed out again")
	}
	a = startHook(context.Background(), tx, time.Hour)
	a.end()
	if !errors.Is(a.Err(), context.Canceled) {
		t.Fatalf("Err after end = %v", a.Err())
	}
	b := startHook(context.Background(), tx, time.Hour)
	if b != a {
		t.Fatal("an ended, untouched context was not reused")
	}
	if b.Err() != nil {
		t.Fatalf("the reused context starts with Err = %v", b.Err())
	}
	// Once a plugin took Done, the context is never reused: whoever waits
	// on it sees it closed for good.
	done := b.Done()
	b.end()
	waitClosed(t, done, "ended")
	c := startHook(context.Background(), tx, time.Hour)
	if c == b {
		t.Fatal("a context whose Done was taken was reused")
	}
	if !errors.Is(b.Err(), context.Canceled) {
		t.Errorf("the old context came back to life: Err = %v", b.Err())
	}
}

func TestHookContextAllocatesNothingWhenReused(t *testing.T) {
	tx := transaction.New("", 0)
	startHook(context.Background(), tx, time.Hour).end()
	allocs := testing.AllocsPerRun(100, func() {
		hc := startHook(context.Background(), tx, time.Hour)
		if hc.Err() != nil {
			t.Fatal("Err")
		}
		hc.end()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per reused hook context", allocs)
	}
}
