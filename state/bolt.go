package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The bbolt file has two buckets: kv holds each key's value behind its
// expiry (8 bytes, big-endian Unix nanoseconds, 0 for none); exp indexes
// the keys by expiry (expiry then key, no value), so that the sweep reads
// only what has expired.
var (
	kvBucket  = []byte("kv")
	expBucket = []byte("exp")
)

// lockWait is how long opening the file waits for another process's lock.
const lockWait = 500 * time.Millisecond

// boltStore is the bbolt backend. The file is opened at the first call
// (see Settings.Open), and again at the next call when that failed.
type boltStore struct {
	path  string
	sweep time.Duration

	db     atomic.Pointer[bolt.DB]
	mu     sync.Mutex // guards opening and closing
	closed bool
	stop   chan struct{}
	swept  sync.WaitGroup

	wmu        sync.Mutex // guards the fields below
	pending    []*write   // writes waiting for the next commit
	committing bool       // a commit is under way
}

func openBolt(path string, sweep time.Duration) (*boltStore, error) {
	if sweep == 0 {
		sweep = DefaultSweepInterval
	}
	return &boltStore{path: path, sweep: sweep}, nil
}

// open returns the database, opening the file when it is not open yet.
func (s *boltStore) open() (*bolt.DB, error) {
	if db := s.db.Load(); db != nil {
		return db, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if db := s.db.Load(); db != nil {
		return db, nil
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: lockWait})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("state: %s is locked by another process (another smtpd?): the bbolt store serves one process; for several smtpd processes set [state] backend = \"redis\"", s.path)
	}
	if err != nil {
		return nil, fmt.Errorf("state: open %s: %w", s.path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(kvBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(expBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state: %s: %w", s.path, err)
	}
	s.stop = make(chan struct{})
	s.swept.Add(1)
	go s.sweeper(db, s.stop)
	s.db.Store(db)
	return db, nil
}

// Close stops the sweep and closes the file.
func (s *boltStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	db := s.db.Swap(nil)
	if db == nil {
		return nil
	}
	close(s.stop)
	s.swept.Wait()
	return db.Close()
}

func expiryOf(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return time.Now().Add(ttl).UnixNano()
}

// live returns the value stored as v, or ok false when it expired.
func live(v []byte, now int64) ([]byte, int64, bool) {
	if len(v) < 8 {
		return nil, 0, false
	}
	exp := int64(binary.BigEndian.Uint64(v))
	if exp != 0 && exp <= now {
		return nil, exp, false
	}
	return v[8:], exp, true
}

// put stores value under key with its expiry, and indexes the expiry.
func put(tx *bolt.Tx, key string, value []byte, exp int64) error {
	v := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(v, uint64(exp))
	copy(v[8:], value)
	if err := tx.Bucket(kvBucket).Put([]byte(key), v); err != nil {
		return err
	}
	if exp == 0 {
		return nil
	}
	return tx.Bucket(expBucket).Put(expKey(exp, key), nil)
}

func expKey(exp int64, key string) []byte {
	k := make([]byte, 8+len(key))
	binary.BigEndian.PutUint64(k, uint64(exp))
	copy(k[8:], key)
	return k
}

func (s *boltStore) view(ctx context.Context, f func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	db, err := s.open()
	if err != nil {
		return err
	}
	return db.View(f)
}

// update runs f in a write transaction. Writes that arrive while a
// commit is under way share the next one (group commit: one commit, one
// fsync, for all of them), so connections counting at once do not queue
// for a commit each, and a write that arrives alone is committed at once.
// f may run twice (alone, when another write of its commit failed): it
// must set its results afresh each time.
func (s *boltStore) update(ctx context.Context, f func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	db, err := s.open()
	if err != nil {
		return err
	}
	w := &write{f: f, done: make(chan error, 1)}
	s.wmu.Lock()
	s.pending = append(s.pending, w)
	if !s.committing {
		s.committing = true
		s.wmu.Unlock()
		s.commitPending(db) // this write is in the first batch
	} else {
		s.wmu.Unlock()
	}
	return <-w.done
}

// write is one write waiting for its commit.
type write struct {
	f    func(*bolt.Tx) error
	done chan error
}

// commitPending commits the writes waiting, in one transaction, then
// hands the writes that arrived meanwhile to another goroutine, so that
// the caller returns after its own commit.
func (s *boltStore) commitPending(db *bolt.DB) {
	s.wmu.Lock()
	batch := s.pending
	s.pending = nil
	s.wmu.Unlock()
	err := db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			if err := w.f(tx); err != nil {
				return err
			}
		}
		return nil
	})
	for _, w := range batch {
		if err != nil && len(batch) > 1 {
			w.done <- db.Update(w.f) // find whose it was: each alone
		} else {
			w.done <- err
		}
	}
	s.wmu.Lock()
	if len(s.pending) == 0 {
		s.committing = false
		s.wmu.Unlock()
		return
	}
	s.wmu.Unlock()
	go s.commitPending(db)
}

