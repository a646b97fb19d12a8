package monitor

import (
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Recorder keeps the figures of a Snapshot since it was made: the
// connections, the transactions and how they ended, and the time of every
// hook run and plugin call. One Recorder lives as long as the server: the
// chains a reload builds report to the same one. Safe for concurrent use;
// recording allocates nothing once a series exists.
type Recorder struct {
	started time.Time
	open    atomic.Int64
	total   atomic.Uint64
	txs     atomic.Uint64

	mu       sync.RWMutex
	outcomes map[outcomeKey]*atomic.Uint64
	hooks    map[string]*Histogram
	plugins  map[pluginKey]*Histogram
}

type outcomeKey struct {
	result, plugin string
	code           int
}

type pluginKey struct{ plugin, hook string }

// NewRecorder returns a Recorder that counts from now.
func NewRecorder() *Recorder {
	return &Recorder{
		started:  time.Now(),
		outcomes: map[outcomeKey]*atomic.Uint64{},
		hooks:    map[string]*Histogram{},
		plugins:  map[pluginKey]*Histogram{},
	}
}

// ConnOpened counts a connection that opens.
func (r *Recorder) ConnOpened() {
	r.open.Add(1)
	r.total.Add(1)
}

// ConnClosed counts a connection that closes.
func (r *Recorder) ConnClosed() { r.open.Add(-1) }

// TxStarted counts a transaction: a MAIL the server accepted.
func (r *Recorder) TxStarted() { r.txs.Add(1) }

// TxEnded counts a transaction that ended with result (Result*); for a
// refusal, plugin is the deciding plugin ("" when the server itself
// refused) and code the SMTP reply code (0 for ResultAccepted and
// ResultAborted).
func (r *Recorder) TxEnded(result, plugin string, code int) {
	k := outcomeKey{result, plugin, code}
	r.mu.RLock()
	c := r.outcomes[k]
	r.mu.RUnlock()
	if c == nil {
		r.mu.Lock()
		if c = r.outcomes[k]; c == nil {
			c = new(atomic.Uint64)
			r.outcomes[k] = c
		}
		r.mu.Unlock()
	}
	c.Add(1)
}

// Timer returns the function that records the time of plugin's calls at
// hook, or with plugin "" of the hook's whole runs through a chain. It is
// hooks.Meter's method: a chain asks once per series when it is built.
func (r *Recorder) Timer(hook, plugin string) func(time.Duration) {
	return r.Histogram(hook, plugin).Observe
}

// Histogram returns the series of plugin at hook (of the hook's whole run
// when plugin is ""), made on first use.
func (r *Recorder) Histogram(hook, plugin string) *Histogram {
	r.mu.Lock()
	defer r.mu.Unlock()
	if plugin == "" {
		h := r.hooks[hook]
		if h == nil {
			h = new(Histogram)
			r.hooks[hook] = h
		}
		return h
	}
	k := pluginKey{plugin, hook}
	h := r.plugins[k]
	if h == nil {
		h = new(Histogram)
		r.plugins[k] = h
	}
	return h
}

// Each calls fn for every series, hooks (plugin "") first, each group
// sorted by name.
func (r *Recorder) Each(fn func(hook, plugin string, h *Histogram)) {
	type series struct {
		hook, plugin string
		h            *Histogram
	}
	var list []series
	r.mu.RLock()
	for hook, h := range r.hooks {
		list = append(list, series{hook, "", h})
	}
	for k, h := range r.plugins {
		list = append(list, series{k.hook, k.plugin, h})
	}
	r.mu.RUnlock()
	slices.SortFunc(list, func(a, b series) int {
		if c := strings.Compare(a.plugin, b.plugin); c != 0 {
			return c
		}
		return strings.Compare(a.hook, b.hook)
	})
	for _, s := range list {
		fn(s.hook, s.plugin, s.h)
	}
}

// Snapshot returns the figures now. Messages are sorted by result, plugin
// and code; Hooks and Plugins by name.
func (r *Recorder) Snapshot() Snapshot {
	s := Snapshot{
		Started:          r.started,
		ConnectionsOpen:  r.open.Load(),
		ConnectionsTotal: r.total.Load(),
		Transactions:     r.txs.Load(),
		Messages:         []Outcome{},
		Hooks:            []Latency{},
		Plugins:          []Latency{},
	}
	r.mu.RLock()
	for k, c := range r.outcomes {
		o := Outcome{Result: k.result, Plugin: k.plugin, Count: c.Load()}
		if k.code != 0 {
			o.Code = strconv.Itoa(k.code)
		}
		s.Messages = append(s.Messages, o)
	}
	r.mu.RUnlock()
	slices.SortFunc(s.Messages, func(a, b Outcome) int {
		if c := strings.Compare(a.Result, b.Result); c != 0 {
			return c
		}
		if c := strings.Compare(a.Plugin, b.Plugin); c != 0 {
			return c
		}
		return strings.Compare(a.Code, b.Code)
	})
	r.Each(func(hook, plugin string, h *Histogram) {
		if plugin == "" {
			s.Hooks = append(s.Hooks, h.Latency(hook))
		} else {
			s.Plugins = append(s.Plugins, h.Latency(plugin+"/"+hook))
		}
	})
	return s
}

// Count returns the number of transactions that ended with result, over
// every plugin and code.
func (s Snapshot) Count(result string) uint64 {
	var n uint64
	for _, o := range s.Messages {
		if o.Result == result {
			n += o.Count
		}
	}
	return n
}

// The buckets of a Histogram: exact below 8 ns, then 8 per power of two
// (each at most 1/8 of its lower bound wide) up to 2^40 ns (18 minutes);
// longer durations fall in the last. Bucket i holds the durations above
// BucketLow(i) up to and including BucketLow(i+1) (bucket 0 holds 0 and
// 1 ns), so a count of the buckets below i is the count of observations
// <= BucketLow(i): Prometheus' "le".
const (
	subBits  = 3
	subCount = 1 << subBits
	maxExp   = 40
	// BucketCount is the number of buckets of a Histogram.
	BucketCount = subCount + (maxExp-subBits)*subCount
)

// Histogram counts durations in fixed log-scale buckets: bounded memory
// (BucketCount counters), a few atomic adds per observation, percentiles
// within 1/16 of the true value. The zero value is ready to use.
type Histogram struct {
	sum     atomic.Uint64 // ns
	max     atomic.Int64  // ns
	buckets [BucketCount]atomic.Uint64
}

// bucketOf returns the bucket that holds a duration of ns nanoseconds:
// the i with BucketLow(i) < ns <= BucketLow(i+1), bucket 0 for 0 and 1.
func bucketOf(ns uint64) int {
	if ns > 0 {
		ns-- // the upper edge is in the bucket, the lower is not
	}
	if ns < subCount {
		return int(ns)
	}
	e := bits.Len64(ns) - 1
	if e >= maxExp {
		return BucketCount - 1
	}
	return subCount + (e-subBits)*subCount + int((ns>>(e-subBits))&(subCount-1))
}

// BucketLow returns bucket i's lower edge: the bucket holds the durations
// above it, up to and including BucketLow(i+1).
func BucketLow(i int) time.Duration {
	if i < subCount {
		return time.Duration(i)
	}
	e := (i-subCount)/subCount + subBits
	m := (i - subCount) % subCount
	return time.Duration(uint64(subCount+m) << (e - subBits))
}

// Observe records one duration; a negative one counts as 0.
func (h *Histogram) Observe(d time.Duration) {
	ns := max(int64(d), 0)
	h.sum.Add(uint64(ns))
	h.buckets[bucketOf(uint64(ns))].Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			return
		}
	}
}

