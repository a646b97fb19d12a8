package dovecotauth_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/dovecotauth"
)

const (
	authOK   = "235 2.7.0 Authentication successful"
	authBad  = "535 5.7.8 Authentication credentials invalid"
	authSoft = "454 4.7.0 Temporary authentication failure"
)

const dovecotBin = "/usr/sbin/dovecot"

// conn returns a connection from remote.
func conn(remote string) *connection.Connection {
	return connection.New("submission", "mx.example.test", netip.MustParseAddrPort("[::ffff:127.0.0.1]:587"), netip.MustParseAddrPort(remote))
}

var remotes atomic.Int32

// nextRemote returns a client address no other call used.
func nextRemote() string {
	n := remotes.Add(1)
	return fmt.Sprintf("198.18.%d.%d:1025", n/250, n%250+1)
}

// setup builds the plugin from settings and a chain around it whose log
// goes to the returned buffer.
func setup(t *testing.T, settings string) (*dovecotauth.Plugin, *hooks.Chain, *hookstest.LogBuffer) {
	t.Helper()
	p := hookstest.Build(t, "dovecotauth", settings).(*dovecotauth.Plugin)
	var log hookstest.LogBuffer
	ch, err := hooks.NewChain([]hooks.Instance{hookstest.Plugin("dovecotauth", p)}, hooks.Options{Timeout: 20 * time.Second, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return p, ch, &log
}

// dovecot is a running Dovecot with a passwd-file passdb.
type dovecot struct {
	socket string // the auth-client unix socket
	tcp    string // the same service on 127.0.0.1
	log    string // Dovecot's log file
}

// startDovecot runs a Dovecot of its own (no protocols, only the auth
// service) under a temporary folder, and stops it when the test ends. Its
// passdb knows alice@example.test with password s3cret; users
// @tempfail.test get a temporary failure (a checkpassword passdb that exits
// 111).
func startDovecot(t *testing.T) *dovecot {
	t.Helper()
	if _, err := os.Stat(dovecotBin); err != nil {
		t.Skip("dovecot is not installed (Debian package dovecot-core; `make deps` installs it): skipping the tests against a real Dovecot")
	}
	// Short paths: unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "dva")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	write := func(name, content string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	users := write("users", "alice@example.test:{PLAIN}s3cret\n", 0o600)
	tempfail := write("tempfail", "#!/bin/sh\nexit 111\n", 0o755)
	d := &dovecot{socket: filepath.Join(dir, "run", "auth-client"), tcp: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "dovecot.log")}
	conf := write("dovecot.conf", fmt.Sprintf(`# Sluice dovecotauth test: only the auth service.
base_dir = %[1]s/run
state_dir = %[1]s/state
protocols =
ssl = no
log_path = %[2]s
default_internal_user = %[3]s
default_internal_group = %[4]s
default_login_user = %[3]s
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {
  driver = checkpassword
  args = %[5]s
  username_filter = *@tempfail.test
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[6]s
}
userdb {
  driver = static
  args = uid=%[7]s gid=%[8]s home=%[1]s/home
}
service auth {
  unix_listener auth-client {
    mode = 0666
  }
  inet_listener auth-tcp {
    address = 127.0.0.1
    port = %[9]d
  }
}
`, dir, d.log, u.Username, g.Name, tempfail, users, u.Uid, u.Gid, port), 0o644)

	if out, err := exec.Command("/usr/bin/doveconf", "-n", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("doveconf -n: %v\n%s", err, out)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(dovecotBin, "-F", "-c", conf)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM: the master stops its children and exits.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	fail := func(why string) {
		b, _ := os.ReadFile(d.log)
		t.Fatalf("dovecot: %s\nstderr:\n%s\nlog:\n%s", why, stderr.String(), b)
	}
	// Wait until both listeners answer.
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range [][2]string{{"unix", d.socket}, {"tcp", d.tcp}} {
		for {
			c, err := net.DialTimeout(a[0], a[1], time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-exited:
				fail(fmt.Sprintf("exited before listening: %v", err))
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				fail("no listener at " + a[1] + " after 15s")
			}
		}
	}
	return d
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestDovecot(t *testing.T) {
	d := startDovecot(t)
	unix, unixCh, unixLog := setup(t, fmt.Sprintf("socket = %q", d.socket))
	tcp, tcpCh, tcpLog := setup(t, fmt.Sprintf("socket = %q\nservice = \"submission\"", d.tcp))
	// Every call runs at once: Dovecot answers a failure only after a
	// delay (it flushes failures every 500ms, later for an address that
	// failed before), so each call also comes from an address of its own.
	var wg sync.WaitGroup
	for _, tt := range []struct {
		name           string
		user, password string
		code           hooks.Code
		reply          string
	}{
		{"right password", "alice@example.test", "s3cret", hooks.OK, authOK},
		{"wrong password", "alice@example.test", "s3cret!", hooks.Deny, authBad},
		{"empty password", "alice@example.test", "", hooks.Deny, authBad},
		{"unknown user", "mallory@example.test", "s3cret", hooks.Deny, authBad},
		{"tab in password", "alice@example.test", "s3\tcret", hooks.Deny, authBad},
		{"passdb down", "bob@tempfail.test", "s3cret", hooks.DenySoft, authSoft},
		// Never sent to Dovecot: PLAIN cannot carry a NUL.
		{"NUL in user", "alice@example.test\x00", "s3cret", hooks.Deny, authBad},
	} {
		for _, via := range []struct {
			name string
			p    *dovecotauth.Plugin
			ch   *hooks.Chain
		}{{"unix", unix, unixCh}, {"tcp", tcp, tcpCh}} {
			wg.Go(func() {
				r := via.p.Auth(context.Background(), conn(nextRemote()), "PLAIN", tt.user, tt.password)
				if r.Code != tt.code || r.Msg != "" || (r.Err != nil) != (tt.code == hooks.DenySoft) {
					t.Errorf("%s via %s: Auth(%q, %q) = %+v; want %v", tt.name, via.name, tt.user, tt.password, r, tt.code)
				}
			})
			wg.Go(func() {
				d := via.ch.Auth(context.Background(), conn(nextRemote()), "LOGIN", tt.user, tt.password)
				if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != tt.reply {
					t.Errorf("%s via %s: chain: Auth(%q, %q) replies %q; want %q", tt.name, via.name, tt.user, tt.password, got, tt.reply)
				}
			})
		}
	}
	wg.Wait()
	// An IPv6 client.
	if r := unix.Auth(context.Background(), conn("[2001:db8::1]:1025"), "PLAIN", "alice@example.test", "s3cret"); r.Code != hooks.OK {
		t.Errorf("IPv6 client: Auth = %+v; want OK", r)
	}
	for _, l := range []*hookstest.LogBuffer{unixLog, tcpLog} {
		out := l.String()
		if !strings.Contains(out, "dovecot: temporary failure") {
			t.Errorf("log lacks the temporary failure:\n%s", out)
		}
		noPassword(t, out)
	}
}

// noPassword fails the test if out shows the test's password, plain or in
// the base64 of a PLAIN response.
func noPassword(t *testing.T, out string) {
	t.Helper()
	if strings.Contains(out, "s3cret") || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00s3cret"))) {
		t.Errorf("log shows the password:\n%s", out)
	}
}

// TestDovecotDown: no socket, a refused TCP port, a socket with no one
// behind it: all temporary.
func TestDovecotDown(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, socket := range []string{filepath.Join(dir, "auth-client"), stale, fmt.Sprintf("127.0.0.1:%d", freePort(t))} {
		p, ch, log := setup(t, fmt.Sprintf("socket = %q", socket))
		r := p.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
		if r.Code != hooks.DenySoft || r.Err == nil || !strings.Contains(r.Err.Error(), socket) {
			t.Errorf("%s: Auth = %+v; want DenySoft with an error naming the socket", socket, r)
		}
		d := ch.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
		if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != authSoft {
			t.Errorf("%s: chain replies %q; want %q", socket, got, authSoft)
		}
		noPassword(t, log.String())
	}
}

// fake is a scripted auth server on a unix socket: it sends handshake,
// reads one line, records it and sends answer (with the request's id in
// place of ID). An empty answer hangs until the client goes.
type fake struct {
	path    string
	mu      sync.Mutex
	lines   []string
	lastReq string
}

func newFake(t *testing.T, handshake, answer string) *fake {
	t.Helper()
	f := &fake{}
	f.path = serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for range 2 { // VERSION, CPID
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f.record(line, false)
		}
		if _, err := c.Write([]byte(handshake)); err != nil {
			return
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f.record(line, true)
		if answer == "" {
			r.ReadString('\n') // until the client closes
			return
		}
		id := strings.Split(line, "\t")[min(1, len(strings.Split(line, "\t"))-1)]
		c.Write([]byte(strings.ReplaceAll(answer, "ID", id)))
	})
	return f
}

// serve listens on a unix socket in a fresh folder with a short name (a
// socket's path is limited to 108 bytes) and runs handle on each
// connection, with a 10s deadline, until the test ends. It returns the
// socket's path.
func serve(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dvf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "auth-client")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			})
		}
	})
	return path
}

