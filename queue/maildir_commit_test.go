package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/transaction"
)

// commitTx is a small message ready to be queued.
func commitTx(t testing.TB, i int) *transaction.Transaction {
	t.Helper()
	tx := transaction.New(t.TempDir(), 1<<20)
	t.Cleanup(func() { tx.Close() })
	tx.Sender, tx.Recipients = "a@example.org", []string{"b@example.test"}
	fmt.Fprintf(tx.Body, "message %d\r\n", i)
	return tx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func count(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// pending is how many items wait for the round after the running one.
func (b *batcher[T]) pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.next == nil {
		return 0
	}
	return len(b.next.items)
}

type delivery struct {
	rc  Receipt
	err error
}

func deliverAll(t *testing.T, m *Maildir, n int) chan delivery {
	t.Helper()
	out := make(chan delivery, n)
	for i := range n {
		tx := commitTx(t, i)
		go func() {
			rc, err := m.Deliver(context.Background(), tx)
			out <- delivery{rc, err}
		}()
	}
	return out
}

func noneReturned(t *testing.T, out chan delivery, while string) {
	t.Helper()
	select {
	case d := <-out:
		t.Fatalf("a delivery returned (%+v) %s", d, while)
	default:
	}
}

// forEachMode runs a test with unnamed files (where the system has them)
// and with tmp/ names.
func forEachMode(t *testing.T, test func(*testing.T, *Maildir)) {
	for _, unnamed := range []bool{true, false} {
		t.Run(map[bool]string{true: "unnamed", false: "tmp"}[unnamed], func(t *testing.T) {
			m, err := NewMaildir(filepath.Join(t.TempDir(), "mail"))
			if err != nil {
				t.Fatal(err)
			}
			if unnamed && !m.unnamed.Load() {
				t.Skip("no unnamed files (O_TMPFILE) here")
			}
			m.unnamed.Store(unnamed)
			test(t, m)
		})
	}
}

// inode is a file's inode number, to follow it from unnamed to named.
func inode(t *testing.T, fi os.FileInfo) uint64 {
	t.Helper()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no inode numbers here")
	}
	return uint64(st.Ino)
}

// roundSizes counts a round's files and directory entries.
func roundSizes(items []*os.File) (files, entries int) {
	for _, f := range items {
		if f == nil {
			entries++
		} else {
			files++
		}
	}
	return files, entries
}

// TestMaildirNoAnswerBeforeItsTwoRounds blocks each flush round in turn:
// the first message starts a round alone and at once, the others gather
// for the next; no delivery returns and nothing is in new/ while the data
// rounds block; a linked message still waits for a round that covers its
// entry; once the rounds run, every delivery returns with its file in new/.
func TestMaildirNoAnswerBeforeItsTwoRounds(t *testing.T) {
	forEachMode(t, func(t *testing.T, m *Maildir) {
		type round struct{ files, entries int }
		entered := make(chan round, 100)
		release := make(chan struct{})
		m.rounds.flush = func(items []*os.File) error {
			f, e := roundSizes(items)
			entered <- round{f, e}
			<-release
			return m.flush(items)
		}
		const n = 8
		out := deliverAll(t, m, n)
		if r := <-entered; r != (round{1, 0}) {
			t.Fatalf("first round %+v; want the first message's file alone, at once", r)
		}
		waitFor(t, "the other files gathered for the next round", func() bool { return m.rounds.pending() == n-1 })
		if !m.unnamed.Load() {
			if got := count(t, filepath.Join(m.Dir(), "tmp")); got != n {
				t.Fatalf("tmp/ holds %d files, want %d", got, n)
			}
		}
		noneReturned(t, out, "while the first round blocks")
		if got := count(t, filepath.Join(m.Dir(), "new")); got != 0 {
			t.Fatalf("new/ holds %d files before their data was flushed", got)
		}

		release <- struct{}{} // round 1 ends; the first message links
		if r := <-entered; r != (round{n - 1, 0}) {
			t.Fatalf("second round %+v; want the %d files that gathered", r, n-1)
		}
		waitFor(t, "the first message linked, waiting for its entry's round", func() bool {
			return count(t, filepath.Join(m.Dir(), "new")) == 1 && m.rounds.pending() == 1
		})
		noneReturned(t, out, "while the linked message's entry is not flushed")

		release <- struct{}{} // round 2 ends; the others link
		if r := <-entered; r.files != 0 || r.entries < 1 {
			t.Fatalf("third round %+v; want entries only", r)
		}
		noneReturned(t, out, "while the third round (the first entry's) blocks")

		close(release)
		for range n {
			d := <-out
			if d.err != nil {
				t.Fatalf("delivery failed: %v", d.err)
			}
			if filepath.Dir(d.rc.Path) != filepath.Join(m.Dir(), "new") {
				t.Fatalf("receipt path %q", d.rc.Path)
			}
		}
		if nw, tmp := count(t, filepath.Join(m.Dir(), "new")), count(t, filepath.Join(m.Dir(), "tmp")); nw != n || tmp != 0 {
			t.Fatalf("new/ holds %d and tmp/ %d files; want %d and 0", nw, tmp, n)
		}
	})
}

