package hooks_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// countingMeter counts the durations each series got.
type countingMeter struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *countingMeter) Timer(hook, plugin string) func(time.Duration) {
	name := hook + "/" + plugin
	m.mu.Lock()
	m.n[name] = 0
	m.mu.Unlock()
	return func(d time.Duration) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if d < 0 {
			panic("negative duration")
		}
		m.n[name]++
	}
}

type declineRcpt struct{}

func (declineRcpt) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Result{}
}

type denyRcpt struct{}

func (denyRcpt) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Result{Code: hooks.Deny}
}

func TestMeterTimesHooksAndPlugins(t *testing.T) {
	m := &countingMeter{n: map[string]int{}}
	ch, err := hooks.NewChain([]hooks.Instance{{Name: "a", Plugin: declineRcpt{}}, {Name: "b", Plugin: denyRcpt{}}, {Name: "c", Plugin: declineRcpt{}}},
		hooks.Options{Meter: m})
	if err != nil {
		t.Fatal(err)
	}
	c := connection.New("mx", "mx.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:40000"))
	for range 3 {
		if d := ch.Rcpt(context.Background(), c, nil, "x@example.test"); d.Result.Code != hooks.Deny || d.Plugin != "b" {
			t.Fatalf("decision %+v, want b's Deny", d)
		}
	}
	want := map[string]int{"rcpt/": 3, "rcpt/a": 3, "rcpt/b": 3}
	got := map[string]int{}
	for k, v := range m.n {
		if v > 0 {
			got[k] = v
		}
	}
	if len(got) != len(want) {
		t.Fatalf("series %v, want %v (c never ran)", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d durations, want %d", k, got[k], v)
		}
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m.n {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Contains(keys, "rcpt/c") {
		t.Errorf("series %v: the chain should ask for c's timer when built", keys)
	}
}