func (f *fake) record(line string, req bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, line)
	if req {
		f.lastReq = line
	}
}

func (f *fake) request() string { f.mu.Lock(); defer f.mu.Unlock(); return f.lastReq }
func (f *fake) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

const greeting = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t42\nCUID\t7\nCOOKIE\t0123456789abcdef0123456789abcdef\nDONE\n"

// TestRequest checks the lines Sluice sends.
func TestRequest(t *testing.T) {
	f := newFake(t, greeting, "OK\tID\tuser=alice@example.test\n")
	p, _, _ := setup(t, fmt.Sprintf("socket = %q\nservice = \"submission\"", f.path))

	c := conn("[::ffff:192.0.2.9]:40001")
	if r := p.Auth(context.Background(), c, "PLAIN", "alice@example.test", "s3cret"); r.Code != hooks.OK {
		t.Fatalf("Auth = %+v; want OK", r)
	}
	lines := f.all()
	if len(lines) != 3 || lines[0] != "VERSION\t1\t2\n" || !regexp.MustCompile(`^CPID\t[0-9]+\n$`).MatchString(lines[1]) {
		t.Fatalf("handshake lines %q", lines)
	}
	resp := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00s3cret"))
	want := "AUTH\t1\tPLAIN\tservice=submission\tnologin\tlip=127.0.0.1\tlport=587\trip=192.0.2.9\trport=40001\tresp=" + resp + "\n"
	if got := f.request(); got != want {
		t.Errorf("request\n%q\nwant\n%q", got, want)
	}

	// Over TLS, Dovecot is told the connection is secured.
	c.TLS = &tls.ConnectionState{HandshakeComplete: true}
	if r := p.Auth(context.Background(), c, "PLAIN", "alice@example.test", "s3cret"); r.Code != hooks.OK {
		t.Fatalf("Auth over TLS = %+v; want OK", r)
	}
	if got := f.request(); !strings.Contains(got, "\tnologin\tsecured\tlip=") {
		t.Errorf("request over TLS %q: want the secured flag", got)
	}
}

