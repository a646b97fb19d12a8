// Package notes is the key/value store that plugins share: one Notes per
// connection and one per transaction, as qpsmtpd's connection->notes and
// transaction->notes.
//
// Keys are "<plugin>.<key>" by convention ("dnsbl.listed"), so two plugins
// never collide. Use the typed helpers Get and Lookup instead of type
// assertions:
//
//	notes.Set(c.Notes, "dnsbl.zone", "zen.example.net")
//	zone := notes.Get[string](c.Notes, "dnsbl.zone")
package notes

import (
	"maps"
	"slices"
	"sync"
)

// Notes is a concurrency-safe map of notes. The zero value is ready to use.
type Notes struct {
	mu sync.RWMutex
	m  map[string]any
}

// Set stores v under key, replacing any earlier value.
func (n *Notes) Set(key string, v any) {
	n.mu.Lock()
	if n.m == nil {
		n.m = make(map[string]any, 4)
	}
	n.m[key] = v
	n.mu.Unlock()
}

// Value returns the value stored under key, or nil.
func (n *Notes) Value(key string) any {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.m[key]
}

// Delete removes key.
func (n *Notes) Delete(key string) {
	n.mu.Lock()
	delete(n.m, key)
	n.mu.Unlock()
}

// Clear removes every note.
func (n *Notes) Clear() {
	n.mu.Lock()
	clear(n.m)
	n.mu.Unlock()
}

// Keys returns the keys in sorted order.
func (n *Notes) Keys() []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return slices.Sorted(maps.Keys(n.m))
}

// Set stores v under key in n. It is the typed twin of Get.
func Set[T any](n *Notes, key string, v T) { n.Set(key, v) }

// Lookup returns the value under key and whether it is there with type T.
func Lookup[T any](n *Notes, key string) (T, bool) {
	v, ok := n.Value(key).(T)
	return v, ok
}

// Get returns the value under key, or T's zero value when the key is absent
// or holds another type.
func Get[T any](n *Notes, key string) T {
	v, _ := Lookup[T](n, key)
	return v
}

// Add adds delta to the integer note under key and returns the new value:
// a counter shared by plugins (e.g. "naughty.score").
func Add(n *Notes, key string, delta int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = make(map[string]any, 4)
	}
	v, _ := n.m[key].(int)
	v += delta
	n.m[key] = v
	return v
}
