package lookup

import (
	"context"
	"io"
	"sync"
	"time"
)

// maxCached bounds a cache: when full, expired answers are dropped, and
// if none is, the whole cache is (a burst of new keys costs lookups, not
// memory).
const maxCached = 10000

// cached remembers a remote table's answers for a short while.
type cached struct {
	t        Table
	pos, neg time.Duration
	now      func() time.Time

	mu sync.Mutex
	m  map[string]answer
}

type answer struct {
	value   string
	found   bool
	expires time.Time
}

// withCache puts a cache in front of t, unless both durations are
// disabled.
func withCache(t Table, s Spec) Table {
	pos, neg := s.Cache, s.NegativeCache
	if pos == 0 {
		pos = DefaultCache
	}
	if neg == 0 {
		neg = pos
	}
	if pos < 0 && neg < 0 {
		return t
	}
	return &cached{t: t, pos: pos, neg: neg, now: time.Now, m: map[string]answer{}}
}

// Lookup answers from the cache or asks the table. Errors are not cached.
func (c *cached) Lookup(ctx context.Context, key string) (string, bool, error) {
	now := c.now()
	c.mu.Lock()
	a, ok := c.m[key]
	c.mu.Unlock()
	if ok && now.Before(a.expires) {
		return a.value, a.found, nil
	}
	v, found, err := c.t.Lookup(ctx, key)
	if err != nil {
		return "", false, err
	}
	ttl := c.pos
	if !found {
		ttl = c.neg
	}
	if ttl > 0 {
		c.mu.Lock()
		if len(c.m) >= maxCached {
			for k, a := range c.m {
				if !now.Before(a.expires) {
					delete(c.m, k)
				}
			}
			if len(c.m) >= maxCached {
				clear(c.m)
			}
		}
		c.m[key] = answer{v, found, now.Add(ttl)}
		c.mu.Unlock()
	}
	return v, found, nil
}

// Close closes the table behind the cache.
func (c *cached) Close() error {
	if cl, ok := c.t.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}
