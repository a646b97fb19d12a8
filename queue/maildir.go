package queue

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/transaction"
)

// Maildir delivers messages into one Maildir, as the Maildir
// specification (https://cr.yp.to/proto/maildir.html) describes: write the
// file, flush it to disk, link it into new/, flush the directory. A message
// is in new/ only once it is whole and durable, and Deliver returns only
// once its directory entry is durable too. A Maildir is safe for
// concurrent use.
//
// Concurrent deliveries share their flushes (group commit). A delivery
// waits for two flush rounds, in this order: one that starts after its
// file is written (the data), then, after the link into new/, one that
// starts after the link (the directory entry). A round is one syncfs(2) of
// the file system, which covers at once the data of every file written and
// the entry of every link made since the previous round, so one round
// serves the first step of some deliveries and the second step of others,
// and a busy Maildir costs one flush per round, not two per message. A
// round starts as soon as the previous one ends: a message alone never
// waits for company, and messages that arrive during a round join the
// next one.
type Maildir struct {
	dir      string
	hostname string
	pid      int
	seq      atomic.Uint64

	rounds  batcher[*os.File] // a file to make durable, or nil for new/'s entries
	unnamed atomic.Bool       // write unnamed files (O_TMPFILE) instead of tmp/ names
}

// NewMaildir returns a Maildir rooted at dir, creating dir and its cur/,
// new/ and tmp/ subdirectories (mode 0700) when they are missing.
func NewMaildir(dir string) (*Maildir, error) {
	if dir == "" {
		return nil, errors.New("maildir: the directory is empty")
	}
	m := &Maildir{dir: dir, hostname: maildirHostname(), pid: os.Getpid()}
	m.rounds.flush = m.flush
	if err := m.ensureDirs(); err != nil {
		return nil, err
	}
	m.unnamed.Store(m.probeUnnamed())
	return m, nil
}

// Dir returns the Maildir's root directory.
func (m *Maildir) Dir() string { return m.dir }

func (m *Maildir) ensureDirs() error {
	for _, sub := range []string{"cur", "new", "tmp"} {
		p := filepath.Join(m.dir, sub)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fmt.Errorf("maildir: create directory %s: %w", p, err)
		}
	}
	return nil
}

// Deliver writes the message into new/ under a unique name that contains
// tx.ID, and returns the receipt with that path once the file and its
// directory entry are durable. On failure nothing is left in new/ or tmp/,
// and the error names the step and the path; disk full and permission
// errors are returned, never hidden.
//
// Where the system allows (Linux, O_TMPFILE), the file is written in tmp/
// without a name and linked into new/ once durable: that saves creating and
// removing a name in tmp/ per message, the two directory updates that
// concurrent deliveries queued on.
func (m *Maildir) Deliver(ctx context.Context, tx *transaction.Transaction) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, fmt.Errorf("maildir: %w", err)
	}
	name := m.uniqueName(tx.ID, time.Now())
	newPath := filepath.Join(m.dir, "new", name)
	f, tmpPath, err := m.create(name)
	if err != nil {
		return Receipt{}, err
	}
	where := tmpPath
	if where == "" {
		where = filepath.Join(m.dir, "tmp") + " (unnamed file for " + name + ")"
	}
	discard := func() {
		f.Close()
		if tmpPath != "" {
			os.Remove(tmpPath)
		}
	}
	if err := writeMessage(f, tx); err != nil {
		discard()
		return Receipt{}, pathError("write", where, err)
	}
	// The first round: this file's data (and every other one written
	// since the last round) reaches the disk.
	if err := m.rounds.wait(f); err != nil {
		discard()
		return Receipt{}, pathError("flush", where, err)
	}
	if tmpPath == "" {
		err = linkUnnamed(f, newPath)
	} else {
		err = publish(tmpPath, newPath)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = pathError("close", where, cerr)
	}
	if err != nil {
		os.Remove(newPath)
		if tmpPath != "" {
			os.Remove(tmpPath)
		}
		return Receipt{}, err
	}
	// The second round: the entry in new/ (and every other one linked
	// since the last round) reaches the disk.
	if err := m.rounds.wait(nil); err != nil {
		// Not known to be durable: take it back, so the client's retry
		// does not deliver it twice.
		os.Remove(newPath)
		if tmpPath != "" {
			os.Remove(tmpPath)
		}
		return Receipt{}, err
	}
	// The message is durable in new/. A tmp/ name is removed without a
	// flush: a stale tmp/ entry after a crash is harmless (Maildir readers
	// clean tmp/), so an error here does not fail the delivery.
	if tmpPath != "" {
		os.Remove(tmpPath)
	}
	return Receipt{ID: tx.ID, Path: newPath}, nil
}

