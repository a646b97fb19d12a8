// Package state is the key-value store that Sluice's policy plugins keep
// their state in: greylist triplets, ratelimit and karma counters, AUTH
// failure counts, a verification cache. One Store interface, two backends:
//
//   - "bbolt" (the default): one file, state.db under data_dir, that
//     survives a restart and needs no server (go.etcd.io/bbolt). It serves
//     one process: bbolt locks the file, so two smtpd processes cannot
//     share it.
//   - "redis": a Redis server (standalone, Sentinel or Cluster, through
//     go-redis's universal client), which several smtpd processes behind
//     one load balancer share.
//
// Switching is one line of the top-level [state] table:
//
//	[state]
//	backend = "redis"
//	addrs   = ["10.0.0.5:6379"]
//
// A plugin gets the shared settings by giving its settings struct a field
// of type Settings (named "state" by convention): config fills it from the
// [state] table and data_dir before it decodes the plugin's own table, as
// it does [dns] for resolver.Settings.
//
//	type Settings struct {
//		State state.Settings `toml:"state"`
//	}
//
//	st, err := s.State.Open() // in New; st.Close() in the plugin's Close
//	ok, err := st.SetIfAbsent(ctx, "greylist:t:"+triplet, v, time.Hour)
//
// Keys are namespaced by the plugin that owns them ("greylist:...",
// "ratelimit:..."). Every value may have a time to live: expired keys are
// gone for every method at once, and their space is reclaimed in the
// background (bbolt) or by Redis, never by a scan per message. Counters
// (Incr) and set-if-absent are atomic across every process sharing the
// store; a plugin never reads, changes and writes back a value another
// process may change at the same time.
package state

import (
	"context"
	"errors"
	"time"
)

// Store is a key-value store with expiry, safe for concurrent use. A ttl
// of zero means the key does not expire.
type Store interface {
	// Get returns the value of key; ok is false when there is none (or
	// it expired).
	Get(ctx context.Context, key string) (value []byte, ok bool, err error)
	// Set stores value under key, replacing any value, to expire after
	// ttl.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// SetIfAbsent stores value under key only when key has no value; it
	// reports whether it stored it. Of many callers at once, in any
	// number of processes, exactly one wins.
	SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
	// Incr adds delta to the integer under key (a missing key counts as
	// 0) and returns the sum, atomically. The ttl applies when the key is
	// created: a counter expires ttl after its first Incr, which is a
	// fixed window. Get returns a counter as its decimal text. Incr on a
	// value that is not an integer is ErrNotInteger.
	Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error)
	// Delete removes key; a missing key is no error.
	Delete(ctx context.Context, key string) error
	// Close releases this handle of the store. A store opened through
	// Settings.Open is shared: the file or the connections are released
	// when the last handle is closed.
	Close() error
}

// ErrNotInteger is Incr on a key whose value is not a decimal integer.
var ErrNotInteger = errors.New("state: the value is not an integer")

// ErrClosed is a call on a handle that was closed.
var ErrClosed = errors.New("state: the store is closed")
