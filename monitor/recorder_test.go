package monitor_test

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/monitor"
)

func TestHistogramPercentiles(t *testing.T) {
	var h monitor.Histogram
	// 1..1000 µs: p50 is 500 µs, p99 990 µs, within the buckets' 1/16.
	for i := 1; i <= 1000; i++ {
		h.Observe(time.Duration(i) * time.Microsecond)
	}
	l := h.Latency("rcpt")
	if l.Count != 1000 || l.Max != time.Millisecond || l.Mean != 500500*time.Nanosecond {
		t.Fatalf("count %d max %v mean %v, want 1000, 1ms, 500.5µs", l.Count, l.Max, l.Mean)
	}
	near := func(name string, got, want time.Duration) {
		if d := got - want; d < -want/16 || d > want/16 {
			t.Errorf("%s = %v, want %v ± 1/16", name, got, want)
		}
	}
	near("p50", l.P50, 500*time.Microsecond)
	near("p99", l.P99, 990*time.Microsecond)
}

func TestHistogramSmallAndHuge(t *testing.T) {
	var h monitor.Histogram
	h.Observe(3)
	h.Observe(-5)
	h.Observe(time.Hour)
	l := h.Latency("x")
	if l.Count != 3 || l.Max != time.Hour || l.P50 != 3 {
		t.Fatalf("%+v: want count 3, max 1h, p50 3ns", l)
	}
	if l.P99 != time.Hour {
		t.Errorf("p99 = %v, want the max (1h: past the last bucket, clamped)", l.P99)
	}
}

func TestBucketsAreContiguous(t *testing.T) {
	for i := 1; i < monitor.BucketCount; i++ {
		lo, prev := monitor.BucketLow(i), monitor.BucketLow(i-1)
		if lo <= prev {
			t.Fatalf("bucket %d starts at %d, not above bucket %d's %d", i, lo, i-1, prev)
		}
		if i >= 8 && (lo-prev)*8 > prev+8 {
			t.Fatalf("bucket %d is %d wide from %d: more than 1/8", i-1, lo-prev, prev)
		}
	}
}

func TestRecorderSnapshot(t *testing.T) {
	r := monitor.NewRecorder()
	r.ConnOpened()
	r.ConnOpened()
	r.ConnClosed()
	for range 3 {
		r.TxStarted()
	}
	r.TxEnded(monitor.ResultAccepted, "", 0)
	r.TxEnded(monitor.ResultRefused, "spamassassin", 550)
	r.TxEnded(monitor.ResultRefused, "spamassassin", 550)
	r.Timer("rcpt", "")(time.Millisecond)
	r.Timer("rcpt", "rcptok")(time.Millisecond)
	s := r.Snapshot()
	if s.ConnectionsOpen != 1 || s.ConnectionsTotal != 2 || s.Transactions != 3 {
		t.Fatalf("open %d total %d tx %d, want 1 2 3", s.ConnectionsOpen, s.ConnectionsTotal, s.Transactions)
	}
	want := []monitor.Outcome{{Result: "accepted", Count: 1}, {Result: "refused", Plugin: "spamassassin", Code: "550", Count: 2}}
	if len(s.Messages) != 2 || s.Messages[0] != want[0] || s.Messages[1] != want[1] {
		t.Fatalf("messages %+v, want %+v", s.Messages, want)
	}
	if len(s.Hooks) != 1 || s.Hooks[0].Name != "rcpt" || len(s.Plugins) != 1 || s.Plugins[0].Name != "rcptok/rcpt" || s.Plugins[0].Count != 1 {
		t.Fatalf("hooks %+v plugins %+v", s.Hooks, s.Plugins)
	}
}

// BenchmarkRecordMessage is what one message of 2 recipients costs the
// Recorder: 11 hook runs and 11 plugin calls timed, a transaction started
// and ended.
func BenchmarkRecordMessage(b *testing.B) {
	r := monitor.NewRecorder()
	var timers []func(time.Duration)
	for _, h := range []string{"connect", "helo", "mail", "rcpt", "rcpt", "data", "data_post", "queue", "reset_transaction", "disconnect", "quit"} {
		timers = append(timers, r.Timer(h, ""), r.Timer(h, "p"))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.ConnOpened()
			r.TxStarted()
			for _, t := range timers {
				t(1234 * time.Microsecond)
			}
			r.TxEnded(monitor.ResultAccepted, "", 0)
			r.ConnClosed()
		}
	})
}

// BenchmarkObserve is one duration recorded.
func BenchmarkObserve(b *testing.B) {
	var h monitor.Histogram
	b.ReportAllocs()
	for i := range b.N {
		h.Observe(time.Duration(i & 0xffff))
	}
}