// TestMaildirOrderUnderLoad checks the order for every delivery of a busy
// Maildir, with rounds of random length: a name appears in new/ only once
// a finished round flushed its file, and Deliver returns only once a
// finished round started after the name was in new/.
func TestMaildirOrderUnderLoad(t *testing.T) {
	forEachMode(t, func(t *testing.T, m *Maildir) {
		var mu sync.Mutex
		flushedFiles := map[uint64]bool{} // inodes whose data a finished round flushed
		flushedNames := map[string]bool{} // names a finished round found in new/
		early := atomic.Int32{}           // names in new/ before their data round ended
		var rounds atomic.Int32
		m.rounds.flush = func(items []*os.File) error {
			ents, err := os.ReadDir(filepath.Join(m.Dir(), "new"))
			if err != nil {
				return err
			}
			var names []string
			mu.Lock()
			for _, e := range ents {
				names = append(names, e.Name())
				if fi, err := e.Info(); err == nil && !flushedFiles[inode(t, fi)] {
					early.Add(1)
				}
			}
			mu.Unlock()
			var inodes []uint64
			for _, f := range items {
				if f != nil {
					fi, err := f.Stat()
					if err != nil {
						return err
					}
					inodes = append(inodes, inode(t, fi))
				}
			}
			for range rand.IntN(50) { // rounds of random length
				runtime.Gosched()
			}
			if err := m.flush(items); err != nil {
				return err
			}
			rounds.Add(1)
			mu.Lock()
			for _, ino := range inodes {
				flushedFiles[ino] = true
			}
			for _, name := range names {
				flushedNames[name] = true
			}
			mu.Unlock()
			return nil
		}
		const workers, each = 20, 15
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					rc, err := m.Deliver(context.Background(), commitTx(t, w*each+i))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					ok := flushedNames[filepath.Base(rc.Path)]
					mu.Unlock()
					if !ok {
						t.Errorf("Deliver returned %s before a round covered its entry", rc.Path)
					}
				}
			})
		}
		wg.Wait()
		if early.Load() != 0 {
			t.Errorf("%d names were in new/ before a round had flushed their data", early.Load())
		}
		if r := rounds.Load(); r >= 2*workers*each {
			t.Errorf("%d rounds for %d messages: nothing was shared", r, workers*each)
		} else {
			t.Logf("%d rounds for %d messages", r, workers*each)
		}
	})
}

// TestMaildirFailedRoundFailsEveryMessageInIt: a flush error reaches each
// waiter of that round, and none of their files stays in new/ or tmp/,
// whether the data round or the entries' round failed.
func TestMaildirFailedRoundFailsEveryMessageInIt(t *testing.T) {
	for _, failing := range []string{"files", "entries"} {
		forEachMode(t, func(t *testing.T, m *Maildir) {
			t.Logf("failing the rounds that flush %s", failing)
			m.rounds.flush = func(items []*os.File) error {
				f, e := roundSizes(items)
				if failing == "files" && f > 0 || failing == "entries" && e > 0 {
					return errors.New("injected I/O error")
				}
				return m.flush(items)
			}
			const n = 6
			out := deliverAll(t, m, n)
			for range n {
				d := <-out
				if d.err == nil || !strings.Contains(d.err.Error(), "injected I/O error") {
					t.Fatalf("delivery error %v; want the round's error", d.err)
				}
			}
			if nw, tmp := count(t, filepath.Join(m.Dir(), "new")), count(t, filepath.Join(m.Dir(), "tmp")); nw != 0 || tmp != 0 {
				t.Errorf("after failed rounds new/ holds %d and tmp/ %d files; want none", nw, tmp)
			}
		})
	}
}

