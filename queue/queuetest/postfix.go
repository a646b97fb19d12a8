package queuetest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MailDomain is the one domain the Postfix and Dovecot rigs deliver.
const MailDomain = "example.test"

// PostfixOptions configure a private Postfix. The zero value offers what
// Debian's Postfix 3.7 offers: SMTPUTF8, 8BITMIME and DSN.
type PostfixOptions struct {
	// NoSMTPUTF8 stops smtpd from offering SMTPUTF8 (smtputf8_enable =
	// no); MAIL FROM:<...> SMTPUTF8 then gets "555 5.5.4 Unsupported
	// option: SMTPUTF8".
	NoSMTPUTF8 bool
	// No8BitMIME hides 8BITMIME from the EHLO reply
	// (smtpd_discard_ehlo_keywords); smtpd still accepts BODY=8BITMIME
	// and 8-bit bytes.
	No8BitMIME bool
	// NoDSN hides DSN from the EHLO reply (smtpd_discard_ehlo_keywords);
	// a MAIL or RCPT with RET=, ENVID=, NOTIFY= or ORCPT= then gets
	// "501 5.7.1 DSN support is disabled".
	NoDSN bool
}

// Postfix is a private Postfix 3.7 on loopback, started by StartPostfix
// or StartPostfixMain. Its smtpd answers for the domain example.test:
//
//   - alice@example.test, bob@example.test and tiny@example.test are
//     accepted and delivered by virtual(8) into Maildirs (see Mailbox);
//     tiny is the Dovecot rig's user with a tiny quota, so this Postfix
//     can stand for the site's MTA that takes what Dovecot refuses;
//   - nobody@example.test is refused at RCPT: "550 5.1.1 <nobody@example.test>:
//     Recipient address rejected: User unknown in virtual mailbox table";
//   - full@example.test is refused at RCPT for now:
//     "452 4.2.2 <full@example.test>: Recipient address rejected: Mailbox full";
//   - any other domain is refused at RCPT: "554 5.7.1 <x@other.test>:
//     Relay access denied" (mynetworks holds only 192.0.2.1, so 127.0.0.1
//     may not relay).
//
// Nothing leaves the machine: no DNS, default and relay transports are
// error(8), and only smtpd listens (on 127.0.0.1). A success DSN
// (NOTIFY=SUCCESS) goes to the envelope sender, so a message from
// bob@example.test brings its DSN, with Original-Envelope-Id (ENVID) and
// Original-Recipient (ORCPT), into bob's Maildir.
type Postfix struct {
	// Addr is smtpd's address, 127.0.0.1:port.
	Addr string
	// Dir holds everything of this instance: etc (main.cf, master.cf,
	// maps), spool, data, mail (the Maildirs) and maillog.
	Dir string

	master   *exec.Cmd
	exited   chan error // receives once, when the master has exited
	watchdog *exec.Cmd
}

// postfixUsers are the mailboxes virtual(8) delivers to; full is listed
// so that only the access map refuses it.
var postfixUsers = []string{"alice", "bob", "tiny", "full"}

// StartPostfix starts a private Postfix (see Postfix) for the test and
// stops it, removing its directory, when the test ends; on failure it
// prints the maillog. It fails the test when Postfix is not installed or
// the test does not run as root (Postfix's master must). Start one per
// test package (sync.Once or StartPostfixMain from TestMain), though it
// is quick: about 50 ms to the first greeting, 15 ms to stop.
func StartPostfix(t testing.TB, o PostfixOptions) *Postfix {
	t.Helper()
	p, err := StartPostfixMain(o)
	if err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, p, "Postfix maillog", p.Dir)
	return p
}

// daemon is a private server a test started.
type daemon interface {
	Log() string
	Stop() error
}

// stopAtCleanup stops d when the test ends, printing its log (what, in
// dir) first when the test failed.
func stopAtCleanup(t testing.TB, d daemon, what, dir string) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s (%s):\n%s", what, dir, d.Log())
		}
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
	})
}

