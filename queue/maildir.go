package queue

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/transaction"
)

// Maildir delivers messages into one Maildir, as the Maildir
// specification (https://cr.yp.to/proto/maildir.html) describes: write to
// tmp/, fsync, link into new/, fsync the directory. A message is in new/
// only once it is whole and durable. A Maildir is safe for concurrent use.
type Maildir struct {
	dir      string
	hostname string
	pid      int
	seq      atomic.Uint64
}

// NewMaildir returns a Maildir rooted at dir, creating dir and its cur/,
// new/ and tmp/ subdirectories (mode 0700) when they are missing.
func NewMaildir(dir string) (*Maildir, error) {
	if dir == "" {
		return nil, errors.New("maildir: the directory is empty")
	}
	m := &Maildir{dir: dir, hostname: maildirHostname(), pid: os.Getpid()}
	if err := m.ensureDirs(); err != nil {
		return nil, err
	}
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
// tx.ID, and returns the receipt with that path. On failure nothing is left
// in new/ or tmp/, and the error names the step and the path; disk full and
// permission errors are returned, never hidden.
func (m *Maildir) Deliver(ctx context.Context, tx *transaction.Transaction) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, fmt.Errorf("maildir: %w", err)
	}
	name := m.uniqueName(tx.ID, time.Now())
	tmpPath := filepath.Join(m.dir, "tmp", name)
	newPath := filepath.Join(m.dir, "new", name)
	if err := m.writeTmp(tmpPath, tx); err != nil {
		return Receipt{}, err
	}
	if err := publish(tmpPath, newPath); err != nil {
		os.Remove(tmpPath)
		return Receipt{}, err
	}
	if err := syncDir(filepath.Dir(newPath)); err != nil {
		// Not known to be durable: take it back, so the client's retry
		// does not deliver it twice.
		os.Remove(newPath)
		os.Remove(tmpPath)
		return Receipt{}, err
	}
	if err := os.Remove(tmpPath); err == nil {
		// The message is already durable in new/; a stale tmp/ entry after
		// a crash is harmless (Maildir readers clean tmp/), so an error
		// here does not fail the delivery.
		syncDir(filepath.Dir(tmpPath))
	}
	return Receipt{ID: tx.ID, Path: newPath}, nil
}

// writeTmp writes the whole message to path, created exclusively, and
// fsyncs it. On failure it removes the file.
func (m *Maildir) writeTmp(path string, tx *transaction.Transaction) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		// Someone removed the Maildir since it was created: make it again.
		if err = m.ensureDirs(); err == nil {
			f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err != nil {
		return pathError("create", path, err)
	}
	if err := writeSynced(f, tx); err != nil {
		f.Close()
		os.Remove(path)
		return pathError("write", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return pathError("close", path, err)
	}
	return nil
}

// pathError wraps err with the step, naming path unless err already does.
func pathError(step, path string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return fmt.Errorf("maildir: %s: %w", step, err)
	}
	return fmt.Errorf("maildir: %s %s: %w", step, path, err)
}

func writeSynced(f *os.File, tx *transaction.Transaction) error {
	w := bufio.NewWriterSize(f, 64<<10)
	if _, err := tx.WriteTo(w); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Sync()
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
