package rspamd_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The test starts one real rspamd (Debian's rspamd) for the package, on
// loopback, with a private configuration: its own directories, its workers
// on free ports, no Redis, and its DNS pointed at a server the test runs
// on loopback that answers NXDOMAIN to everything, so no lookup leaves the
// machine and none waits for a timeout.
var daemon struct {
	url string
	err error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-rspamd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stop := startRspamd(dir)
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startDNS runs a DNS server on loopback that answers NXDOMAIN.
func startDNS() (addr string, stop func(), err error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	return pc.LocalAddr().String(), func() { srv.Shutdown() }, nil
}

func startRspamd(dir string) (stop func()) {
	stop = func() {}
	bin := "/usr/bin/rspamd"
	if _, err := os.Stat(bin); err != nil {
		daemon.err = fmt.Errorf("rspamd is not installed: apt-get install rspamd (%v)", err)
		return stop
	}
	dnsAddr, stopDNS, err := startDNS()
	if err != nil {
		daemon.err = err
		return stop
	}
	local := filepath.Join(dir, "local")
	for _, d := range []string{"db", "run", "log", "local/local.d", "local/override.d"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	normal, controller, proxy := freeAddr(), freeAddr(), freeAddr()
	files := map[string]string{
		"worker-normal.inc":     fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", normal),
		"worker-controller.inc": fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", controller),
		"worker-proxy.inc":      fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", proxy),
		"options.inc":           fmt.Sprintf("dns { nameserver = [%q]; timeout = 1s; retransmits = 1; }\n", dnsAddr),
		"logging.inc":           "type = \"console\";\nlevel = \"error\";\n",
		// No greylisting by score, and a higher bar for tagging: a ham
		// message from a test address without reverse DNS scores a few
		// points.
		"actions.conf": "greylist = null;\nadd_header = 10;\n",
	}
	for name, text := range files {
		os.WriteFile(filepath.Join(local, "local.d", name), []byte(text), 0o644)
	}
	args := []string{"-f", "-c", "/etc/rspamd/rspamd.conf", "--var=DBDIR=" + dir + "/db", "--var=RUNDIR=" + dir + "/run",
		"--var=LOGDIR=" + dir + "/log", "--var=LOCAL_CONFDIR=" + local}
	if os.Getuid() == 0 {
		args = append(args, "-i", "-u", "root", "-g", "root")
	}
	cmd := exec.Command(bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		daemon.err = fmt.Errorf("start rspamd: %w", err)
		stopDNS()
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
		stopDNS()
	}
	daemon.url = "http://" + normal
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(daemon.url + "/ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return stop
			}
		}
		select {
		case <-exited:
			daemon.err = fmt.Errorf("rspamd exited at start:\n%s", out.String())
			return stop
		case <-time.After(100 * time.Millisecond):
		}
	}
	daemon.err = fmt.Errorf("rspamd did not answer /ping within 60s:\n%s", out.String())
	return stop
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func needRspamd(t testing.TB) {
	t.Helper()
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
}