// StartPostfixMain starts a private Postfix (see Postfix) for use from
// TestMain, where there is no testing.TB: call Stop when the tests are
// done. The error says what is missing when it cannot start.
func StartPostfixMain(o PostfixOptions) (*Postfix, error) {
	if _, err := exec.LookPath("postfix"); err != nil {
		return nil, errors.New("queuetest: postfix is not installed: run `make deps` (Debian package postfix)")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("queuetest: a private Postfix needs root (its master runs as root, its daemons as the postfix user): run the tests as root")
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("queuetest: no postfix user (install the Debian package postfix): %v", err)
	}
	// Not t.TempDir: the postfix user must reach the directory (the
	// parent of a TempDir is 0700).
	dir, err := os.MkdirTemp("", "sluice-postfix-")
	if err != nil {
		return nil, fmt.Errorf("queuetest: %v", err)
	}
	p := &Postfix{Dir: dir}
	if err := p.setUp(o, owner); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The master in the foreground, as our child, instead of postfix
	// start: that runs a second of checks and leaves a daemon behind when
	// the test binary dies. Here a watchdog stops the master when we die,
	// and the master passes SIGTERM on to its daemons.
	p.master = exec.Command(filepath.Join(postfixDaemonDir(), "master"), "-c", filepath.Join(p.Dir, "etc"))
	if err := p.master.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("queuetest: starting the Postfix master: %v", err)
	}
	p.exited = make(chan error, 1)
	go func() { p.exited <- p.master.Wait() }()
	if p.watchdog, err = startWatchdog(p.master.Process.Pid); err != nil {
		err = fmt.Errorf("queuetest: Postfix: %v", err)
		p.Stop()
		return nil, err
	}
	if err := waitGreeting("tcp", p.Addr, 20*time.Second, p.exited); err != nil {
		err = fmt.Errorf("queuetest: Postfix: %v\n%s", err, p.Log())
		p.Stop()
		return nil, err
	}
	return p, nil
}

