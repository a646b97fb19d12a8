// Package fixedwindow counts events per key in fixed windows, the way
// Postfix's anvil counts connections per client per time unit: a key's
// window opens with its first event and lasts a set time; the count
// starts again after it. The table is bounded: when it is full, the
// oldest window makes room for the new one. The connection-rate limit
// (server/overload) and the AUTH-failure limit (server/authlimit) count
// with it.
package fixedwindow

import (
	"container/list"
	"time"
)

// Counter is a table of windows by key. The zero value is an empty table.
// It is not safe for concurrent use: its owner holds a lock around it.
type Counter[K comparable] struct {
	windows map[K]*list.Element // of *window[K]
	order   list.List           // oldest window first: start never decreases
}

type window[K comparable] struct {
	key   K
	start time.Time
	n     int
}

// Add counts one event for key at now and returns the count of key's
// window, this event included. Windows that began length or more before
// now are forgotten first; a key without a window opens one at now,
// after the oldest windows are dropped to keep at most most keys.
func (c *Counter[K]) Add(key K, now time.Time, length time.Duration, most int) int {
	// The windows are in the order they began: expired ones first.
	for e := c.order.Front(); e != nil && now.Sub(e.Value.(*window[K]).start) >= length; e = c.order.Front() {
		c.drop(e)
	}
	e := c.windows[key]
	if e == nil {
		if c.windows == nil {
			c.windows = map[K]*list.Element{}
		}
		for len(c.windows) >= max(most, 1) {
			c.drop(c.order.Front())
		}
		e = c.order.PushBack(&window[K]{key: key, start: now})
		c.windows[key] = e
	}
	w := e.Value.(*window[K])
	w.n++
	return w.n
}

// Count returns the count of key's window at now: 0 when key has none,
// or when it began length or more before now.
func (c *Counter[K]) Count(key K, now time.Time, length time.Duration) int {
	e := c.windows[key]
	if e == nil {
		return 0
	}
	if w := e.Value.(*window[K]); now.Sub(w.start) < length {
		return w.n
	}
	return 0
}

// Forget drops key's window: its next event opens a new one.
func (c *Counter[K]) Forget(key K) {
	if e := c.windows[key]; e != nil {
		c.drop(e)
	}
}

// Len returns how many keys have a window, expired ones not yet dropped
// included.
func (c *Counter[K]) Len() int { return len(c.windows) }

func (c *Counter[K]) drop(e *list.Element) {
	delete(c.windows, e.Value.(*window[K]).key)
	c.order.Remove(e)
}
