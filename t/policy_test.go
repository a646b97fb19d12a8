package t_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/queue/queuetest"
)

// A real Postfix (private config, queue and data directories, loopback
// only) asks `smtpd policy` at RCPT through check_policy_service, and
// what Sluice's plugins refuse Postfix refuses with the same code and
// text; what they let through, Postfix's own restrictions still judge.
func TestPolicyServiceBehindPostfix(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "smtpd.toml", `hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["maxrcpt", "rcptok", "maildir"]

[plugins.maxrcpt]
max = 2
action = "reject"

[plugins.rcptok]
domains = ["example.test", "outside.test"]

[plugins.maildir]
path = "./var/mail"
`)
	policy := startPolicy(t, dir, "-config", cfg, "-address", "127.0.0.1:0")
	if log := policy.Log(); !strings.Contains(log, `cannot run in policy mode`) || !strings.Contains(log, "maildir (queue)") {
		t.Errorf("the start did not warn of the plugins that cannot run:\n%s", log)
	}
	// Postfix's own domains are example.test and blocked.test; Sluice's
	// rcptok knows example.test (and outside.test, which Postfix does not
	// take: Sluice's DUNNO must leave Postfix's relay check in force).
	mx := startPostfix(t, fmt.Sprintf(`mydestination = example.test, blocked.test
smtpd_relay_restrictions =
smtpd_recipient_restrictions = check_policy_service inet:%s, reject_unauth_destination
`, policy.addr))

	out, _ := swaks(t, mx, "--from", "alice@sender.test", "--to",
		"bob@example.test,carol@blocked.test,dave@example.test,erin@example.test,x@outside.test", "--quit-after", "RCPT")
	for _, want := range []string{
		// Accepted by Sluice (DUNNO) and by Postfix.
		"-> RCPT TO:<bob@example.test>\n<-  250 2.1.5 Ok",
		// Refused by Sluice's rcptok: Postfix answers its code and text.
		"-> RCPT TO:<carol@blocked.test>\n<** 550 5.7.1 <carol@blocked.test>: Recipient address rejected: relaying denied",
		"-> RCPT TO:<dave@example.test>\n<-  250 2.1.5 Ok",
		// maxrcpt counts the transaction's recipients across requests
		// (Postfix's instance attribute): the third accepted one is refused.
		"-> RCPT TO:<erin@example.test>\n<** 552 5.5.3 <erin@example.test>: Recipient address rejected: Too many recipients",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("swaks through Postfix: missing\n%s\nin:\n%s", want, out)
		}
	}
	// A new transaction: rcptok accepts outside.test, Sluice says DUNNO
	// (never OK), and Postfix's reject_unauth_destination refuses it.
	out, _ = swaks(t, mx, "--from", "alice@sender.test", "--to", "x@outside.test", "--quit-after", "RCPT")
	if want := "<** 554 5.7.1 <x@outside.test>: Relay access denied"; !strings.Contains(out, want) {
		t.Errorf("a recipient Sluice let through was not left to Postfix's relay check: want %q in:\n%s", want, out)
	}
	log := policy.Log()
	for _, want := range []string{
		`state=RCPT client=127.0.0.1`, `recipient=carol@blocked.test`, `action="550 5.7.1 relaying denied"`,
		`plugin=maxrcpt code=DENY reply="552 5.5.3 Too many recipients"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the policy service's log lacks %q:\n%s", want, log)
		}
	}

	// smtpd policy -test asks as Postfix does: its exit status says
	// whether the mail would pass.
	for _, tc := range []struct {
		args   []string
		out    string
		status int
	}{
		{[]string{"recipient=bob@example.test"}, "action=DUNNO\n", 0},
		{[]string{"recipient=carol@blocked.test", "sender=alice@sender.test"}, "action=550 5.7.1 relaying denied\n", 1},
	} {
		args := append([]string{"policy", "-test", "-address", policy.addr}, tc.args...)
		cmd := exec.Command(smtpdBin, args...)
		got, err := cmd.Output()
		status := 0
		if ee, ok := err.(*exec.ExitError); ok {
			status = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.out || status != tc.status {
			t.Errorf("smtpd policy -test %v: %q, exit %d; want %q, exit %d", tc.args, got, status, tc.out, tc.status)
		}
	}
	// A service that does not answer: exit 2, for a monitoring check.
	free := freePort(t)
	cmd := exec.Command(smtpdBin, "policy", "-test", "-address", free)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "connection refused") {
		t.Errorf("smtpd policy -test with no service: %v, %s; want exit 2 and the reason", err, stderr.String())
	}
}

// policyService is a running `smtpd policy`.
type policyService struct {
	addr string
	mu   sync.Mutex
	log  bytes.Buffer
}

func (p *policyService) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

var policyListeningRe = regexp.MustCompile(`msg=listening listener=\S+ address=(\S+)`)

// startPolicy runs `smtpd policy` with args in dir until the test ends.
func startPolicy(t *testing.T, dir string, args ...string) *policyService {
	t.Helper()
	p := &policyService{}
	cmd := exec.Command(smtpdBin, append([]string{"policy"}, args...)...)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready, exited := make(chan string, 1), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := policyListeningRe.FindStringSubmatch(sc.Text()); m != nil {
				ready <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
		close(exited)
	}()
	select {
	case p.addr = <-ready:
	case <-exited:
		t.Fatalf("smtpd policy exited at start:\n%s", p.Log())
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("smtpd policy did not listen within 20s:\n%s", p.Log())
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("smtpd policy log:\n%s", p.Log())
		}
	})
	return p
}

// startPostfix runs a private Postfix until the test ends and returns its
// SMTP address: its own config, queue, data and meta directories in a
// temporary directory, smtpd on a free loopback port, no DNS, no
// delivery (nothing leaves the machine), and extra's main.cf lines. It
// never reads or writes /etc/postfix's main.cf or master.cf, nor uses
// port 25.
func startPostfix(t *testing.T, extra string) string {
	t.Helper()
	if _, err := exec.LookPath("postfix"); err != nil {
		t.Fatal("postfix is not installed: run `make deps` (Debian package postfix)")
	}
	if os.Getuid() != 0 {
		t.Fatal("starting a private Postfix needs root (its master runs as root and its daemons as the postfix user)")
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("no postfix user: run `make deps` (Debian package postfix): %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	// Not t.TempDir: Postfix's daemons, as the postfix user, must reach
	// the directory (TempDir's parent is 0700).
	dir, err := os.MkdirTemp("", "sluice-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "etc", "spool", "data", "meta"} {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o755)
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		t.Fatal(err)
	}
	// The package's lists of files and map types, read from a copy.
	for _, f := range []string{"postfix-files", "postfix-files.d", "dynamicmaps.cf", "dynamicmaps.cf.d"} {
		if _, err := os.Stat(filepath.Join("/etc/postfix", f)); err == nil {
			if out, err := exec.Command("cp", "-r", filepath.Join("/etc/postfix", f), filepath.Join(dir, "meta")).CombinedOutput(); err != nil {
				t.Fatalf("copying %s: %v\n%s", f, err, out)
			}
		}
	}
	smtpAddr := freePort(t)
	writeFile(t, filepath.Join(dir, "etc"), "main.cf", fmt.Sprintf(`compatibility_level = 3.6
config_directory = %[1]s/etc
queue_directory = %[1]s/spool
data_directory = %[1]s/data
meta_directory = %[1]s/meta
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mynetworks = 127.0.0.1/32
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
local_recipient_maps =
alias_maps =
alias_database =
default_transport = error:no outbound mail in this test
relay_transport = error:no outbound mail in this test
local_transport = discard:
biff = no
%[2]s`, dir, extra))
	writeFile(t, filepath.Join(dir, "etc"), "master.cf", queuetest.MasterCF(smtpAddr))
	postfix := func(args ...string) ([]byte, error) {
		return exec.Command("postfix", append([]string{"-c", filepath.Join(dir, "etc")}, args...)...).CombinedOutput()
	}
	maillog := func() string { b, _ := os.ReadFile(filepath.Join(dir, "maillog")); return string(b) }
	t.Cleanup(func() {
		pid := 0
		if b, err := os.ReadFile(filepath.Join(dir, "spool", "pid", "master.pid")); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if out, err := postfix("stop"); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
		}
		// Wait for the master (and so its daemons) to be gone.
		for deadline := time.Now().Add(20 * time.Second); pid > 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if syscall.Kill(pid, 0) != nil {
				break
			}
		}
		if t.Failed() {
			t.Logf("Postfix log:\n%s", maillog())
		}
		os.RemoveAll(dir)
	})
	if out, err := postfix("start"); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, maillog())
	}
	// Ready once it greets.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", smtpAddr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "220 ") {
				return smtpAddr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postfix did not greet on %s within 20s:\n%s", smtpAddr, maillog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
