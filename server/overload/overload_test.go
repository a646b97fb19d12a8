package overload_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server/overload"
)

func TestRateTableWindow(t *testing.T) {
	rt := overload.NewRateTable(3, time.Minute, 100)
	a := netip.MustParseAddr("192.0.2.1")
	t0 := time.Unix(1_000_000, 0)
	for i := range 3 {
		if !rt.Allow(a, t0.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("connection %d of 3 in the window refused", i+1)
		}
	}
	if rt.Allow(a, t0.Add(3*time.Second)) {
		t.Fatal("the 4th connection within a minute was allowed (limit 3)")
	}
	if rt.Allow(a, t0.Add(59*time.Second)) {
		t.Fatal("allowed before the window ended")
	}
	if !rt.Allow(netip.MustParseAddr("192.0.2.2"), t0.Add(59*time.Second)) {
		t.Fatal("another client was refused")
	}
	if !rt.Allow(a, t0.Add(time.Minute)) {
		t.Fatal("refused after the window ended")
	}
}

// The table never tracks more clients than its size, and drops expired
// windows.
func TestRateTableIsBounded(t *testing.T) {
	rt := overload.NewRateTable(1, time.Minute, 3)
	t0 := time.Unix(1_000_000, 0)
	for i := range 10 {
		rt.Allow(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), t0)
	}
	if n := rt.Tracked(); n != 3 {
		t.Fatalf("tracked %d clients; want the size, 3", n)
	}
	// The newest stay counted: the last client is still refused.
	if rt.Allow(netip.AddrFrom4([4]byte{192, 0, 2, 9}), t0.Add(time.Second)) {
		t.Fatal("the newest client's window was evicted")
	}
	rt.Allow(netip.MustParseAddr("198.51.100.1"), t0.Add(2*time.Minute))
	if n := rt.Tracked(); n != 1 {
		t.Fatalf("after the windows expired, tracked %d; want 1", n)
	}
}
