package t_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server/certs"
)

// makeTarget runs `make TARGET` (install, uninstall) into destdir with the
// binary under test, and returns make's output.
func makeTarget(t *testing.T, target, destdir string, vars ...string) string {
	t.Helper()
	out, err := runMake(target, destdir, append([]string{"BIN=" + smtpdBin}, vars...)...)
	if err != nil {
		t.Fatalf("make %s DESTDIR=%s %s: %v\n%s", target, destdir, strings.Join(vars, " "), err, out)
	}
	return out
}

// runMake runs `make TARGET DESTDIR=destdir VARS...` in the repository and
// returns its output and exit error.
func runMake(target, destdir string, vars ...string) (string, error) {
	cmd := exec.Command("make", append([]string{"-s", "--no-print-directory", target, "DESTDIR=" + destdir}, vars...)...)
	cmd.Dir = rootDir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tree lists every file and directory under root as "MODE PATH" (PATH
// relative to root), one a line, sorted.
func tree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		lines = append(lines, fi.Mode().String()+" "+rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func TestMakeInstallLaysOutFilesAndKeepsTheConfig(t *testing.T) {
	dest := t.TempDir()
	makeTarget(t, "install", dest)
	want := strings.Join([]string{
		"drwxr-xr-x etc",
		"drwxr-xr-x etc/sluice",
		"-rw-r--r-- etc/sluice/smtpd.toml",
		"drwxr-xr-x usr",
		"drwxr-xr-x usr/local",
		"drwxr-xr-x usr/local/bin",
		"-rwxr-xr-x usr/local/bin/smtpd",
		"drwxr-xr-x usr/local/lib",
		"drwxr-xr-x usr/local/lib/systemd",
		"drwxr-xr-x usr/local/lib/systemd/system",
		"-rw-r--r-- usr/local/lib/systemd/system/sluice.service",
		"-rw-r--r-- usr/local/lib/systemd/system/sluice.socket",
	}, "\n")
	if got := tree(t, dest); got != want {
		t.Fatalf("make install DESTDIR=%s laid out\n%s\nwant\n%s", dest, got, want)
	}
	if got, want := readFile(t, filepath.Join(dest, "etc/sluice/smtpd.toml")), readFile(t, filepath.Join(rootDir, "packaging/smtpd.toml")); got != want {
		t.Fatalf("the installed config is not packaging/smtpd.toml")
	}
	unit := readFile(t, filepath.Join(dest, "usr/local/lib/systemd/system/sluice.service"))
	if !strings.Contains(unit, "\nExecStart=/usr/local/bin/smtpd -config /etc/sluice/smtpd.toml\n") {
		t.Fatalf("installed unit's ExecStart:\n%s", unit)
	}

	// The admin's config survives a second install; the new sample goes
	// beside it. uninstall leaves the config.
	cfg := filepath.Join(dest, "etc/sluice/smtpd.toml")
	if err := os.WriteFile(cfg, []byte("# mine\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	out := makeTarget(t, "install", dest)
	if !strings.Contains(out, "smtpd.toml exists: kept") {
		t.Errorf("second install did not say it kept the config:\n%s", out)
	}
	if got := readFile(t, cfg); got != "# mine\n" {
		t.Fatalf("second install overwrote the config: %q", got)
	}
	if got, want := readFile(t, cfg+".sample"), readFile(t, filepath.Join(rootDir, "packaging/smtpd.toml")); got != want {
		t.Fatalf("smtpd.toml.sample is not packaging/smtpd.toml")
	}
	makeTarget(t, "uninstall", dest)
	var files []string
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			files = append(files, rel)
		}
		return nil
	})
	if strings.Join(files, " ") != "etc/sluice/smtpd.toml" {
		t.Fatalf("after uninstall these files are left: %v; want only the admin's etc/sluice/smtpd.toml", files)
	}

	// A distribution's layout: PREFIX=/usr puts the units in
	// /usr/lib/systemd/system and ExecStart names /usr/bin/smtpd.
	dest = t.TempDir()
	makeTarget(t, "install", dest, "PREFIX=/usr")
	unit = readFile(t, filepath.Join(dest, "usr/lib/systemd/system/sluice.service"))
	if !strings.Contains(unit, "\nExecStart=/usr/bin/smtpd -config /etc/sluice/smtpd.toml\n") || !strings.Contains(unit, "\nExecStartPre=/usr/bin/smtpd check ") {
		t.Fatalf("PREFIX=/usr unit's ExecStart lines:\n%s", unit)
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/bin/smtpd")); err != nil {
		t.Fatal(err)
	}
}

// systemdAnalyzeVerify runs `systemd-analyze verify` on the unit files and
// returns its exit status and output. A clean unit gives none: verify
// reports some mistakes (an unknown key, a bad value) only as a warning
// and exits 0.
func systemdAnalyzeVerify(t *testing.T, units ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, units...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func TestInstalledUnitsPassSystemdAnalyzeVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): the units are not verified")
	}
	dest := t.TempDir()
	makeTarget(t, "install", dest)
	// verify checks that ExecStart's program exists: point the units at
	// the installed one inside DESTDIR.
	units := t.TempDir()
	for _, name := range []string{"sluice.service", "sluice.socket"} {
		b := readFile(t, filepath.Join(dest, "usr/local/lib/systemd/system", name))
		b = strings.ReplaceAll(b, "/usr/local/bin/smtpd", filepath.Join(dest, "usr/local/bin/smtpd"))
		writeFile(t, units, name, b)
	}
	svc, sock := filepath.Join(units, "sluice.service"), filepath.Join(units, "sluice.socket")
	if code, out := systemdAnalyzeVerify(t, svc, sock); code != 0 || out != "" {
		t.Fatalf("systemd-analyze verify: exit %d\n%s", code, out)
	}

	// The check can fail: a misspelt key and a missing program are reported.
	writeFile(t, units, "sluice.service", strings.Replace(readFile(t, svc), "NoNewPrivileges=yes", "NoNewPrivilege=yes", 1))
	if code, out := systemdAnalyzeVerify(t, svc); !strings.Contains(out, "Unknown key 'NoNewPrivilege'") {
		t.Fatalf("a misspelt key: exit %d, output %q", code, out)
	}
	writeFile(t, units, "sluice.service", strings.ReplaceAll(readFile(t, svc), filepath.Join(dest, "usr/local/bin/smtpd"), "/nonexistent/smtpd"))
	if code, out := systemdAnalyzeVerify(t, svc); code == 0 || !strings.Contains(out, "/nonexistent/smtpd is not executable") {
		t.Fatalf("a missing ExecStart program: exit %d, output %q", code, out)
	}
}

