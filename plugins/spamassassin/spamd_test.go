package spamassassin_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test starts one real spamd (Debian's spamd package) for the package,
// on loopback, with a private site configuration that turns off every
// network test (DNS blocklists, Razor, Pyzor) and Bayes: the scores come
// from the rules alone, the same on every machine.
var spamd struct {
	addr string
	err  error
}

const localCF = `use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
`

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-spamd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stop := startSpamd(dir)
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startSpamd(dir string) (stop func()) {
	stop = func() {}
	bin := "/usr/sbin/spamd"
	if _, err := os.Stat(bin); err != nil {
		spamd.err = fmt.Errorf("spamd is not installed: apt-get install spamd (%v)", err)
		return stop
	}
	// spamd's children run as nobody: they must read the configuration.
	os.Chmod(dir, 0o755)
	site := filepath.Join(dir, "site")
	os.Mkdir(site, 0o755)
	// The .pre files load SpamAssassin's plugins; without them spamd
	// cannot scan.
	pres, _ := filepath.Glob("/etc/spamassassin/*.pre")
	for _, pre := range pres {
		if b, err := os.ReadFile(pre); err == nil {
			os.WriteFile(filepath.Join(site, filepath.Base(pre)), b, 0o644)
		}
	}
	os.WriteFile(filepath.Join(site, "local.cf"), []byte(localCF), 0o644)
	spamd.addr = freeAddr()
	args := []string{"-x", "--siteconfigpath=" + site, "--listen=" + spamd.addr, "--pidfile=" + filepath.Join(dir, "spamd.pid"),
		"-s", "stderr", "--max-children=2", "--min-children=1"}
	if os.Getuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	cmd := exec.Command(bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		spamd.err = fmt.Errorf("start spamd: %w", err)
		return stop
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if ping(spamd.addr) {
			return stop
		}
		select {
		case <-exited:
			spamd.err = fmt.Errorf("spamd exited at start:\n%s", out.String())
			return stop
		case <-time.After(100 * time.Millisecond):
		}
	}
	spamd.err = fmt.Errorf("spamd did not answer PING within 60s:\n%s", out.String())
	return stop
}

// ping reports whether spamd answers the SPAMC PING with PONG.
func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprint(c, "PING SPAMC/1.5\r\n\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.Contains(line, "PONG")
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func needSpamd(t testing.TB) {
	t.Helper()
	if spamd.err != nil {
		t.Fatal(spamd.err)
	}
}