// TestMaildirAloneFlushesAtOnce: a single delivery runs its own two
// rounds, the first with its file, the second with its entry.
func TestMaildirAloneFlushesAtOnce(t *testing.T) {
	m, err := NewMaildir(filepath.Join(t.TempDir(), "mail"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	m.rounds.flush = func(items []*os.File) error {
		f, e := roundSizes(items)
		got = append(got, fmt.Sprintf("%d files %d entries", f, e))
		return m.flush(items)
	}
	for i := range 3 {
		if _, err := m.Deliver(context.Background(), commitTx(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	want := strings.Repeat("1 files 0 entries,0 files 1 entries,", 3)
	if s := strings.Join(got, ",") + ","; s != want {
		t.Errorf("rounds: %s\nwant %s", s, want)
	}
}

// TestBatcherUnderLoad: many waiters, rounds run one at a time, every item
// is flushed exactly once and every waiter returns.
func TestBatcherUnderLoad(t *testing.T) {
	var inRound atomic.Int32
	seen := make([]atomic.Int32, 2000)
	b := batcher[int]{flush: func(items []int) error {
		if inRound.Add(1) != 1 {
			t.Error("two rounds ran at once")
		}
		for _, i := range items {
			seen[i].Add(1)
		}
		time.Sleep(50 * time.Microsecond)
		inRound.Add(-1)
		return nil
	}}
	var wg sync.WaitGroup
	for w := range 40 {
		wg.Go(func() {
			for i := w; i < len(seen); i += 40 {
				if err := b.wait(i); err != nil {
					t.Error(err)
				}
				if seen[i].Load() != 1 {
					t.Errorf("item %d returned before its round flushed it", i)
				}
			}
		})
	}
	wg.Wait()
	for i := range seen {
		if seen[i].Load() != 1 {
			t.Fatalf("item %d flushed %d times", i, seen[i].Load())
		}
	}
}

// BenchmarkMaildirDeliver delivers 1 KiB messages from 20 goroutines into
// a Maildir on the disk that holds the test's temporary directory: group
// commit with syncfs rounds (the default), group commit whose rounds fsync
// each file and new/ (the fallback where syncfs is missing), and one
// message at a time with its own fsyncs (what Deliver did before group
// commit: the file, new/ and tmp/).
//
//	go test -run '^$' -bench MaildirDeliver -benchtime 5000x ./queue/
//
// Deleting files makes ext4 without a journal skip the freed inodes for a
// while when it allocates (it checks each one's deletion time), which costs
// CPU in the runs that follow; the Maildirs are only removed at the end.
func BenchmarkMaildirDeliver(b *testing.B) {
	root, err := os.MkdirTemp("", "maildir-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(root) })
	for _, mode := range []string{"syncfs", "fsync-rounds", "unbatched"} {
		b.Run(mode, func(b *testing.B) {
			dir, err := os.MkdirTemp(root, mode)
			if err != nil {
				b.Fatal(err)
			}
			m, err := NewMaildir(dir)
			if err != nil {
				b.Fatal(err)
			}
			var rounds, items, ns atomic.Int64
			m.rounds.flush = func(fs []*os.File) error {
				rounds.Add(1)
				items.Add(int64(len(fs)))
				t0 := time.Now()
				defer func() { ns.Add(int64(time.Since(t0))) }()
				if mode == "fsync-rounds" {
					return fsyncRound(m, fs)
				}
				return m.flush(fs)
			}
			deliver := m.Deliver
			if mode == "unbatched" {
				deliver = m.deliverUnbatched
			}
			b.SetParallelism(10) // x GOMAXPROCS goroutines: 20 on 2 cores
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				tx := commitTx(b, 0)
				for pb.Next() {
					if _, err := deliver(context.Background(), tx); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if r := rounds.Load(); r > 0 {
				b.ReportMetric(float64(items.Load())/float64(r)/2, "msgs/round")
				b.ReportMetric(float64(ns.Load())/float64(r)/1e3, "µs/round")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/msg")
		})
	}
}

// fsyncRound is flush's fallback: each file, then new/.
func fsyncRound(m *Maildir, items []*os.File) error {
	entries := false
	for _, f := range items {
		if f == nil {
			entries = true
		} else if err := f.Sync(); err != nil {
			return err
		}
	}
	if entries {
		return syncDir(filepath.Join(m.dir, "new"))
	}
	return nil
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// deliverUnbatched is Deliver as it was before group commit, for the
// benchmark: each message fsyncs its file, new/ and tmp/ on its own.
func (m *Maildir) deliverUnbatched(ctx context.Context, tx *transaction.Transaction) (Receipt, error) {
	name := m.uniqueName(tx.ID, time.Now())
	tmpPath, newPath := filepath.Join(m.dir, "tmp", name), filepath.Join(m.dir, "new", name)
	f, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Receipt{}, err
	}
	err = writeMessage(f, tx)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err == nil {
		err = publish(tmpPath, newPath)
	}
	if err == nil {
		err = syncDir(filepath.Join(m.dir, "new"))
	}
	os.Remove(tmpPath)
	if err == nil {
		err = syncDir(filepath.Join(m.dir, "tmp"))
	}
	return Receipt{ID: tx.ID, Path: newPath}, err
}
