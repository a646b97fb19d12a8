// Package t_test holds Sluice's end-to-end tests: they build the real
// smtpd binary, start it on a free loopback port with a config of their
// own, and drive it with swaks, Postfix's tools and raw sockets.
package t_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	smtpdBin string // the binary under test
	rootDir  string // the repository root
	// atExit runs, last first, when every test is done: it stops the
	// daemons the tests share (one Postfix, one Dovecot per package).
	atExit []func()
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	rootDir = filepath.Dir(filepath.Dir(file))
	dir, err := os.MkdirTemp("", "sluice-t-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	smtpdBin = filepath.Join(dir, "smtpd")
	args := []string{"build", "-o", smtpdBin}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/smtpd")...)
	build.Dir = rootDir
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building smtpd:", err)
		os.Exit(1)
	}
	code := m.Run()
	for i := len(atExit) - 1; i >= 0; i-- {
		atExit[i]()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// smtpd is one running server.
type smtpd struct {
	t       *testing.T
	cmd     *exec.Cmd
	dir     string // its working directory (data_dir is ./var there)
	addrs   map[string]string
	mu      sync.Mutex
	log     bytes.Buffer
	exited  chan struct{}
	exitErr error
}

var listeningRe = regexp.MustCompile(`msg=listening listener=(\S+) address=(\S+)`)

// startSmtpd writes cfg to smtpd.toml in a fresh directory and serves it.
// Listener addresses in cfg should be "127.0.0.1:0"; Addr returns the bound
// ones.
func startSmtpd(t *testing.T, cfg string) *smtpd {
	t.Helper()
	return startSmtpdIn(t, t.TempDir(), cfg)
}

// startSmtpdIn is startSmtpd in a directory the test prepared.
func startSmtpdIn(t *testing.T, dir, cfg string) *smtpd {
	t.Helper()
	path := filepath.Join(dir, "smtpd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &smtpd{t: t, dir: dir, addrs: map[string]string{}, exited: make(chan struct{})}
	s.cmd = exec.Command(smtpdBin, "-config", path)
	s.cmd.Dir = dir
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	want := strings.Count(cfg, "[[listener]]")
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		n := 0
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log.WriteString(line + "\n")
			if m := listeningRe.FindStringSubmatch(line); m != nil {
				s.addrs[m[1]] = m[2]
				if n++; n == want {
					close(ready)
				}
			}
			s.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		s.exitErr = s.cmd.Wait()
		close(s.exited)
	}()
	select {
	case <-ready:
	case <-s.exited:
		t.Fatalf("smtpd exited at start: %v\n%s", s.exitErr, s.Log())
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		t.Fatalf("smtpd did not start listening within 20s\n%s", s.Log())
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
		if strings.Contains(s.Log(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in smtpd")
		}
		if t.Failed() {
			t.Logf("smtpd log:\n%s", s.Log())
		}
	})
	return s
}

// stop sends SIGTERM and waits for smtpd to exit.
func (s *smtpd) stop() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("smtpd did not stop on SIGTERM\n%s", s.Log())
	}
}

// Addr returns the bound address of a listener.
func (s *smtpd) Addr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Log returns what smtpd logged so far.
func (s *smtpd) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// waitLog waits until the log contains substr.
func (s *smtpd) waitLog(substr string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.Log(), substr) {
		if time.Now().After(deadline) {
			s.t.Fatalf("log never contained %q:\n%s", substr, s.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// maildirFiles returns the files in DIR/new.
func maildirFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Join(dir, "new", e.Name()))
	}
	return out
}

// swaks runs swaks against addr and returns its transcript and exit code.
func swaks(t *testing.T, addr string, args ...string) (string, int) {
	t.Helper()
	if _, err := exec.LookPath("swaks"); err != nil {
		t.Fatal("swaks is not installed: run `make deps` (Debian package swaks)")
	}
	host, port, _ := strings.Cut(addr, ":")
	all := append([]string{"--server", host, "--port", port, "--timeout", "20"}, args...)
	cmd := exec.Command("swaks", all...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	return string(out), code
}

// writeFile writes content to name in dir and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
