package queue_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/queue"
)

func newMaildir(t *testing.T) *queue.Maildir {
	t.Helper()
	m, err := queue.NewMaildir(filepath.Join(t.TempDir(), "Maildir"))
	if err != nil {
		t.Fatalf("NewMaildir: %v", err)
	}
	return m
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestMaildirCreatesLayout(t *testing.T) {
	m := newMaildir(t)
	for _, sub := range []string{"cur", "new", "tmp"} {
		fi, err := os.Stat(filepath.Join(m.Dir(), sub))
		if err != nil {
			t.Fatalf("%s: %v", sub, err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want a directory with mode 0700", sub, fi.Mode())
		}
	}
}

func TestMaildirDeliverExactBytes(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		spool     int64
	}{
		{"in memory", testMessage, 1 << 20},
		{"spooled to a file", bigMessage(300 << 10), 4 << 10},
		{"no body", "Subject: only a header\r\n", 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMaildir(t)
			tx := newTx(t, "a@example.org", []string{"b@example.test"}, tc.msg, tc.spool)
			rc, err := m.Deliver(context.Background(), tx)
			if err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if rc.ID != tx.ID {
				t.Errorf("receipt id %q, want the transaction id %q", rc.ID, tx.ID)
			}
			news := dirNames(t, filepath.Join(m.Dir(), "new"))
			if len(news) != 1 || filepath.Join(m.Dir(), "new", news[0]) != rc.Path {
				t.Fatalf("new/ holds %v, want exactly the receipt's file %s", news, rc.Path)
			}
			if !strings.Contains(news[0], tx.ID) {
				t.Errorf("file name %q does not contain the queue id %q", news[0], tx.ID)
			}
			got, err := os.ReadFile(rc.Path)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantMessage(tc.msg); string(got) != want {
				t.Errorf("stored %d bytes, want %d; first difference at byte %d", len(got), len(want), firstDiff(string(got), want))
			}
			if fi, _ := os.Stat(rc.Path); fi.Mode().Perm() != 0o600 {
				t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
			}
			if left := dirNames(t, filepath.Join(m.Dir(), "tmp")); len(left) != 0 {
				t.Errorf("tmp/ still holds %v", left)
			}
		})
	}
}

func firstDiff(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestMaildirConcurrentDeliveriesGetUniqueNames(t *testing.T) {
	m := newMaildir(t)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		tx := newTx(t, "a@example.org", []string{"b@example.test"}, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i), 1<<20)
		wg.Go(func() {
			_, err := m.Deliver(context.Background(), tx)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := len(dirNames(t, filepath.Join(m.Dir(), "new"))); got != n {
		t.Errorf("new/ holds %d files, want %d", got, n)
	}
}

func TestMaildirRecreatesMissingDirectories(t *testing.T) {
	m := newMaildir(t)
	if err := os.RemoveAll(m.Dir()); err != nil {
		t.Fatal(err)
	}
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 1<<20)
	if _, err := m.Deliver(context.Background(), tx); err != nil {
		t.Fatalf("Deliver after the Maildir was removed: %v", err)
	}
	if got := dirNames(t, filepath.Join(m.Dir(), "new")); len(got) != 1 {
		t.Errorf("new/ holds %v, want one file", got)
	}
}

func TestNewMaildirOnAFileFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := queue.NewMaildir(file)
	if err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("NewMaildir(a regular file) = %v, want an error naming %s", err, file)
	}
}

// breakSubdir replaces one of the Maildir's subdirectories with a file.
func breakSubdir(t *testing.T, m *queue.Maildir, sub string) {
	t.Helper()
	p := filepath.Join(m.Dir(), sub)
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestMaildirFailuresLeaveNothingBehind(t *testing.T) {
	for _, tc := range []struct{ broken, step, check string }{
		{"tmp", "create", "new"},
		{"new", "new", "tmp"},
	} {
		t.Run(tc.broken+" is a file", func(t *testing.T) {
			m := newMaildir(t)
			breakSubdir(t, m, tc.broken)
			tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 1<<20)
			_, err := m.Deliver(context.Background(), tx)
			if err == nil {
				t.Fatal("Deliver succeeded with a broken Maildir")
			}
			if !strings.Contains(err.Error(), filepath.Join(m.Dir(), tc.broken)) || !strings.Contains(err.Error(), tc.step) {
				t.Errorf("error %q does not say what failed (%s) and where", err, tc.step)
			}
			if left := dirNames(t, filepath.Join(m.Dir(), tc.check)); len(left) != 0 {
				t.Errorf("%s/ holds %v after the failure", tc.check, left)
			}
			res := queue.Result(err)
			if res.Code != hooks.DenySoft || res.Enhanced != [3]int{4, 3, 0} || strings.Contains(res.Msg, m.Dir()) {
				t.Errorf("Result = %+v, want DenySoft 4.3.0 with no path in the client's text", res)
			}
		})
	}
}

func TestMaildirPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	m := newMaildir(t)
	if err := os.Chmod(filepath.Join(m.Dir(), "tmp"), 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(m.Dir(), "tmp"), 0o700) })
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 1<<20)
	if _, err := m.Deliver(context.Background(), tx); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Deliver into a read-only tmp/ = %v, want a permission error", err)
	}
	if left := dirNames(t, filepath.Join(m.Dir(), "new")); len(left) != 0 {
		t.Errorf("new/ holds %v", left)
	}
}

func TestResultDiskFullIsTemporaryInsufficientStorage(t *testing.T) {
	err := fmt.Errorf("maildir: write /x/tmp/y: %w", &os.PathError{Op: "write", Path: "/x/tmp/y", Err: syscall.ENOSPC})
	res := queue.Result(err)
	if res.Code != hooks.DenySoft || res.Enhanced != [3]int{4, 3, 1} || res.Err == nil {
		t.Fatalf("Result(disk full) = %+v, want DenySoft 4.3.1 with the error logged", res)
	}
	if rep := hooks.ReplyFor(hooks.HookQueue, res); rep.String() != "452 4.3.1 Insufficient system storage; try again later" || strings.Contains(rep.Msg, "/x/tmp") {
		t.Errorf("reply %q, want 452 4.3.1 without the path", rep)
	}
}

func TestMaildirCancelledContext(t *testing.T) {
	m := newMaildir(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 1<<20)
	if _, err := m.Deliver(ctx, tx); err == nil {
		t.Fatal("Deliver with a cancelled context succeeded")
	}
	if left := dirNames(t, filepath.Join(m.Dir(), "new")); len(left) != 0 {
		t.Errorf("new/ holds %v", left)
	}
}
