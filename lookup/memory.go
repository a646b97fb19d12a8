package lookup

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
)

// memory is a table held in a map: the list and file backends.
type memory struct {
	m map[string]string
}

// newMemory builds a table from entries "key" or "key value".
func newMemory(entries []string, where string) (*memory, error) {
	t := &memory{m: make(map[string]string, len(entries))}
	for i, e := range entries {
		if err := t.add(e); err != nil {
			return nil, fmt.Errorf("%s entry %d: %w", where, i+1, err)
		}
	}
	return t, nil
}

func (t *memory) add(entry string) error {
	k, v := splitEntry(entry)
	if k == "" {
		return fmt.Errorf("%q has no key", entry)
	}
	t.m[Key(k)] = v
	return nil
}

// splitEntry splits "key value" at the first run of blanks.
func splitEntry(e string) (key, value string) {
	e = strings.TrimSpace(e)
	k, v, _ := strings.Cut(e, " ")
	if i := strings.IndexAny(k, "\t"); i >= 0 {
		k, v = e[:i], e[i+1:]
	}
	return k, strings.TrimSpace(v)
}

// readFile reads a table file: one entry a line, '#' starts a comment.
func readFile(path string) (*memory, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	t := &memory{m: make(map[string]string, len(lines))}
	for _, l := range lines {
		if err := t.add(l.text); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, l.n, err)
		}
	}
	return t, nil
}

type line struct {
	n    int
	text string
}

// readLines returns the non-blank lines of a file with comments removed.
func readLines(path string) ([]line, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the table file: %w", err)
	}
	var out []line
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(l) == "" {
			continue
		}
		out = append(out, line{n, l})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// Lookup returns the entry for key.
func (t *memory) Lookup(_ context.Context, key string) (string, bool, error) {
	v, ok := t.m[key]
	return v, ok, nil
}

// Keys returns the table's keys, for callers that must scan them (tables
// of networks); ok is false for a backend that cannot list its keys.
func Keys(t Table) (keys []string, ok bool) {
	m, isMem := t.(*memory)
	if !isMem {
		return nil, false
	}
	for k := range m.m {
		keys = append(keys, k)
	}
	return keys, true
}