// create opens the file a message is written to: an unnamed file in tmp/
// where the system has them (tmpPath is then ""), otherwise tmp/name,
// created exclusively.
func (m *Maildir) create(name string) (f *os.File, tmpPath string, err error) {
	if m.unnamed.Load() {
		f, err := openUnnamed(filepath.Join(m.dir, "tmp"))
		if err == nil {
			return f, "", nil
		}
		if errors.Is(err, errNoUnnamed) {
			// Not supported after all (another file system mounted there):
			// tmp/ names from now on.
			m.unnamed.Store(false)
		}
		// Otherwise (tmp/ missing or broken) the named way below repairs
		// or reports it.
	}
	tmpPath = filepath.Join(m.dir, "tmp", name)
	f, err = os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		// Someone removed the Maildir since it was created: make it again.
		if err = m.ensureDirs(); err == nil {
			f, err = os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err != nil {
		return nil, "", pathError("create", tmpPath, err)
	}
	return f, tmpPath, nil
}

// probeUnnamed reports whether unnamed files work in this Maildir: one is
// created in tmp/, linked there under a name of its own, and removed.
func (m *Maildir) probeUnnamed() bool {
	f, err := openUnnamed(filepath.Join(m.dir, "tmp"))
	if err != nil {
		return false
	}
	defer f.Close()
	probe := filepath.Join(m.dir, "tmp", fmt.Sprintf(".probe.P%dQ%d.%s", m.pid, m.seq.Add(1), m.hostname))
	if err := linkUnnamed(f, probe); err != nil {
		return false
	}
	os.Remove(probe)
	return true
}

// pathError wraps err with the step, naming path unless err already does.
func pathError(step, path string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return fmt.Errorf("maildir: %s: %w", step, err)
	}
	return fmt.Errorf("maildir: %s %s: %w", step, path, err)
}

// writers are the buffers messages are written through: a small message
// is one write(2), and the header's fields are not one write each.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

func writeMessage(f *os.File, tx *transaction.Transaction) error {
	w := writers.Get().(*bufio.Writer)
	w.Reset(f)
	defer func() {
		w.Reset(nil)
		writers.Put(w)
	}()
	if _, err := tx.WriteTo(w); err != nil {
		return err
	}
	return w.Flush()
}

// flush is one round: it makes the given files and the entries linked into
// new/ so far durable (a nil item stands for new/'s entries). One syncfs(2)
// covers both, and everything else dirty on the file system; where syncfs
// is not available (or does not report write errors), each file is fsynced
// and then new/.
func (m *Maildir) flush(items []*os.File) error {
	var on *os.File
	entries := false
	for _, f := range items {
		switch {
		case f == nil:
			entries = true
		case on == nil:
			on = f
		}
	}
	newDir := filepath.Join(m.dir, "new")
	if on == nil {
		d, err := os.Open(newDir)
		if err != nil {
			return fmt.Errorf("maildir: open directory %s to flush it: %w", newDir, err)
		}
		defer d.Close()
		on = d
	}
	if err := syncfs(on); err != errNoSyncfs {
		return err
	}
	for _, f := range items {
		if f != nil {
			if err := f.Sync(); err != nil {
				return err
			}
		}
	}
	if entries {
		return syncDir(newDir)
	}
	return nil
}

// batcher runs flush rounds for the goroutines that wait on it (group
// commit). A waiter whose item arrives while no round runs starts one at
// once with its item alone; items that arrive during a round wait together
// for the next one, which one of them runs. Every waiter of a round gets
// the round's error. The zero value with flush set is ready to use.
type batcher[T any] struct {
	flush func([]T) error

	mu      sync.Mutex
	running bool      // a round is flushing
	next    *round[T] // the round being gathered while one runs
}

type round[T any] struct {
	items []T
	err   error
	done  chan struct{} // closed when the round has flushed
	lead  chan struct{} // one waiter receives: it runs this round
}

// wait adds item to the next round and returns that round's error once
// the round has flushed.
func (b *batcher[T]) wait(item T) error {
	b.mu.Lock()
	if !b.running {
		b.running = true
		b.mu.Unlock()
		r := &round[T]{items: []T{item}, done: make(chan struct{})}
		b.run(r)
		return r.err
	}
	r := b.next
	if r == nil {
		r = &round[T]{done: make(chan struct{}), lead: make(chan struct{}, 1)}
		b.next = r
	}
	r.items = append(r.items, item)
	b.mu.Unlock()
	select {
	case <-r.done:
	case <-r.lead:
		b.run(r)
	}
	return r.err
}

// run flushes r, wakes its waiters, then hands the following round, if
// items gathered meanwhile, to one of its own waiters.
func (b *batcher[T]) run(r *round[T]) {
	r.err = b.flush(r.items)
	close(r.done)
	b.mu.Lock()
	next := b.next
	b.next = nil
	b.running = next != nil
	b.mu.Unlock()
	if next != nil {
		next.lead <- struct{}{}
	}
}

// publish makes tmpPath visible as newPath. A hard link never replaces an
// existing file; where the file system cannot link, rename is the fallback
// (the name is unique either way).
func publish(tmpPath, newPath string) error {
	err := os.Link(tmpPath, newPath)
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("maildir: link %s: the name is already taken: %w", newPath, err)
	}
	if rerr := os.Rename(tmpPath, newPath); rerr != nil {
		return fmt.Errorf("maildir: move %s to %s: %w (link failed too: %v)", tmpPath, newPath, rerr, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("maildir: open directory %s to fsync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("maildir: fsync directory %s: %w", dir, err)
	}
	return nil
}

// uniqueName builds "time.MusecPpidQseq_ID.host": seconds, microseconds,
// process id and a per-process counter make it unique on this host, and the
// transaction id lets an operator find the file from the log.
func (m *Maildir) uniqueName(id string, now time.Time) string {
	seq := m.seq.Add(1)
	return fmt.Sprintf("%d.M%dP%dQ%d_%s.%s", now.Unix(), now.Nanosecond()/1000, m.pid, seq, safeID(id), m.hostname)
}

// safeID keeps letters, digits and '-' of a queue id: '.', '/' and ':' have
// meanings in Maildir names.
func safeID(id string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			return r
		}
		return '_'
	}, id)
}

// maildirHostname is the host name with '/' and ':' escaped as the
// Maildir specification asks.
func maildirHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return strings.NewReplacer("/", `\057`, ":", `\072`).Replace(h)
}