// setUp writes the configuration, maps and directories.
func (p *Postfix) setUp(o PostfixOptions, owner *user.User) error {
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	dir := p.Dir
	// The directories, with the owners and modes of postfix-files
	// (post-install create-missing would take 2 s).
	postdrop := gid
	if g, err := user.LookupGroup("postdrop"); err == nil {
		postdrop, _ = strconv.Atoi(g.Gid)
	}
	for _, d := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{"", 0, 0, 0o755},
		{"etc", 0, 0, 0o755},
		{"meta", 0, 0, 0o755},
		{"data", uid, gid, 0o700},
		// virtual(8) delivers as the postfix user.
		{"mail", uid, gid, 0o755},
		{"spool", 0, 0, 0o755},
		{"spool/pid", 0, 0, 0o755},
		{"spool/maildrop", uid, postdrop, 0o730},
		{"spool/public", uid, postdrop, 0o710},
		{"spool/active", uid, gid, 0o700},
		{"spool/bounce", uid, gid, 0o700},
		{"spool/corrupt", uid, gid, 0o700},
		{"spool/defer", uid, gid, 0o700},
		{"spool/deferred", uid, gid, 0o700},
		{"spool/flush", uid, gid, 0o700},
		{"spool/hold", uid, gid, 0o700},
		{"spool/incoming", uid, gid, 0o700},
		{"spool/private", uid, gid, 0o700},
		{"spool/saved", uid, gid, 0o700},
		{"spool/trace", uid, gid, 0o700},
	} {
		path := filepath.Join(dir, d.path)
		if err := os.MkdirAll(path, d.mode); err != nil {
			return fmt.Errorf("queuetest: %v", err)
		}
		if err := os.Chmod(path, d.mode); err != nil {
			return fmt.Errorf("queuetest: %v", err)
		}
		if err := os.Chown(path, d.uid, d.gid); err != nil {
			return fmt.Errorf("queuetest: %v", err)
		}
	}
	// The package's lists of files and map types (dynamicmaps.cf), read
	// from meta_directory: give it copies.
	for _, f := range []string{"postfix-files", "postfix-files.d", "dynamicmaps.cf", "dynamicmaps.cf.d"} {
		if _, err := os.Stat(filepath.Join("/etc/postfix", f)); err == nil {
			if out, err := exec.Command("cp", "-r", filepath.Join("/etc/postfix", f), filepath.Join(dir, "meta")).CombinedOutput(); err != nil {
				return fmt.Errorf("queuetest: copying /etc/postfix/%s: %v\n%s", f, err, out)
			}
		}
	}
	var mailboxes strings.Builder
	for _, u := range postfixUsers {
		fmt.Fprintf(&mailboxes, "%[1]s@%[2]s %[1]s@%[2]s/\n", u, MailDomain)
	}
	var discard []string
	if o.No8BitMIME {
		discard = append(discard, "8bitmime")
	}
	if o.NoDSN {
		discard = append(discard, "dsn")
	}
	smtputf8 := "yes"
	if o.NoSMTPUTF8 {
		smtputf8 = "no"
	}
	p.Addr = freeAddr()
	if p.Addr == "" {
		return errors.New("queuetest: no free port on 127.0.0.1")
	}
	files := map[string]string{
		"mailboxes":        mailboxes.String(),
		"recipient_access": "full@" + MailDomain + " 452 4.2.2 Mailbox full\n",
		"main.cf": fmt.Sprintf(`# A private Postfix for Sluice's tests (queue/queuetest).
compatibility_level = 3.6
config_directory = %[1]s/etc
queue_directory = %[1]s/spool
data_directory = %[1]s/data
meta_directory = %[1]s/meta
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
myhostname = mx.%[2]s
mydomain = %[2]s
myorigin = %[2]s
mydestination =
# No inflow control: recipient probes (MAIL, RCPT, RSET, no DATA) use up
# cleanup's tokens, and past about 100 of them every MAIL would wait 1s.
in_flow_delay = 0
# Nothing real: 127.0.0.1 may not relay.
mynetworks = 192.0.2.1/32
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Never the network: no DNS, no outbound SMTP.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
relayhost =
default_transport = error:no outbound mail from this test Postfix
relay_transport = error:no outbound mail from this test Postfix
local_transport = error:no local delivery in this test Postfix
local_recipient_maps =
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = %[2]s
virtual_mailbox_base = %[1]s/mail
virtual_mailbox_maps = texthash:%[1]s/etc/mailboxes
virtual_uid_maps = static:%[3]d
virtual_gid_maps = static:%[4]d
virtual_minimum_uid = 1
# Mail from 127.0.0.1 is remote mail: no Date or Message-ID added, no
# header rewritten; what a client sends is what lands.
local_header_rewrite_clients =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:%[1]s/etc/recipient_access
smtpd_reject_unlisted_recipient = yes
smtputf8_enable = %[5]s
smtpd_discard_ehlo_keywords = %[6]s
`, dir, MailDomain, uid, gid, smtputf8, strings.Join(discard, ", ")),
		// chroot n everywhere: the temporary directory is no chroot.
		"master.cf": MasterCF(p.Addr),
	}
	for name, content := range files {
		path := filepath.Join(dir, "etc", name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return fmt.Errorf("queuetest: %v", err)
		}
		// Postfix waits until a configuration file it loads is 2 s old
		// (it could be half written): these are not, make them look so.
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(path, old, old); err != nil {
			return fmt.Errorf("queuetest: %v", err)
		}
	}
	return nil
}

// postfixDaemonDir returns Postfix's daemon_directory.
func postfixDaemonDir() string {
	if out, err := exec.Command("postconf", "-dh", "daemon_directory").Output(); err == nil && len(out) > 1 {
		return strings.TrimSpace(string(out))
	}
	return "/usr/lib/postfix/sbin"
}

// Stop stops Postfix, waits until its master has exited and removes its
// directory. StartPostfix calls it at the end of the test.
func (p *Postfix) Stop() error {
	stopWatchdog(p.watchdog)
	return errors.Join(p.halt(), os.RemoveAll(p.Dir))
}

// startWatchdog starts a process that sends SIGTERM to pid when the test
// binary dies, however it dies (even by SIGKILL): it waits for the end
// of a pipe only this process holds. A daemon that changes its user or
// group, as Postfix's master does, loses a Pdeathsig, so that cannot do.
func startWatchdog(pid int) (*exec.Cmd, error) {
	w := exec.Command("/bin/sh", "-c", fmt.Sprintf("read -r _; kill -TERM %d", pid))
	if _, err := w.StdinPipe(); err != nil { // kept open until we die
		return nil, fmt.Errorf("watchdog: %v", err)
	}
	if err := w.Start(); err != nil {
		return nil, fmt.Errorf("starting the watchdog: %v", err)
	}
	return w, nil
}

