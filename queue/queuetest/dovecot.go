package queuetest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// DovecotPath is the Dovecot master the LMTP rig runs; DovecotLMTPPath is
// its LMTP server, from the Debian package dovecot-lmtpd.
const (
	DovecotPath     = "/usr/sbin/dovecot"
	DovecotLMTPPath = "/usr/lib/dovecot/lmtp"
)

// DovecotOptions configure a private Dovecot LMTP server.
type DovecotOptions struct {
	// QuotaTempfail makes a message over quota a temporary failure,
	// "452 4.2.2", instead of a permanent "552 5.2.2"
	// (quota_full_tempfail = yes).
	QuotaTempfail bool
}

// Dovecot is a private Dovecot 2.3 LMTP server, started by
// StartDovecotLMTP or StartDovecotLMTPMain. Its userdb (a passwd-file,
// also its passdb, every password "s3cret") knows:
//
//   - alice@example.test and bob@example.test: delivered into Maildirs
//     (see Mailbox);
//   - tiny@example.test: a Maildir quota of 1 KiB. The quota is checked
//     after DATA (lmtp_rcpt_check_quota = no), so RCPT is accepted and a
//     larger message is refused for tiny alone, in tiny's reply after the
//     final dot: "552 5.2.2 <tiny@example.test> Quota exceeded (mailbox
//     for user is full)", or with QuotaTempfail the same text with
//     "452 4.2.2";
//   - nobody else: RCPT TO:<nobody@example.test> gets "550 5.1.1
//     <nobody@example.test> User doesn't exist: nobody@example.test".
//
// Dovecot 2.3's LMTP server (2.3.19 on Debian 12) answers LHLO with
// 8BITMIME, CHUNKING, ENHANCEDSTATUSCODES and PIPELINING, and nothing
// else: no SMTPUTF8, no DSN, no SIZE, no STARTTLS (ssl = no), no XCLIENT
// (127.0.0.1 is not in login_trusted_networks). An LMTP client must
// therefore refuse, or downgrade, a message that needs SMTPUTF8.
//
// Delivery is done before the reply after the final dot, so Mailbox holds
// the message as soon as the LMTP client has its 250.
type Dovecot struct {
	// Addr is the LMTP server on TCP, 127.0.0.1:port.
	Addr string
	// Socket is the same LMTP server on a unix socket.
	Socket string
	// UserdbSocket is the auth service's userdb socket (auth-userdb,
	// mode 0666), for clients that ask Dovecot whether a user exists.
	UserdbSocket string
	// Dir holds everything of this instance: dovecot.conf, users,
	// run (the sockets), mail (the Maildirs) and dovecot.log.
	Dir string

	cmd      *exec.Cmd
	exited   chan error // receives once, when the master has exited
	stderr   bytes.Buffer
	watchdog *exec.Cmd
}

// dovecotUsers is the passwd-file, both passdb and userdb:
// user:password:uid:gid:gecos:home:shell:extra fields. The userdb reads
// an extra field only with the prefix userdb_ (a bare quota_rule= is
// ignored).
const dovecotUsers = `alice@example.test:{PLAIN}s3cret:%[1]d:%[2]d::%[3]s/mail/alice@example.test::
bob@example.test:{PLAIN}s3cret:%[1]d:%[2]d::%[3]s/mail/bob@example.test::
tiny@example.test:{PLAIN}s3cret:%[1]d:%[2]d::%[3]s/mail/tiny@example.test::userdb_quota_rule=*:storage=1K
`

// StartDovecotLMTP starts a private Dovecot LMTP server (see Dovecot) for
// the test and stops it, removing its directory, when the test ends; on
// failure it prints Dovecot's log. It fails the test when Dovecot's LMTP
// server is not installed. Start one per test package (sync.Once or
// StartDovecotLMTPMain from TestMain): it takes about 40 ms to start and,
// because of Dovecot's own shutdown, 1.1 s to stop.
func StartDovecotLMTP(t testing.TB, o DovecotOptions) *Dovecot {
	t.Helper()
	d, err := StartDovecotLMTPMain(o)
	if err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, d, "Dovecot log", d.Dir)
	return d
}

// StartDovecotLMTPMain starts a private Dovecot LMTP server (see Dovecot)
// for use from TestMain, where there is no testing.TB: call Stop when the
// tests are done. The error says what is missing when it cannot start.
func StartDovecotLMTPMain(o DovecotOptions) (*Dovecot, error) {
	for path, pkg := range map[string]string{DovecotPath: "dovecot-core", DovecotLMTPPath: "dovecot-lmtpd"} {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("queuetest: %s is missing: run `make deps` (Debian package %s)", path, pkg)
		}
	}
	// Short paths: unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "sluice-dv-")
	if err != nil {
		return nil, fmt.Errorf("queuetest: %v", err)
	}
	d := &Dovecot{
		Dir:          dir,
		Socket:       filepath.Join(dir, "run", "lmtp"),
		UserdbSocket: filepath.Join(dir, "run", "auth-userdb"),
		exited:       make(chan error, 1),
	}
	conf, err := d.setUp(o)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d.cmd = exec.Command(DovecotPath, "-F", "-c", conf)
	d.cmd.Stdout, d.cmd.Stderr = &d.stderr, &d.stderr
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("queuetest: starting dovecot: %v", err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	// When the test binary dies, Dovecot stops too.
	if d.watchdog, err = startWatchdog(d.cmd.Process.Pid); err != nil {
		err = fmt.Errorf("queuetest: dovecot: %v", err)
		d.Stop()
		return nil, err
	}
	if err := d.waitReady(10 * time.Second); err != nil {
		stopWatchdog(d.watchdog)
		d.halt()
		err = fmt.Errorf("queuetest: dovecot: %v\nstderr:\n%s\nlog:\n%s", err, d.stderr.String(), d.Log())
		os.RemoveAll(dir)
		return nil, err
	}
	return d, nil
}

