package clamav_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test starts one real clamd (Debian's clamav-daemon) for the package,
// with a private configuration and its own signature database: ClamAV
// ships no signatures offline, so the database holds one body signature
// for the EICAR test file.
var clamd struct {
	socket string // the unix socket, "" when clamd could not start
	tcp    string // its TCP address on loopback
	err    error
}

// eicar is the EICAR anti-virus test file: harmless, and what every
// scanner is expected to find.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// streamMax is the StreamMaxLength the test gives clamd.
const streamMax = 64 << 10

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-clamd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stop := startClamd(dir)
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startClamd(dir string) (stop func()) {
	stop = func() {}
	bin := "/usr/sbin/clamd"
	if _, err := os.Stat(bin); err != nil {
		clamd.err = fmt.Errorf("clamd is not installed: apt-get install clamav-daemon (%v)", err)
		return stop
	}
	db := filepath.Join(dir, "db")
	os.Mkdir(db, 0o755)
	sig := fmt.Sprintf("Sluice-Test.EICAR:0:*:%x\n", eicar)
	if err := os.WriteFile(filepath.Join(db, "sluice-test.ndb"), []byte(sig), 0o644); err != nil {
		clamd.err = err
		return stop
	}
	port := freePort()
	clamd.socket = filepath.Join(dir, "clamd.sock")
	clamd.tcp = fmt.Sprintf("127.0.0.1:%d", port)
	conf := filepath.Join(dir, "clamd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`Foreground yes
LocalSocket %s
TCPSocket %d
TCPAddr 127.0.0.1
DatabaseDirectory %s
LogFile %s
PidFile %s
StreamMaxLength %d
User root
`, clamd.socket, port, db, filepath.Join(dir, "clamd.log"), filepath.Join(dir, "clamd.pid"), streamMax)), 0o644)
	cmd := exec.Command(bin, "-c", conf)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		clamd.err = fmt.Errorf("start clamd: %w", err)
		return stop
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(clamd.socket); err == nil {
			return stop
		}
		select {
		case <-exited:
			clamd.err = fmt.Errorf("clamd exited at start:\n%s", out.String())
			return stop
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			clamd.err = fmt.Errorf("clamd did not open its socket within 30s:\n%s", out.String())
			return stop
		}
	}
}

// needClamd fails the test when clamd did not start.
func needClamd(t testing.TB) {
	t.Helper()
	if clamd.err != nil {
		t.Fatal(clamd.err)
	}
}