// TestAnswers covers what a server may answer, right or wrong.
func TestAnswers(t *testing.T) {
	for _, tt := range []struct {
		name, handshake, answer string
		code                    hooks.Code
		err                     string
		closes                  bool // the server closes instead of answering
	}{
		{"ok", greeting, "OK\tID\tuser=alice@example.test\n", hooks.OK, "", false},
		{"ok bare", greeting, "OK\tID\n", hooks.OK, "", false},
		{"fail", greeting, "FAIL\tID\tuser=alice@example.test\n", hooks.Deny, "", false},
		{"fail reason", greeting, "FAIL\tID\treason=Password expired\tpass_expired\n", hooks.Deny, "", false},
		{"fail temp", greeting, "FAIL\tID\ttemp\treason=LDAP down\n", hooks.DenySoft, `dovecot: temporary failure ("LDAP down")`, false},
		{"fail code temp", greeting, "FAIL\tID\tcode=temp_fail\n", hooks.DenySoft, `dovecot: temporary failure (no reason given)`, false},
		{"cont", greeting, "CONT\tID\t\n", hooks.DenySoft, `asked for more data`, false},
		{"other id", greeting, "OK\t2\n", hooks.DenySoft, `unexpected answer "OK"`, false},
		{"garbage", greeting, "HELLO\n", hooks.DenySoft, `unexpected answer "HELLO"`, false},
		{"closed", greeting, "", hooks.DenySoft, `waiting for the answer: EOF`, true},
		{"no plain", "VERSION\t1\t2\nMECH\tLOGIN\tplaintext\nDONE\n", "OK\tID\n", hooks.DenySoft, `does not offer PLAIN: add plain to auth_mechanisms`, false},
		{"version 2", "VERSION\t2\t0\nMECH\tPLAIN\nDONE\n", "OK\tID\n", hooks.DenySoft, `auth protocol version "2.0"; want 1`, false},
		{"no version", "MECH\tPLAIN\nDONE\n", "OK\tID\n", hooks.DenySoft, `no VERSION line`, false},
		{"cut handshake", "VERSION\t1\t2\nMECH\tPLAIN\n", "", hooks.DenySoft, `handshake: EOF`, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var f *fake
			if tt.closes {
				f = newClosing(t, tt.handshake)
			} else {
				f = newFake(t, tt.handshake, tt.answer)
			}
			p, ch, log := setup(t, fmt.Sprintf("socket = %q\ntimeout = \"2s\"", f.path))
			r := p.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
			if r.Code != tt.code || r.Msg != "" {
				t.Errorf("Auth = %+v; want %v", r, tt.code)
			}
			if tt.err != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.err)) {
				t.Errorf("Auth error %v; want it to contain %q", r.Err, tt.err)
			}
			if tt.err == "" && r.Err != nil {
				t.Errorf("Auth error %v; want none", r.Err)
			}
			d := ch.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
			want := map[hooks.Code]string{hooks.OK: authOK, hooks.Deny: authBad, hooks.DenySoft: authSoft}[tt.code]
			if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != want {
				t.Errorf("chain replies %q; want %q", got, want)
			}
			noPassword(t, log.String())
		})
	}
}