// setUp writes the configuration and the users, makes the directories and
// returns the configuration's path.
func (d *Dovecot) setUp(o DovecotOptions) (string, error) {
	self, err := user.Current()
	if err != nil {
		return "", fmt.Errorf("queuetest: %v", err)
	}
	group, err := user.LookupGroupId(self.Gid)
	if err != nil {
		return "", fmt.Errorf("queuetest: %v", err)
	}
	// Dovecot delivers as the userdb's uid, never as root: as root, the
	// mail belongs to nobody.
	mailUser := self
	if os.Geteuid() == 0 {
		if mailUser, err = user.Lookup("nobody"); err != nil {
			return "", fmt.Errorf("queuetest: no user nobody to own the test Maildirs: %v", err)
		}
	}
	uid, _ := strconv.Atoi(mailUser.Uid)
	gid, _ := strconv.Atoi(mailUser.Gid)
	for _, sub := range []string{"", "run", "state", "mail"} {
		path := filepath.Join(d.Dir, sub)
		if err := os.MkdirAll(path, 0o755); err != nil {
			return "", fmt.Errorf("queuetest: %v", err)
		}
		// The mail user must reach its Maildir (MkdirTemp made 0700).
		if err := os.Chmod(path, 0o755); err != nil {
			return "", fmt.Errorf("queuetest: %v", err)
		}
	}
	if err := os.Chown(filepath.Join(d.Dir, "mail"), uid, gid); err != nil {
		return "", fmt.Errorf("queuetest: %v", err)
	}
	users := filepath.Join(d.Dir, "users")
	if err := os.WriteFile(users, fmt.Appendf(nil, dovecotUsers, uid, gid, d.Dir), 0o644); err != nil {
		return "", fmt.Errorf("queuetest: %v", err)
	}
	d.Addr = freeAddr()
	if d.Addr == "" {
		return "", errors.New("queuetest: no free port on 127.0.0.1")
	}
	_, port, _ := net.SplitHostPort(d.Addr)
	tempfail := "no"
	if o.QuotaTempfail {
		tempfail = "yes"
	}
	conf := filepath.Join(d.Dir, "dovecot.conf")
	text := fmt.Sprintf(`# A private Dovecot LMTP server for Sluice's tests (queue/queuetest).
base_dir = %[1]s/run
state_dir = %[1]s/state
protocols = lmtp
ssl = no
log_path = %[1]s/dovecot.log
hostname = lmtp.example.test
postmaster_address = postmaster@example.test
default_internal_user = %[2]s
default_internal_group = %[3]s
default_login_user = %[2]s
first_valid_uid = 1
mail_location = maildir:%[1]s/mail/%%u
mail_plugins = quota
lmtp_rcpt_check_quota = no
quota_full_tempfail = %[4]s
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[5]s
}
userdb {
  driver = passwd-file
  args = username_format=%%u %[5]s
}
plugin {
  quota = maildir:User quota
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[6]s
  }
  unix_listener lmtp {
    mode = 0666
  }
}
service auth {
  unix_listener auth-userdb {
    mode = 0666
  }
}
`, d.Dir, self.Username, group.Name, tempfail, users, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return "", fmt.Errorf("queuetest: %v", err)
	}
	return conf, nil
}

// waitReady waits until the LMTP server greets on TCP and on its unix
// socket and the userdb socket accepts connections.
func (d *Dovecot) waitReady(timeout time.Duration) error {
	for _, l := range []struct{ network, addr string }{{"tcp", d.Addr}, {"unix", d.Socket}} {
		if err := waitGreeting(l.network, l.addr, timeout, d.exited); err != nil {
			return err
		}
	}
	// The auth service starts with the master, before the LMTP
	// listeners answer; one try suffices.
	c, err := net.DialTimeout("unix", d.UserdbSocket, time.Second)
	if err != nil {
		return fmt.Errorf("no userdb socket: %v", err)
	}
	return c.Close()
}

// Stop stops Dovecot, waits until its master has exited and removes its
// directory. StartDovecotLMTP calls it at the end of the test. It takes a
// second: Dovecot's master gives its log process that long to finish.
func (d *Dovecot) Stop() error {
	stopWatchdog(d.watchdog)
	return errors.Join(d.halt(), os.RemoveAll(d.Dir))
}

// halt stops Dovecot and waits until its master has exited.
func (d *Dovecot) halt() error {
	// SIGTERM: the master stops its services and exits.
	return halt(d.cmd, d.exited, 10*time.Second, "dovecot")
}

// Log returns Dovecot's log so far (log_path): one line per delivery
// ("msgid=<...>: saved mail to INBOX") and per refusal, and any error.
// Dovecot's log process writes it a moment after the LMTP reply: poll
// with a deadline for a line you expect.
func (d *Dovecot) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dovecot.log"))
	return string(b)
}

// Mailbox returns every message in user's Maildir INBOX (new/ and cur/),
// sorted by file name (see Postfix.Mailbox). user is an address or a local part of
// example.test. Each message is as Dovecot stored it: Return-Path,
// Delivered-To and Dovecot's Received header, then the message as it was
// sent, with LF line ends instead of CRLF.
func (d *Dovecot) Mailbox(user string) [][]byte {
	return readMaildir(filepath.Join(d.Dir, "mail", mailAddress(user)))
}