func (s *boltStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	var out []byte
	var ok bool
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v, _, alive := live(tx.Bucket(kvBucket).Get([]byte(key)), time.Now().UnixNano())
		if alive {
			out, ok = bytes.Clone(v), true
		}
		return nil
	})
	return out, ok, err
}

func (s *boltStore) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return s.update(ctx, func(tx *bolt.Tx) error { return put(tx, key, value, expiryOf(ttl)) })
}

func (s *boltStore) SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	var stored bool
	err := s.update(ctx, func(tx *bolt.Tx) error {
		stored = false
		if _, _, alive := live(tx.Bucket(kvBucket).Get([]byte(key)), time.Now().UnixNano()); alive {
			return nil
		}
		stored = true
		return put(tx, key, value, expiryOf(ttl))
	})
	return stored, err
}

func (s *boltStore) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	var n int64
	err := s.update(ctx, func(tx *bolt.Tx) error {
		v, exp, alive := live(tx.Bucket(kvBucket).Get([]byte(key)), time.Now().UnixNano())
		n = 0
		if alive {
			cur, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return fmt.Errorf("%w: %q", ErrNotInteger, key)
			}
			n = cur
		} else {
			exp = expiryOf(ttl)
		}
		n += delta
		return put(tx, key, strconv.AppendInt(nil, n, 10), exp)
	})
	return n, err
}

func (s *boltStore) Delete(ctx context.Context, key string) error {
	return s.update(ctx, func(tx *bolt.Tx) error { return tx.Bucket(kvBucket).Delete([]byte(key)) })
}

// sweeper removes expired keys every sweep interval until stop closes.
func (s *boltStore) sweeper(db *bolt.DB, stop chan struct{}) {
	defer s.swept.Done()
	t := time.NewTicker(s.sweep)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			// An error here (a full disk) is met again by the next
			// write, which reports it; the sweep tries again later.
			_ = sweep(db, time.Now().UnixNano())
		}
	}
}

// sweepBatch bounds one sweep transaction, so that a large backlog does
// not hold the writer for long.
const sweepBatch = 1000

// sweep deletes the keys that expired by now, in batches.
func sweep(db *bolt.DB, now int64) error {
	for {
		more := false
		err := db.Update(func(tx *bolt.Tx) error {
			kv := tx.Bucket(kvBucket)
			c := tx.Bucket(expBucket).Cursor()
			n := 0
			for k, _ := c.First(); k != nil; k, _ = c.First() {
				if int64(binary.BigEndian.Uint64(k)) > now {
					return nil
				}
				if n == sweepBatch {
					more = true
					return nil
				}
				n++
				key := k[8:]
				// The key may have been set again since, with a
				// later expiry (or none): delete it only when
				// the value is dead.
				if _, _, alive := live(kv.Get(key), now); !alive {
					if err := kv.Delete(key); err != nil {
						return err
					}
				}
				if err := c.Delete(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || !more {
			return err
		}
	}
}
