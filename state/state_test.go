package state_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/state/statetest"
)

func TestMain(m *testing.M) { statetest.Main(m) }

func TestBbolt(t *testing.T) {
	s := state.Settings{DataDir: t.TempDir(), SweepInterval: 20 * time.Millisecond}
	statetest.Run(t, func(t *testing.T) state.Store { return statetest.Open(t, s) },
		func(t *testing.T, st state.Store) state.Store {
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			return statetest.Open(t, s)
		})
	if _, err := os.Stat(filepath.Join(s.DataDir, "state.db")); err != nil {
		t.Errorf("the store is not data_dir/state.db: %v", err)
	}
}

func TestRedis(t *testing.T) {
	s := state.Settings{Backend: state.Redis, Addrs: []string{statetest.Redis(t)}}
	statetest.Run(t, func(t *testing.T) state.Store { return statetest.Open(t, s) },
		func(t *testing.T, st state.Store) state.Store {
			st.Close()
			return statetest.Open(t, s)
		})
}

// Two handles of one file share one store: bbolt cannot open a file
// twice in a process, and a reload opens the new plugins' handle before
// the old plugins close theirs.
func TestBboltSharedInProcess(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := statetest.Open(t, state.Settings{DataDir: dir})
	b := statetest.Open(t, state.Settings{Path: filepath.Join(dir, "sub", "..", "state.db")})
	if err := a.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := b.Get(ctx, "k"); string(v) != "v" || !ok || err != nil {
		t.Fatalf("the second handle reads %q, %v, %v; want the first's value", v, ok, err)
	}
	// The old handle closes (the old plugins drained): the new one goes on.
	a.Close()
	if err := b.Set(ctx, "k", []byte("w"), 0); err != nil {
		t.Fatalf("after the other handle closed: %v", err)
	}
	// A new handle after every one closed opens the file again.
	b.Close()
	c := statetest.Open(t, state.Settings{DataDir: dir})
	if v, _, err := c.Get(ctx, "k"); string(v) != "w" || err != nil {
		t.Fatalf("reopened: %q, %v; want \"w\"", v, err)
	}
}

// Another process holding the file gets a clear error, naming the fix.
func TestBboltLockedByAnotherProcess(t *testing.T) {
	if os.Getenv("STATETEST_HOLD") != "" {
		st, err := state.Settings{Path: os.Getenv("STATETEST_HOLD")}.Open()
		if err != nil {
			os.Exit(2)
		}
		if err := st.Set(context.Background(), "held", []byte("1"), 0); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		os.Stdin.Read(make([]byte, 1)) // hold until the parent closes stdin
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	cmd := holder(t, path)
	defer cmd()
	st := statetest.Open(t, state.Settings{Path: path})
	err := st.Set(context.Background(), "k", []byte("v"), 0)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), `backend = "redis"`) {
		t.Fatalf("Set on a file another process holds: %v; want the lock named and redis suggested", err)
	}
}

func TestSettingsCheck(t *testing.T) {
	for _, tc := range []struct {
		s    state.Settings
		want string
	}{
		{state.Settings{Backend: "memcached"}, `backend = "memcached": want "bbolt"`},
		{state.Settings{Backend: "redis", Addrs: []string{"localhost"}}, `"localhost": want "host:port"`},
		{state.Settings{Backend: "redis", PasswordFile: "a", PasswordEnv: "B"}, "not both"},
		{state.Settings{Timeout: 5}, "bare number is nanoseconds"},
	} {
		if _, err := tc.s.Open(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%+v) = %v; want an error containing %q", tc.s, err, tc.want)
		}
	}
	_, err := state.Settings{Backend: "redis", PasswordEnv: "STATETEST_NO_SUCH_VARIABLE"}.Open()
	if err == nil || !strings.Contains(err.Error(), "STATETEST_NO_SUCH_VARIABLE is not set") {
		t.Errorf("a missing password variable: %v", err)
	}
}

// The [state] table and data_dir reach a plugin's state.Settings field.
func TestConfigFillsSettings(t *testing.T) {
	c, err := config.Parse("smtpd.toml", `data_dir = "/srv/sluice"
[state]
backend = "redis"
addrs = ["10.0.0.5:6379"]
password_env = "REDIS_PASSWORD"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["x"]

[plugins.x.state]
db = 2
`)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		State state.Settings `toml:"state"`
	}
	if err := c.Decoder("x")(&s); err != nil {
		t.Fatal(err)
	}
	got := s.State
	if got.Backend != "redis" || got.Addrs[0] != "10.0.0.5:6379" || got.PasswordEnv != "REDIS_PASSWORD" || got.DB != 2 || got.DataDir != "/srv/sluice" {
		t.Fatalf("settings = %+v", got)
	}
	_, err = config.Parse("smtpd.toml", "[state]\nbackend = \"mongo\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nplugins = [\"x\"]\n")
	if err == nil || !strings.Contains(err.Error(), "smtpd.toml:1: state: backend") {
		t.Fatalf("a bad backend: %v; want it named with its line", err)
	}
}

// holder runs this test binary as a second process that opens path and
// holds it until the returned function is called.
func holder(t *testing.T, path string) func() {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBboltLockedByAnotherProcess$")
	cmd.Env = append(os.Environ(), "STATETEST_HOLD="+path)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "held\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the holding process did not open %s: %q, %v", path, line, err)
	}
	return func() {
		in.Close()
		cmd.Wait()
	}
}

// TestBboltGroupCommitFailure: writes that share a commit get their own
// results: one that fails (Incr on text) fails alone, the others are
// committed.
func TestBboltGroupCommitFailure(t *testing.T) {
	st := statetest.Open(t, state.Settings{DataDir: t.TempDir()})
	ctx := context.Background()
	if err := st.Set(ctx, "text", []byte("not a number"), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var notInteger, other atomic.Int32
	for i := range 200 {
		key := "n"
		if i%10 == 0 {
			key = "text"
		}
		wg.Go(func() {
			_, err := st.Incr(ctx, key, 1, 0)
			switch {
			case errors.Is(err, state.ErrNotInteger) && key == "text":
				notInteger.Add(1)
			case err != nil:
				other.Add(1)
				t.Errorf("Incr(%q): %v", key, err)
			}
		})
	}
	wg.Wait()
	if notInteger.Load() != 20 || other.Load() != 0 {
		t.Errorf("%d ErrNotInteger, %d other errors; want 20 and 0", notInteger.Load(), other.Load())
	}
	if v, ok, err := st.Get(ctx, "n"); err != nil || !ok || string(v) != "180" {
		t.Errorf("n = %q, %v, %v; want 180", v, ok, err)
	}
}
