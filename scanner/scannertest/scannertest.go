// Package scannertest starts the real scanners the content filter tests
// talk to (ClamAV's clamd, SpamAssassin's spamd, rspamd) with private
// configurations in a directory the caller owns, on loopback and unix
// sockets only, so that no test touches the machine's own daemons or the
// network. A missing program is an error naming its Debian package.
package scannertest

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// EICAR is the EICAR anti-virus test file: harmless, and what every
// scanner is expected to find. StartClamd's database finds it.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// EICARSignature is the name clamd gives EICAR with StartClamd's
// database.
const EICARSignature = "Sluice-Test.EICAR.UNOFFICIAL"

// GTUBE is SpamAssassin's test string: a message holding it scores 1000.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// Daemon is a running scanner.
type Daemon struct {
	// Addr is its TCP address on loopback.
	Addr string
	// Socket is its unix socket, when it has one.
	Socket string
	stop   func()
}

// Stop ends the daemon and waits for it.
func (d *Daemon) Stop() { d.stop() }

func freeAddr() (string, int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", 0, err
	}
	defer l.Close()
	return l.Addr().String(), l.Addr().(*net.TCPAddr).Port, nil
}

// Closed returns the address of a loopback TCP port nothing listens on:
// a scanner that is down.
func Closed(t testing.TB) string {
	t.Helper()
	addr, _, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// Silent returns the address of a loopback TCP listener that accepts
// connections and never answers, closed when the test ends: a scanner
// that hangs, for testing timeouts.
func Silent(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// start runs cmd and waits until ready says the daemon serves, or it
// exits, or timeout passes.
func start(name string, cmd *exec.Cmd, timeout time.Duration, ready func() bool) (func(), error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ready() {
			return stop, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("%s exited at start:\n%s", name, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop()
	return nil, fmt.Errorf("%s was not ready within %s:\n%s", name, timeout, out.String())
}

// StartClamd runs clamd (Debian's clamav-daemon) with its configuration
// and database in dir: a unix socket and a loopback TCP port, the given
// StreamMaxLength, and a one-signature database that finds EICAR (ClamAV
// ships no signatures offline).
func StartClamd(dir string, streamMax int) (*Daemon, error) {
	bin := "/usr/sbin/clamd"
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("clamd is not installed: apt-get install clamav-daemon (%v)", err)
	}
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(db, 0o755); err != nil {
		return nil, err
	}
	sig := fmt.Sprintf("Sluice-Test.EICAR:0:*:%x\n", EICAR)
	if err := os.WriteFile(filepath.Join(db, "sluice-test.ndb"), []byte(sig), 0o644); err != nil {
		return nil, err
	}
	addr, port, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &Daemon{Addr: addr, Socket: filepath.Join(dir, "clamd.sock")}
	conf := filepath.Join(dir, "clamd.conf")
	text := fmt.Sprintf("Foreground yes\nLocalSocket %s\nTCPSocket %d\nTCPAddr 127.0.0.1\nDatabaseDirectory %s\nLogFile %s\nPidFile %s\nStreamMaxLength %d\n",
		d.Socket, port, db, filepath.Join(dir, "clamd.log"), filepath.Join(dir, "clamd.pid"), streamMax)
	if os.Getuid() == 0 {
		text += "User root\n"
	}
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	d.stop, err = start("clamd", exec.Command(bin, "-c", conf), 60*time.Second, func() bool {
		c, err := net.Dial("unix", d.Socket)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("zPING\x00"))
		b := make([]byte, 16)
		n, _ := c.Read(b)
		return strings.HasPrefix(string(b[:n]), "PONG")
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// StartSpamd runs spamd (Debian's spamd) on loopback with a private site
// configuration: Bayes and every network test (DNS blocklists, Razor,
// Pyzor) off, so that scores come from the rules alone. Its directory is
// one it makes under the system's temporary directory, readable by the
// user spamd's children run as (nobody, when started as root), and
// removed by Stop.
func StartSpamd() (*Daemon, error) {
	bin := "/usr/sbin/spamd"
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("spamd is not installed: apt-get install spamd (%v)", err)
	}
	dir, err := os.MkdirTemp("", "sluice-spamd-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	d, err := startSpamd(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	stop := d.stop
	d.stop = func() { stop(); os.RemoveAll(dir) }
	return d, nil
}

func startSpamd(dir string) (*Daemon, error) {
	bin := "/usr/sbin/spamd"
	site := filepath.Join(dir, "site")
	if err := os.MkdirAll(site, 0o755); err != nil {
		return nil, err
	}
	// The .pre files load SpamAssassin's plugins; without them spamd
	// cannot scan.
	pres, _ := filepath.Glob("/etc/spamassassin/*.pre")
	for _, pre := range pres {
		if b, err := os.ReadFile(pre); err == nil {
			os.WriteFile(filepath.Join(site, filepath.Base(pre)), b, 0o644)
		}
	}
	local := "use_bayes 0\nbayes_auto_learn 0\nskip_rbl_checks 1\ndns_available no\n"
	if err := os.WriteFile(filepath.Join(site, "local.cf"), []byte(local), 0o644); err != nil {
		return nil, err
	}
	addr, _, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"-x", "--siteconfigpath=" + site, "--listen=" + addr, "--pidfile=" + filepath.Join(dir, "spamd.pid"),
		"-s", "stderr", "--max-children=2", "--min-children=1"}
	if os.Getuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	d := &Daemon{Addr: addr}
	d.stop, err = start("spamd", exec.Command(bin, args...), 90*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprint(c, "PING SPAMC/1.5\r\n\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.Contains(line, "PONG")
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// StartRspamd runs rspamd (Debian's rspamd) on loopback with its
// configuration and state in dir: its workers on free ports (Addr is the
// normal worker's, for "http://" + Addr), no Redis, no greylisting by
// score, and its DNS pointed at a server on loopback that answers NXDOMAIN
// to everything, so that no lookup leaves the machine and none waits for a
// timeout. Stop stops that server too.
func StartRspamd(dir string) (*Daemon, error) {
	bin := "/usr/bin/rspamd"
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("rspamd is not installed: apt-get install rspamd (%v)", err)
	}
	local := filepath.Join(dir, "local")
	for _, d := range []string{"db", "run", "log", "local/local.d", "local/override.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	var addrs [3]string
	for i := range addrs {
		var err error
		if addrs[i], _, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	normal, controller, proxy := addrs[0], addrs[1], addrs[2]
	dns, err := dnstest.New()
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		"worker-normal.inc":     fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", normal),
		"worker-controller.inc": fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", controller),
		"worker-proxy.inc":      fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", proxy),
		"options.inc":           fmt.Sprintf("dns { nameserver = [%q]; timeout = 1s; retransmits = 1; }\n", dns.Addr),
		"logging.inc":           "type = \"console\";\nlevel = \"error\";\n",
		// No greylisting by score, and a higher bar for tagging: a ham
		// message from a test address without reverse DNS scores a few
		// points.
		"actions.conf": "greylist = null;\nadd_header = 10;\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(local, "local.d", name), []byte(text), 0o644); err != nil {
			dns.Close()
			return nil, err
		}
	}
	args := []string{"-f", "-c", "/etc/rspamd/rspamd.conf", "--var=DBDIR=" + dir + "/db", "--var=RUNDIR=" + dir + "/run",
		"--var=LOGDIR=" + dir + "/log", "--var=LOCAL_CONFDIR=" + local}
	if os.Getuid() == 0 {
		args = append(args, "-i", "-u", "root", "-g", "root")
	}
	client := &http.Client{Timeout: 2 * time.Second}
	stop, err := start("rspamd", exec.Command(bin, args...), 60*time.Second, func() bool {
		resp, err := client.Get("http://" + normal + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		dns.Close()
		return nil, err
	}
	return &Daemon{Addr: normal, stop: func() { stop(); dns.Close() }}, nil
}