// stopWatchdog ends the watchdog without letting it signal: it must not
// signal a pid that may be reused once the daemon has exited.
func stopWatchdog(w *exec.Cmd) {
	if w != nil && w.Process != nil {
		w.Process.Kill()
		w.Wait()
	}
}

// halt stops Postfix and waits until its master has exited. SIGTERM is
// what postfix abort sends: the master passes it on to its daemons and
// exits.
func (p *Postfix) halt() error {
	return halt(p.master, p.exited, 20*time.Second, "the Postfix master")
}

// halt sends cmd SIGTERM unless it already exited, and waits for it up to
// grace, then kills it. exited receives cmd's exit once; halt puts it
// back for the next reader.
func halt(cmd *exec.Cmd, exited chan error, grace time.Duration, what string) error {
	select {
	case err := <-exited: // already gone
		exited <- err
		return nil
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		return nil
	case <-time.After(grace):
		cmd.Process.Kill()
		exited <- <-exited
		return fmt.Errorf("queuetest: %s was still running %v after SIGTERM; killed it", what, grace)
	}
}

// Log returns the maillog so far (maillog_file). postlogd writes it a
// moment after the event: poll with a deadline for a line you expect.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// Mailbox returns every message in user's Maildir (new/ and cur/),
// sorted by file name: a Maildir name starts with the delivery second,
// within a second the order is arbitrary, so find a message by its
// content. user is an address or a local part of example.test. Each
// message is as virtual(8) stored it: Return-Path, X-Original-To,
// Delivered-To and Postfix's Received header, then the message as it was
// sent (Postfix adds no missing header), with LF line ends instead of
// CRLF. Delivery happens after the 250 reply: use WaitMailbox to wait
// for it.
func (p *Postfix) Mailbox(user string) [][]byte {
	return readMaildir(filepath.Join(p.Dir, "mail", mailAddress(user)))
}

// WaitMailbox waits until user's Maildir holds at least n messages and
// returns them (see Mailbox). It fails the test, with the maillog, when
// timeout passes first.
func (p *Postfix) WaitMailbox(t testing.TB, user string, n int, timeout time.Duration) [][]byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := p.Mailbox(user)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postfix: %s has %d messages after %v; want %d. Maillog:\n%s", mailAddress(user), len(msgs), timeout, n, p.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mailAddress returns user as an address: a bare local part gets
// @example.test.
func mailAddress(user string) string {
	if strings.Contains(user, "@") {
		return user
	}
	return user + "@" + MailDomain
}

// readMaildir returns the messages in the Maildir's new/ and cur/,
// sorted by file name; none when it does not exist yet.
func readMaildir(maildir string) [][]byte {
	type file struct{ name, path string }
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(maildir, sub))
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, file{e.Name(), filepath.Join(maildir, sub, e.Name())})
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var msgs [][]byte
	for _, f := range files {
		if b, err := os.ReadFile(f.path); err == nil {
			msgs = append(msgs, b)
		}
	}
	return msgs
}

// freeAddr returns a loopback address whose port was free a moment ago,
// or "" when none is.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}

// waitGreeting waits until the server at addr sends a 220 greeting, or
// until its process has exited (a receive from exited).
func waitGreeting(network, addr string, timeout time.Duration, exited chan error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err // for Stop
			return fmt.Errorf("exited before greeting on %s: %v", addr, err)
		default:
		}
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "220 ") {
				return nil
			}
			last = fmt.Errorf("greeting %q: %v", line, rerr)
		} else {
			last = err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no 220 greeting on %s within %v: %v", addr, timeout, last)
}

// MasterCF is the master.cf of a private Postfix instance whose smtpd
// listens on addr, with chroot off for every service (a temporary
// directory is no chroot) and every service a test instance needs.
func MasterCF(addr string) string {
	return addr + ` inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
virtual   unix  -       n       n       -       -       virtual
postlog   unix-dgram n  -       n       -       1       postlogd
`
}