// newClosing is a server that sends handshake and closes the connection
// after the client's next line.
func newClosing(t *testing.T, handshake string) *fake {
	t.Helper()
	return &fake{path: serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		r.ReadString('\n')
		r.ReadString('\n')
		c.Write([]byte(handshake))
		if strings.HasSuffix(handshake, "DONE\n") {
			r.ReadString('\n')
		}
	})}
}

// TestTimeout: a server that never answers costs the timeout, then 454.
func TestTimeout(t *testing.T) {
	f := newFake(t, greeting, "")
	p, ch, _ := setup(t, fmt.Sprintf("socket = %q\ntimeout = \"300ms\"", f.path))
	start := time.Now()
	r := p.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
	if r.Code != hooks.DenySoft || r.Err == nil || !strings.Contains(r.Err.Error(), "i/o timeout") {
		t.Errorf("Auth = %+v; want DenySoft after an i/o timeout", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Auth took %v; want about 300ms", el)
	}
	d := ch.Auth(context.Background(), conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret")
	if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != authSoft {
		t.Errorf("chain replies %q; want %q", got, authSoft)
	}

	// A canceled hook ends the exchange at once.
	p, _, _ = setup(t, fmt.Sprintf("socket = %q\ntimeout = \"1m\"", f.path))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	if r := p.Auth(ctx, conn("192.0.2.1:1025"), "PLAIN", "alice@example.test", "s3cret"); r.Code != hooks.DenySoft {
		t.Errorf("Auth with a canceled context = %+v; want DenySoft", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Auth with a canceled context took %v", el)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{``, `socket: required`},
		{`socket = "dovecot"`, `socket: "dovecot": want a unix socket path (with a '/') or a TCP host:port`},
		{`socket = ":12345"`, `want a unix socket path`},
		{`socket = "127.0.0.1:"`, `want a unix socket path`},
		{`socket = "/run/dovecot/auth-client"` + "\n" + `service = "sm tp"`, `service: "sm tp": want a name`},
		{`socket = "/run/dovecot/auth-client"` + "\n" + `service = ""`, `service: "": want a name`},
		{`socket = "/run/dovecot/auth-client"` + "\n" + `timeout = "-1s"`, `timeout: -1s: want a positive duration`},
		{`socket = "/run/dovecot/auth-client"` + "\n" + `timeout = "ten"`, `"ten" is not a duration`},
		{`socket = "/run/dovecot/auth-client"` + "\n" + `mechanism = "LOGIN"`, `unknown key "mechanism"`},
	} {
		hookstest.ExpectBuildError(t, "dovecotauth", tt.settings, tt.want)
	}
	for _, ok := range []string{`socket = "/var/run/dovecot/auth-client"`, `socket = "./auth-client"`, `socket = "localhost:12345"`, `socket = "[::1]:12345"`} {
		hookstest.Build(t, "dovecotauth", ok)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "dovecotauth", "README.md")
}
