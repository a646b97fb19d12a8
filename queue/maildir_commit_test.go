package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// gate is an injected flush step that blocks until released and counts
// its rounds and the items in them.
type gate struct {
	entered chan int // receives each round's size as the round starts
	release chan struct{}
	rounds  atomic.Int32
	err     error
}

func newGate() *gate {
	return &gate{entered: make(chan int, 100), release: make(chan struct{})}
}

func (g *gate) flush(n int) error {
	g.rounds.Add(1)
	g.entered <- n
	<-g.release
	return g.err
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

// TestMaildirNoAnswerBeforeTheDataIsFlushed blocks the data round and
// checks that no delivery returns and nothing is in new/ while it blocks;
// the first message starts a round alone, the others gather into the
// next one, and once the flushes run every delivery returns with its file
// in new/.
func TestMaildirNoAnswerBeforeTheDataIsFlushed(t *testing.T) {
	forEachMode(t, testNoAnswerBeforeTheDataIsFlushed)
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

func testNoAnswerBeforeTheDataIsFlushed(t *testing.T, m *Maildir) {
	g := newGate()
	flushed := map[uint64]bool{}
	var mu sync.Mutex
	m.data.flush = func(files []*os.File) error {
		err := g.flush(len(files))
		mu.Lock()
		for _, f := range files {
			fi, err := f.Stat()
			if err != nil {
				t.Error(err)
				continue
			}
			flushed[inode(t, fi)] = true
		}
		mu.Unlock()
		return err
	}
	var linkedUnflushed atomic.Int32
	m.entries.flush = func([]struct{}) error {
		// Every name in new/ must have gone through a data round first.
		ents, _ := os.ReadDir(filepath.Join(m.Dir(), "new"))
		mu.Lock()
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && !flushed[inode(t, fi)] {
				linkedUnflushed.Add(1)
			}
		}
		mu.Unlock()
		return syncDir(filepath.Join(m.Dir(), "new"))
	}

	const n = 8
	out := deliverAll(t, m, n)
	if size := <-g.entered; size != 1 {
		t.Fatalf("the first round flushed %d files; want the first message alone, at once", size)
	}
	// The other seven are written and wait for the next round.
	waitFor(t, "7 deliveries gathered for the next round", func() bool { return m.data.pending() == n-1 })
	if !m.unnamed.Load() {
		if got := count(t, filepath.Join(m.Dir(), "tmp")); got != n {
			t.Fatalf("tmp/ holds %d files, want %d", got, n)
		}
	}
	noneReturned(t, out, "while the data round blocks")
	if got := count(t, filepath.Join(m.Dir(), "new")); got != 0 {
		t.Fatalf("new/ holds %d files before their data was flushed", got)
	}

	g.release <- struct{}{} // the first round ends
	if size := <-g.entered; size != n-1 {
		t.Fatalf("the second round flushed %d files, want the %d that gathered", size, n-1)
	}
	noneReturned(t, out, "while the second data round blocks")
	close(g.release) // every later round passes
	names := map[string]bool{}
	for range n {
		d := <-out
		if d.err != nil {
			t.Fatalf("delivery failed: %v", d.err)
		}
		if _, err := os.Stat(d.rc.Path); err != nil || filepath.Dir(d.rc.Path) != filepath.Join(m.Dir(), "new") {
			t.Fatalf("receipt path %q: %v", d.rc.Path, err)
		}
		names[d.rc.Path] = true
	}
	if len(names) != n || count(t, filepath.Join(m.Dir(), "new")) != n || count(t, filepath.Join(m.Dir(), "tmp")) != 0 {
		t.Fatalf("%d distinct receipts, new/ %d, tmp/ %d; want %d, %d, 0",
			len(names), count(t, filepath.Join(m.Dir(), "new")), count(t, filepath.Join(m.Dir(), "tmp")), n, n)
	}
	if g.rounds.Load() != 2 {
		t.Errorf("%d data rounds for %d messages; want 2 (one alone, one shared)", g.rounds.Load(), n)
	}
	if linkedUnflushed.Load() != 0 {
		t.Errorf("%d names were in new/ before their data round", linkedUnflushed.Load())
	}
}

// TestMaildirNoAnswerBeforeTheDirectoryIsFlushed blocks the directory
// round: the files are in new/ but no delivery returns until the round
// that covers their entries has run.
func TestMaildirNoAnswerBeforeTheDirectoryIsFlushed(t *testing.T) {
	forEachMode(t, testNoAnswerBeforeTheDirectoryIsFlushed)
}

func testNoAnswerBeforeTheDirectoryIsFlushed(t *testing.T, m *Maildir) {
	g := newGate()
	m.entries.flush = func(items []struct{}) error {
		err := g.flush(len(items))
		if err == nil {
			err = syncDir(filepath.Join(m.Dir(), "new"))
		}
		return err
	}
	const n = 6
	out := deliverAll(t, m, n)
	<-g.entered
	waitFor(t, "every file linked into new/", func() bool { return count(t, filepath.Join(m.Dir(), "new")) == n })
	waitFor(t, "the rest gathered for the next directory round", func() bool { return m.entries.pending() == n-1 })
	noneReturned(t, out, "while the directory round blocks")
	close(g.release)
	for range n {
		if d := <-out; d.err != nil {
			t.Fatal(d.err)
		}
	}
	if r := g.rounds.Load(); r != 2 {
		t.Errorf("%d directory rounds, want 2", r)
	}
}

// TestMaildirFailedRoundFailsEveryMessageInIt: a flush error reaches each
// waiter of that round, and none of their files stays in new/ or tmp/.
func TestMaildirFailedRoundFailsEveryMessageInIt(t *testing.T) {
	for _, round := range []string{"data", "directory"} {
		forEachMode(t, func(t *testing.T, m *Maildir) {
			t.Logf("failing the %s round", round)
			g := newGate()
			g.err = errors.New("injected I/O error")
			if round == "data" {
				m.data.flush = func(files []*os.File) error { return g.flush(len(files)) }
			} else {
				m.entries.flush = func(items []struct{}) error { return g.flush(len(items)) }
			}
			const n = 5
			out := deliverAll(t, m, n)
			<-g.entered
			waitFor(t, "the others gathered", func() bool {
				if round == "data" {
					return m.data.pending() == n-1
				}
				return m.entries.pending() == n-1
			})
			close(g.release)
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

// TestMaildirAloneFlushesAtOnce: a single delivery runs its own rounds,
// one of each, with nothing to wait for.
func TestMaildirAloneFlushesAtOnce(t *testing.T) {
	m, err := NewMaildir(filepath.Join(t.TempDir(), "mail"))
	if err != nil {
		t.Fatal(err)
	}
	var data, dirs atomic.Int32
	m.data.flush = func(files []*os.File) error { data.Add(1); return flushFiles(files) }
	m.entries.flush = func([]struct{}) error { dirs.Add(1); return syncDir(filepath.Join(m.Dir(), "new")) }
	for i := range 3 {
		if _, err := m.Deliver(context.Background(), commitTx(t, i)); err != nil {
			t.Fatal(err)
		}
		if data.Load() != int32(i+1) || dirs.Load() != int32(i+1) {
			t.Fatalf("after %d deliveries: %d data and %d directory rounds", i+1, data.Load(), dirs.Load())
		}
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
// a Maildir on the disk that holds the test's temporary directory:
// group commit with syncfs (the default), group commit with an fsync of
// each file, and one message at a time with its own fsyncs (what Deliver
// did before group commit: the file, new/ and tmp/).
//
//	go test -run '^$' -bench MaildirDeliver -benchtime 3000x ./queue/
func BenchmarkMaildirDeliver(b *testing.B) {
	for _, mode := range []string{"syncfs", "fsync-each", "unbatched"} {
		b.Run(mode, func(b *testing.B) {
			m, err := NewMaildir(filepath.Join(b.TempDir(), "mail"))
			if err != nil {
				b.Fatal(err)
			}
			var rounds, files, dataNS, dirRounds, dirNS atomic.Int64
			flush := flushFiles
			if mode == "fsync-each" {
				flush = fsyncEach
			}
			m.data.flush = func(fs []*os.File) error {
				rounds.Add(1)
				files.Add(int64(len(fs)))
				t0 := time.Now()
				defer func() { dataNS.Add(int64(time.Since(t0))) }()
				return flush(fs)
			}
			dirFlush := m.entries.flush
			m.entries.flush = func(items []struct{}) error {
				dirRounds.Add(1)
				t0 := time.Now()
				defer func() { dirNS.Add(int64(time.Since(t0))) }()
				return dirFlush(items)
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
				b.ReportMetric(float64(files.Load())/float64(r), "msgs/round")
				b.ReportMetric(float64(dataNS.Load())/float64(r)/1e3, "µs/data-round")
				b.ReportMetric(float64(dirNS.Load())/float64(dirRounds.Load())/1e3, "µs/dir-round")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/msg")
		})
	}
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