// Count returns the number of observations and their sum.
func (h *Histogram) Count() (n uint64, sum time.Duration) {
	for i := range h.buckets {
		n += h.buckets[i].Load()
	}
	return n, time.Duration(h.sum.Load())
}

// Buckets copies the bucket counts into dst (BucketCount long) and
// returns it.
func (h *Histogram) Buckets(dst []uint64) []uint64 {
	dst = slices.Grow(dst[:0], BucketCount)[:BucketCount]
	for i := range h.buckets {
		dst[i] = h.buckets[i].Load()
	}
	return dst
}

// Latency sums the histogram up under name.
func (h *Histogram) Latency(name string) Latency {
	b := h.Buckets(nil)
	var n uint64
	for _, c := range b {
		n += c
	}
	l := Latency{Name: name, Count: n, Max: time.Duration(h.max.Load())}
	if n == 0 {
		return l
	}
	l.Mean = time.Duration(h.sum.Load() / n)
	l.P50 = quantile(b, n, 0.50, l.Max)
	l.P99 = quantile(b, n, 0.99, l.Max)
	return l
}

// quantile returns the middle of the bucket that holds the q-th of n
// observations, no more than the largest observed.
func quantile(b []uint64, n uint64, q float64, most time.Duration) time.Duration {
	rank := uint64(q*float64(n) + 0.999999)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range b {
		if seen += c; seen >= rank {
			if i == len(b)-1 { // open-ended
				return most
			}
			low, high := BucketLow(i), BucketLow(i+1)
			if i < subCount {
				return min(high, most)
			}
			return min(low+(high-low)/2, most)
		}
	}
	return most
}