// writeTestCertificate writes a throwaway self-signed certificate for host
// and its key as PEM files.
func writeTestCertificate(t *testing.T, certPath, keyPath, host string) {
	t.Helper()
	cert, key, err := certs.SelfSignedPEM(host, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The shipped production config passes `smtpd check` once its
// certificate files exist (here /etc/sluice and /var/lib/sluice moved into
// a temporary directory), with the three listeners the docs promise.
func TestShippedProductionConfigChecks(t *testing.T) {
	dir := t.TempDir()
	etc, data := filepath.Join(dir, "etc"), filepath.Join(dir, "data")
	cfg := readFile(t, filepath.Join(rootDir, "packaging/smtpd.toml"))
	cfg = strings.ReplaceAll(cfg, "/etc/sluice", etc)
	cfg = strings.ReplaceAll(cfg, "/var/lib/sluice", data)
	path := writeFile(t, dir, "smtpd.toml", cfg)

	cmd := exec.Command(smtpdBin, "check", "-config", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil || !strings.Contains(stderr.String(), "mail.example.com.pem: no such file or directory") {
		t.Fatalf("check without the certificate: %v\n%s", err, stderr.String())
	}

	writeTestCertificate(t, filepath.Join(etc, "tls/mail.example.com.pem"), filepath.Join(etc, "tls/mail.example.com.key"), "mail.example.com")
	stdout.Reset()
	stderr.Reset()
	cmd = exec.Command(smtpdBin, "check", "-config", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("smtpd check: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	want := "listener mx on :25: loop, size, rcptok, postfix\n" +
		"listener submission on :587: authfile, senderlogin, rcptok, postfix\n" +
		"listener submissions on :465: authfile, senderlogin, rcptok, postfix\n" +
		path + ": OK\n"
	if stdout.String() != want {
		t.Fatalf("smtpd check printed\n%s\nwant\n%s", stdout.String(), want)
	}
}

// activated is smtpd started by systemd-socket-activate, which binds the
// socket, waits for the first connection, then execs smtpd with it as
// descriptor 3 (LISTEN_FDS=1, LISTEN_FDNAMES with --fdname).
type activated struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
	err    error
}

func (a *activated) Log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// waitLog waits until the log contains substr, or smtpd exits.
func (a *activated) waitLog(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(a.Log(), substr) {
		select {
		case <-a.exited:
			if strings.Contains(a.Log(), substr) {
				return
			}
			t.Fatalf("exited (%v) and the log never contained %q:\n%s", a.err, substr, a.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never contained %q:\n%s", substr, a.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func socketActivate(t *testing.T, addr, cfg string, saArgs ...string) *activated {
	t.Helper()
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	path := writeFile(t, dir, "smtpd.toml", cfg)
	args := append([]string{"-l", addr}, saArgs...)
	args = append(args, smtpdBin, "-config", path)
	a := &activated{cmd: exec.Command("systemd-socket-activate", args...), exited: make(chan struct{})}
	a.cmd.Dir = dir
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			a.mu.Lock()
			a.log.WriteString(sc.Text() + "\n")
			a.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		a.err = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
		}
		if t.Failed() {
			t.Logf("log:\n%s", a.Log())
		}
	})
	a.waitLog(t, "Listening on "+addr+" as 3.")
	return a
}

// activatedConfig is one listener for example.test delivering to a Maildir
// under the working directory, at address.
func activatedConfig(name, address string) string {
	return `hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name    = "` + name + `"
address = "` + address + `"
plugins = ["rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"
`
}

// greetAndDeliver reads the greeting on a fresh connection, then delivers
// a message with go-smtp's client, and returns the greeting and the reply
// to the final dot.
func greetAndDeliver(t *testing.T, addr string) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	greeting, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the greeting: %v", err)
	}
	io.WriteString(c, "QUIT\r\n")
	reply, err := sendGo(t, addr, nil, "alice@example.org", []string{"bob@example.test"}, "Subject: activated\r\n\r\nhello\r\n")
	if err != nil {
		t.Fatalf("delivery: %v", err)
	}
	return strings.TrimRight(greeting, "\r\n"), reply
}

// Started by systemd-socket-activate with --fdname=mx, smtpd serves the
// passed socket on the listener named mx, whose own address (TEST-NET-1,
// which no machine here can bind) is never bound.
func TestSocketActivationByName(t *testing.T) {
	addr := freePort(t)
	a := socketActivate(t, addr, activatedConfig("mx", "192.0.2.1:25"), "--fdname=mx")
	greeting, reply := greetAndDeliver(t, addr)
	if greeting != "220 mx.example.test ESMTP Sluice ready" {
		t.Fatalf("greeting %q", greeting)
	}
	if !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("reply to the final dot: %q", reply)
	}
	a.waitLog(t, "sockets_from_systemd=1")
	a.waitLog(t, "msg=listening listener=mx address="+addr)
	files := maildirFiles(t, filepath.Join(a.cmd.Dir, "var/mail"))
	if len(files) != 1 || !strings.Contains(readFile(t, files[0]), "Subject: activated\r\n\r\nhello\r\n") {
		t.Fatalf("Maildir holds %v", files)
	}
}

// Without a name (LISTEN_FDNAMES unset) the passed socket goes to the
// listener with its address; binding that address again would fail, so
// a served connection proves the socket was inherited.
func TestSocketActivationByAddress(t *testing.T) {
	addr := freePort(t)
	a := socketActivate(t, addr, activatedConfig("inbound", addr))
	greeting, reply := greetAndDeliver(t, addr)
	if greeting != "220 mx.example.test ESMTP Sluice ready" || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("greeting %q, reply %q", greeting, reply)
	}
	a.waitLog(t, "msg=listening listener=inbound address="+addr)
}

