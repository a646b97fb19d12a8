package ratelimit

import "time"

// SetClock replaces the clock the windows are measured with, and restarts
// the counters' time base on it.
func (p *Plugin) SetClock(now func() time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = now
	p.base = now()
	p.swept = 0
	clear(p.keys)
}

// Keys returns how many keys the plugin keeps counters for.
func (p *Plugin) Keys() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.keys)
}

// Take is take, for the concurrency test.
func (p *Plugin) Take(key string) (int, bool) { return p.take(key) }
