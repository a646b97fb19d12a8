// Package statetest is the test suite every state.Store backend passes,
// and a real redis-server for tests that need one.
//
//	func TestBolt(t *testing.T) {
//		statetest.Run(t, func(t *testing.T) state.Store { ... })
//	}
package statetest

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/state"
)

// Open opens the store the settings name and closes it when the test
// ends.
func Open(t testing.TB, s state.Settings) state.Store {
	t.Helper()
	st, err := s.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Run runs the suite against the stores open returns. Each subtest opens
// its own (open may return stores that share data: the subtests use
// distinct keys) and closes it when it ends. reopen, when not nil, closes
// a store and opens the same data again, for the test that values survive
// a restart.
func Run(t *testing.T, open func(t *testing.T) state.Store, reopen func(t *testing.T, st state.Store) state.Store) {
	ctx := context.Background()
	// A prefix per run: a Redis server started once serves every run.
	run := strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	key := func(t *testing.T, k string) string { return "statetest:" + run + t.Name() + ":" + k }

	t.Run("GetSet", func(t *testing.T) {
		st := open(t)
		k := key(t, "a")
		if _, ok, err := st.Get(ctx, k); ok || err != nil {
			t.Fatalf("Get of a missing key = ok %v, err %v; want not found", ok, err)
		}
		must(t, st.Set(ctx, k, []byte("one"), 0))
		expectValue(t, st, k, "one")
		must(t, st.Set(ctx, k, []byte("two"), time.Hour))
		expectValue(t, st, k, "two")
		must(t, st.Set(ctx, k, nil, 0))
		expectValue(t, st, k, "")
		must(t, st.Delete(ctx, k))
		expectMissing(t, st, k)
		must(t, st.Delete(ctx, k)) // a missing key is no error
		bin := []byte{0, 1, 2, 0xff, '\n'}
		must(t, st.Set(ctx, key(t, "bin"), bin, 0))
		expectValue(t, st, key(t, "bin"), string(bin))
	})

	t.Run("Expiry", func(t *testing.T) {
		st := open(t)
		short, long := key(t, "short"), key(t, "long")
		must(t, st.Set(ctx, short, []byte("x"), 50*time.Millisecond))
		must(t, st.Set(ctx, long, []byte("y"), time.Hour))
		expectValue(t, st, short, "x")
		waitMissing(t, st, short)
		expectValue(t, st, long, "y")
		// An expired key is absent for SetIfAbsent and Incr too.
		ok, err := st.SetIfAbsent(ctx, short, []byte("z"), time.Hour)
		if err != nil || !ok {
			t.Fatalf("SetIfAbsent on an expired key = %v, %v; want true", ok, err)
		}
		expectValue(t, st, short, "z")
		c := key(t, "counter")
		if n, err := st.Incr(ctx, c, 5, 50*time.Millisecond); n != 5 || err != nil {
			t.Fatalf("Incr = %d, %v; want 5", n, err)
		}
		// Incr keeps the expiry set on create: a fixed window.
		if n, err := st.Incr(ctx, c, 1, time.Hour); n != 6 || err != nil {
			t.Fatalf("Incr = %d, %v; want 6", n, err)
		}
		waitMissing(t, st, c)
		if n, err := st.Incr(ctx, c, 1, time.Hour); n != 1 || err != nil {
			t.Fatalf("Incr after the window = %d, %v; want 1", n, err)
		}
		// Set replaces an expiry with none.
		k := key(t, "reset")
		must(t, st.Set(ctx, k, []byte("a"), 50*time.Millisecond))
		must(t, st.Set(ctx, k, []byte("b"), 0))
		time.Sleep(100 * time.Millisecond) // past the first expiry: asserting it did not happen
		expectValue(t, st, k, "b")
	})

	t.Run("SetIfAbsentRace", func(t *testing.T) {
		st := open(t)
		for round := range 5 {
			k := key(t, strconv.Itoa(round))
			var wins atomic.Int32
			var winner atomic.Value
			var wg sync.WaitGroup
			for g := range 32 {
				wg.Go(func() {
					ok, err := st.SetIfAbsent(ctx, k, []byte(strconv.Itoa(g)), time.Hour)
					if err != nil {
						t.Error(err)
					}
					if ok {
						wins.Add(1)
						winner.Store(strconv.Itoa(g))
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("%d callers of SetIfAbsent won; want exactly 1", wins.Load())
			}
			expectValue(t, st, k, winner.Load().(string))
		}
	})

	t.Run("IncrConcurrent", func(t *testing.T) {
		st := open(t)
		k := key(t, "n")
		const workers, each = 16, 25
		var wg sync.WaitGroup
		seen := make([]atomic.Bool, workers*each*2+1)
		for range workers {
			wg.Go(func() {
				for range each {
					n, err := st.Incr(ctx, k, 2, time.Hour)
					if err != nil {
						t.Error(err)
						return
					}
					if n <= 0 || int(n) >= len(seen) || seen[n].Swap(true) {
						t.Errorf("Incr returned %d twice or out of range: not atomic", n)
					}
				}
			})
		}
		wg.Wait()
		expectValue(t, st, k, strconv.Itoa(workers*each*2))
		if n, err := st.Incr(ctx, k, -workers*each*2, 0); n != 0 || err != nil {
			t.Fatalf("Incr by a negative delta = %d, %v; want 0", n, err)
		}
		must(t, st.Set(ctx, key(t, "text"), []byte("abc"), 0))
		if _, err := st.Incr(ctx, key(t, "text"), 1, 0); !errors.Is(err, state.ErrNotInteger) {
			t.Fatalf("Incr on text: err = %v; want ErrNotInteger", err)
		}
		expectValue(t, st, key(t, "text"), "abc")
	})

	t.Run("Closed", func(t *testing.T) {
		st := open(t)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Get(ctx, key(t, "x")); !errors.Is(err, state.ErrClosed) {
			t.Fatalf("Get after Close: err = %v; want ErrClosed", err)
		}
		if err := st.Close(); err != nil {
			t.Fatalf("a second Close: %v", err)
		}
	})

	t.Run("Canceled", func(t *testing.T) {
		st := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := st.Set(cctx, key(t, "x"), []byte("y"), 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("Set with a canceled context: err = %v; want context.Canceled", err)
		}
	})

	if reopen != nil {
		t.Run("Reopen", func(t *testing.T) {
			st := open(t)
			must(t, st.Set(ctx, key(t, "kept"), []byte("v"), time.Hour))
			must(t, st.Set(ctx, key(t, "gone"), []byte("v"), 50*time.Millisecond))
			if _, err := st.Incr(ctx, key(t, "n"), 7, time.Hour); err != nil {
				t.Fatal(err)
			}
			st = reopen(t, st)
			expectValue(t, st, key(t, "kept"), "v")
			expectValue(t, st, key(t, "n"), "7")
			waitMissing(t, st, key(t, "gone"))
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func expectValue(t *testing.T, st state.Store, k, want string) {
	t.Helper()
	v, ok, err := st.Get(context.Background(), k)
	if err != nil || !ok || !bytes.Equal(v, []byte(want)) {
		t.Fatalf("Get(%q) = %q, %v, %v; want %q", k, v, ok, err, want)
	}
}

func expectMissing(t *testing.T, st state.Store, k string) {
	t.Helper()
	if v, ok, err := st.Get(context.Background(), k); ok || err != nil {
		t.Fatalf("Get(%q) = %q, %v, %v; want not found", k, v, ok, err)
	}
}

// waitMissing waits, up to 5 seconds, for k to expire.
func waitMissing(t *testing.T, st state.Store, k string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, ok, err := st.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q did not expire within 5s", k)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
