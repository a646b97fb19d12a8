// Package notes is the key/value store that plugins share: one Notes per
// connection and one per transaction, as qpsmtpd's connection->notes and
// transaction->notes.
//
// A note is read and written only through a typed key, a Key[T] made once
// with NewKey and named "<plugin>.<key>" ("dnsbl.zone"), so two plugins
// never collide, and a reader that expects another type than the writer
// stored does not compile. The plugin that owns a note declares its key as
// an exported package-level variable (dnsbl.NoteZone); other plugins and
// tests import it rather than spell the name again. The package example
// shows both sides.
//
// Add keeps an int counter under a Key[int]. Notes.Keys and Notes.Value
// list and read notes by name, untyped, for dumping them (logs, tests).
package notes

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Notes is a concurrency-safe map of notes. The zero value is ready to use.
type Notes struct {
	mu sync.RWMutex
	m  map[string]any
}

// Value returns the value stored under the note named name, or nil. It is
// for dumping notes; plugins read them with Key.Get or Key.Lookup.
func (n *Notes) Value(name string) any {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.m[name]
}

// Keys returns the names of the notes, sorted.
func (n *Notes) Keys() []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return slices.Sorted(maps.Keys(n.m))
}

// Clear removes every note.
func (n *Notes) Clear() {
	n.mu.Lock()
	clear(n.m)
	n.mu.Unlock()
}

// set stores v under name.
func (n *Notes) set(name string, v any) {
	n.mu.Lock()
	if n.m == nil {
		n.m = make(map[string]any, 4)
	}
	n.m[name] = v
	n.mu.Unlock()
}

// Key names a note that holds a value of type T. Make keys with NewKey, once,
// as package-level variables; the zero Key is not a usable key.
type Key[T any] struct{ name string }

// NewKey returns the key of the note named name, which must be
// "<plugin>.<key>": the plugin's registered name, a dot and the note's own
// name ("dnsbl.zone", "auth.user"). It panics on any other shape, as
// regexp.MustCompile does: keys are made at package initialisation, where
// a bad name is a programming error.
func NewKey[T any](name string) Key[T] {
	plugin, key, ok := strings.Cut(name, ".")
	if !ok || plugin == "" || key == "" || strings.ContainsAny(name, " \t\r\n") {
		panic(fmt.Sprintf("notes.NewKey(%q): want a name \"<plugin>.<key>\", such as \"dnsbl.zone\"", name))
	}
	return Key[T]{name: name}
}

// Name returns the note's name, "<plugin>.<key>".
func (k Key[T]) Name() string { return k.name }

// String returns the note's name, so a key prints as its name.
func (k Key[T]) String() string { return k.name }

// Set stores v in n, replacing any earlier value.
func (k Key[T]) Set(n *Notes, v T) { n.set(k.name, v) }

// Lookup returns the note's value in n and whether it is set. ok is false
// too when another key of the same name but another type stored it.
func (k Key[T]) Lookup(n *Notes) (v T, ok bool) {
	v, ok = n.Value(k.name).(T)
	return v, ok
}

// Get returns the note's value in n, or T's zero value when it is not set.
func (k Key[T]) Get(n *Notes) T {
	v, _ := k.Lookup(n)
	return v
}

// Delete removes the note from n.
func (k Key[T]) Delete(n *Notes) {
	n.mu.Lock()
	delete(n.m, k.name)
	n.mu.Unlock()
}

// Add adds delta to the counter k in n and returns the new value; a counter
// that is not set counts from 0. Plugins share counters this way
// ("naughty.score"); the read and the write happen under one lock.
func Add(n *Notes, k Key[int], delta int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = make(map[string]any, 4)
	}
	v, _ := n.m[k.name].(int)
	v += delta
	n.m[k.name] = v
	return v
}