// A passed socket that is no listener's stops smtpd with an error that
// names it, its address and the listeners; the client gets no greeting.
func TestSocketActivationUnmatchedSocketIsAnError(t *testing.T) {
	addr := freePort(t)
	a := socketActivate(t, addr, activatedConfig("mx", "192.0.2.1:25"), "--fdname=submission")
	c, err := net.Dial("tcp", addr) // systemd-socket-activate execs smtpd now
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	// The socket closes with the pending connection in its queue: a reset.
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client read %q, %v; want the connection closed without a word", b, err)
	}
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("smtpd did not exit")
	}
	if ee, ok := a.err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1", a.err)
	}
	want := `smtpd: socket activation: the passed socket "submission" on ` + addr + ` matches no [[listener]] by name or address (listeners: "mx" on 192.0.2.1:25)`
	if !strings.Contains(a.Log(), want) {
		t.Fatalf("log lacks %q:\n%s", want, a.Log())
	}
}

// Under Type=notify smtpd tells systemd READY=1 once it listens,
// RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM,
// through the datagram socket NOTIFY_SOCKET names.
func TestNotifiesSystemdOfItsState(t *testing.T) {
	dir, err := os.MkdirTemp("", "sn") // a short path: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sockPath := filepath.Join(dir, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	t.Setenv("NOTIFY_SOCKET", sockPath)
	s := startSmtpd(t, activatedConfig("mx", "127.0.0.1:0"))
	next := func() string {
		t.Helper()
		sock.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 4096)
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("waiting for a notification: %v\n%s", err, s.Log())
		}
		return string(buf[:n])
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	if got := next(); got != "RELOADING=1" {
		t.Fatalf("on SIGHUP %q, want RELOADING=1", got)
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("after the reload %q, want READY=1", got)
	}
	s.waitLog("msg=reloaded")
	s.cmd.Process.Signal(syscall.SIGTERM)
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("on SIGTERM %q, want STOPPING=1", got)
	}
	s.stop()
}

// `sudo make install` after a `git pull` without `make build` would put
// the old binary in place: make install refuses a binary older than the
// sources, naming what to run, and STALE_OK=1 overrides.
func TestMakeInstallRefusesAStaleBinary(t *testing.T) {
	old := filepath.Join(t.TempDir(), "smtpd")
	if err := os.WriteFile(old, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	long := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(old, long, long); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	out, err := runMake("install", dest, "BIN="+old)
	if err == nil || !strings.Contains(out, "make install: "+old+" is older than ./") ||
		!strings.Contains(out, "run 'make build' first") {
		t.Fatalf("make install with a binary from 2001: err %v, want a refusal naming 'make build'\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/local/bin/smtpd")); err == nil {
		t.Fatalf("the refused install put the binary in place")
	}
	if out, err := runMake("install", dest, "BIN="+old, "STALE_OK=1"); err != nil {
		t.Fatalf("make install STALE_OK=1: %v\n%s", err, out)
	}
	if got := readFile(t, filepath.Join(dest, "usr/local/bin/smtpd")); got != "#!/bin/sh\n" {
		t.Fatalf("STALE_OK=1 installed %q", got)
	}
}
