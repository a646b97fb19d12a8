package t_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/state/statetest"
)

// haproxy is a running HAProxy (Debian's haproxy) in front of smtpd.
type haproxy struct {
	addr   string // the frontend, where clients connect
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
}

// haproxyConfig is the configuration docs/scaling.md shows: TCP mode,
// round robin over the smtpd servers, the PROXY protocol to each, health
// checks (which send the PROXY header too), and a connection refused by a
// stopping smtpd retried on another.
const haproxyConfig = `global
    log stderr format raw daemon info
    nbthread 1

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1

frontend smtp
    bind {{.Bind}}
    default_backend smtpd

backend smtpd
    balance roundrobin
    default-server check inter 300ms fall 1 rise 1 {{.Send}}
{{range $i, $s := .Servers}}    server smtpd{{$i}} {{$s}}
{{end}}`

// startHAProxy runs haproxy in the foreground with send ("send-proxy",
// "send-proxy-v2", maybe with "source 127.0.0.3") towards servers, and
// waits until its frontend accepts connections.
func startHAProxy(t *testing.T, send string, servers ...string) *haproxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/haproxy"); err2 != nil {
			t.Fatal("haproxy is not installed: run `make deps` (Debian package haproxy)")
		}
		bin = "/usr/sbin/haproxy"
	}
	h := &haproxy{addr: freePort(t), exited: make(chan struct{})}
	var cfg bytes.Buffer
	template.Must(template.New("cfg").Parse(haproxyConfig)).Execute(&cfg, map[string]any{"Bind": h.addr, "Send": send, "Servers": servers})
	path := writeFile(t, t.TempDir(), "haproxy.cfg", cfg.String())
	h.cmd = exec.Command(bin, "-db", "-f", path)
	stderr, err := h.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stdout = h.cmd.Stderr
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			h.mu.Lock()
			h.log.WriteString(sc.Text() + "\n")
			h.mu.Unlock()
		}
		h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(5 * time.Second):
			h.cmd.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			t.Logf("haproxy config:\n%s\nhaproxy log:\n%s", cfg.String(), h.Log())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", h.addr, time.Second)
		if err == nil {
			c.Close()
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("haproxy exited at start:\n%s", h.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not listen on %s after 10s: %v\n%s", h.addr, err, h.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log returns what haproxy logged so far.
func (h *haproxy) Log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.log.String()
}

// proxySmtpdConfig is an smtpd behind a proxy: one PROXY listener that
// trusts 127.0.0.1 only, and a Maildir at mail.
func proxySmtpdConfig(mail, plugins, extra string) string {
	return fmt.Sprintf(`[[listener]]
name = "mx"
address = "127.0.0.1:0"
proxy_protocol = true
proxy_networks = ["127.0.0.1/32"]
proxy_header_timeout = "2s"
plugins = [%s"rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = %q
%s`, plugins, mail, extra)
}

// sendFrom sends msg (header and body, CRLF line ends) from sender to
// bob@example.test with go-smtp's client, connecting from the client
// address local (any 127.0.0.0/8 address is loopback on Linux). The
// message is sent once DATA's 250 is read, as an MTA's queue counts it: a
// server that is stopping answers the QUIT after it with 421 (Service
// shutting down), and a client that retried then would send it twice.
func sendFrom(addr, local, sender, msg string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	c := smtp.NewClient(nc)
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	if err := c.SendMail(sender, []string{"bob@example.test"}, strings.NewReader(msg)); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	c.Quit()
	return nil
}

// subjectMessage is a small message whose Subject and Message-ID name it.
func subjectMessage(subject string) string {
	return fmt.Sprintf("Subject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\nhello\r\n", subject, subject)
}

// readMaildir returns the messages in dir/new.
func readMaildir(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, f := range maildirFiles(t, dir) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// connectFrom matches smtpd's connect line for a client at 127.0.0.5.
var connectFrom5 = regexp.MustCompile(`msg=connect .*remote=127\.0\.0\.5:\d+`)

func TestProxyProtocolThroughHAProxy(t *testing.T) {
	for _, send := range []string{"send-proxy", "send-proxy-v2"} {
		t.Run(send, func(t *testing.T) {
			mail := filepath.Join(t.TempDir(), "mail")
			s := startSmtpd(t, proxySmtpdConfig(mail, "", ""))
			h := startHAProxy(t, send, s.Addr("mx"))
			out, code := swaks(t, h.addr, "--local-interface", "127.0.0.5", "--from", "alice@example.org", "--to", "bob@example.test",
				"--ehlo", "client.example.org", "--header", "Subject: via haproxy", "--pipeline")
			if code != 0 || !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
				t.Fatalf("swaks through haproxy (exit %d):\n%s", code, out)
			}
			msgs := readMaildir(t, mail)
			if len(msgs) != 1 || !strings.Contains(msgs[0], "Received: from client.example.org ([127.0.0.5])") {
				t.Fatalf("the Received header does not name the client 127.0.0.5 (haproxy connects from 127.0.0.1):\n%q", msgs)
			}
			if !connectFrom5.MatchString(s.Log()) {
				t.Fatalf("smtpd logged no connect from 127.0.0.5:\n%s", s.Log())
			}
		})
	}
}

func TestProxyProtocolFromUntrustedSource(t *testing.T) {
	mail := filepath.Join(t.TempDir(), "mail")
	s := startSmtpd(t, proxySmtpdConfig(mail, "", ""))

	// A client straight to the PROXY listener from 127.0.0.2, outside
	// proxy_networks, with a header claiming another address.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", s.Addr("mx"))
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO spoof.example.org\r\n")
	b := make([]byte, 512)
	n, err := nc.Read(b)
	nc.Close()
	if n != 0 || err == nil {
		t.Fatalf("a client outside proxy_networks got %q (%v), want the connection closed", b[:n], err)
	}
	s.waitLog(`level=WARN msg="connection refused: PROXY protocol" listener=mx socket=127.0.0.2:`)

	// HAProxy itself, v1 and v2, connecting from 127.0.0.3.
	for _, send := range []string{"send-proxy", "send-proxy-v2"} {
		h := startHAProxy(t, send+" source 127.0.0.3", s.Addr("mx"))
		out, code := swaks(t, h.addr, "--local-interface", "127.0.0.5", "--from", "alice@example.org", "--to", "bob@example.test")
		if code == 0 || strings.Contains(out, "<-  220") {
			t.Fatalf("%s from 127.0.0.3 was served (exit %d):\n%s", send, code, out)
		}
	}
	s.waitLog("socket=127.0.0.3:")
	if connectFrom5.MatchString(s.Log()) || strings.Contains(s.Log(), "msg=connect") {
		t.Fatalf("smtpd served a connection from an untrusted source:\n%s", s.Log())
	}
	if msgs := readMaildir(t, mail); len(msgs) != 0 {
		t.Fatalf("messages delivered: %q", msgs)
	}
}

func xclientConfig(mail, hosts string) string {
	return fmt.Sprintf(`[[listener]]
name = "mx"
address = "127.0.0.1:0"
xclient_hosts = [%s]
plugins = ["rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = %q
`, hosts, mail)
}

func TestXClientFromTrustedHost(t *testing.T) {
	mail := filepath.Join(t.TempDir(), "mail")
	s := startSmtpd(t, xclientConfig(mail, `"127.0.0.1"`))
	out, code := swaks(t, s.Addr("mx"), "--from", "alice@example.org", "--to", "bob@example.test", "--ehlo", "rig.example.org",
		"--xclient-addr", "192.0.2.44", "--xclient-name", "mail.example.net", "--xclient-helo", "mail.example.net")
	if code != 0 || !strings.Contains(out, "<-  220 ") || !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
		t.Fatalf("swaks with XCLIENT (exit %d):\n%s", code, out)
	}
	msgs := readMaildir(t, mail)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "(mail.example.net [192.0.2.44])") {
		t.Fatalf("the Received header does not name the XCLIENT client:\n%q", msgs)
	}
	if !strings.Contains(s.Log(), "msg=xclient") || !strings.Contains(s.Log(), "remote=192.0.2.44:") {
		t.Fatalf("smtpd did not log the XCLIENT client:\n%s", s.Log())
	}
}

func TestXClientFromUntrustedHost(t *testing.T) {
	mail := filepath.Join(t.TempDir(), "mail")
	s := startSmtpd(t, xclientConfig(mail, `"192.0.2.0/24"`))
	// swaks sends XCLIENT only where EHLO offers it.
	out, code := swaks(t, s.Addr("mx"), "--from", "alice@example.org", "--to", "bob@example.test", "--ehlo", "rig.example.org",
		"--xclient-addr", "192.0.2.44", "--xclient-login", "alice")
	if code == 0 || !strings.Contains(out, "*** Host did not advertise XCLIENT") || strings.Contains(out, "XCLIENT ADDR") {
		t.Fatalf("EHLO offered XCLIENT to an untrusted host (exit %d):\n%s", code, out)
	}
	// A client that sends it anyway.
	nc, err := net.DialTimeout("tcp", s.Addr("mx"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(nc)
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	tp.PrintfLine("EHLO rig.example.org")
	if _, msg, err := tp.ReadResponse(250); err != nil || strings.Contains(msg, "XCLIENT") {
		t.Fatalf("EHLO: %q %v", msg, err)
	}
	tp.PrintfLine("XCLIENT ADDR=192.0.2.44 LOGIN=alice")
	if code, msg, _ := tp.ReadResponse(220); code != 550 || msg != "5.7.0 Error: insufficient authorization" {
		t.Fatalf("XCLIENT from an untrusted host: %d %q, want 550 5.7.0 Error: insufficient authorization", code, msg)
	}
	tp.PrintfLine("MAIL FROM:<alice@example.org>")
	if _, _, err := tp.ReadResponse(250); err != nil {
		t.Fatalf("the session after the refused XCLIENT: %v", err)
	}
	tp.PrintfLine("RCPT TO:<carol@elsewhere.example>")
	if code, _, _ := tp.ReadResponse(250); code/100 != 5 {
		t.Fatalf("relaying after a refused XCLIENT LOGIN: %d, want a 5xx", code)
	}
	s.waitLog(`level=WARN msg="XCLIENT refused: client not in xclient_hosts"`)
	if msgs := readMaildir(t, mail); len(msgs) != 0 {
		t.Fatalf("messages delivered: %q", msgs)
	}
}

// TestScaleOutBehindHAProxy is docs/scaling.md's topology: HAProxy in
// front of two smtpd processes sharing state in one redis-server.
func TestScaleOutBehindHAProxy(t *testing.T) {
	redis := statetest.StartRedis(t)
	mail := filepath.Join(t.TempDir(), "mail")
	state := fmt.Sprintf(`
[state]
backend = "redis"
addrs = [%q]

[plugins.greylist]
delay = "1s"
retry_window = "1h"
`, redis)
	cfg := proxySmtpdConfig(mail, `"greylist", `, state)
	a := startSmtpd(t, cfg)
	b := startSmtpd(t, cfg)
	h := startHAProxy(t, "send-proxy-v2", a.Addr("mx"), b.Addr("mx"))
	const client = "127.0.0.5"
	accepted := map[string]int{} // subject: how many times it got 250

	// Greylisting: the first attempt reaches one smtpd, the retry after
	// the delay the other (round robin: the next connection), which
	// knows the triplet from Redis. Should the retry meet the same smtpd,
	// a new triplet (another sender) tries again.
	greylisted := func(s *smtpd) int { return strings.Count(s.Log(), "plugin=greylist code=DENYSOFT") }
	queued := func(s *smtpd) int { return strings.Count(s.Log(), `msg="message queued"`) }
	crossed, from := false, ""
	for try := 0; try < 4 && !crossed; try++ {
		from = fmt.Sprintf("alice%d@example.org", try)
		ga, gb := greylisted(a), greylisted(b)
		err := sendFrom(h.addr, client, from, subjectMessage("first"))
		if err == nil || !strings.Contains(err.Error(), "451") || !strings.Contains(err.Error(), "Greylisted") {
			t.Fatalf("the first attempt: %v, want 451 4.7.1 Greylisted", err)
		}
		time.Sleep(1200 * time.Millisecond)
		qa, qb := queued(a), queued(b)
		retry := fmt.Sprintf("retry-%d", try)
		if err := sendFrom(h.addr, client, from, subjectMessage(retry)); err != nil {
			t.Fatalf("the retry after the delay: %v", err)
		}
		accepted[retry]++
		crossed = greylisted(a) > ga && queued(b) > qb || greylisted(b) > gb && queued(a) > qa
	}
	if !crossed {
		t.Fatalf("in 4 tries, no retry met the other smtpd than its first attempt\nA:\n%s\nB:\n%s", a.Log(), b.Log())
	}
	for name, s := range map[string]*smtpd{"A": a, "B": b} {
		if !connectFrom5.MatchString(s.Log()) {
			t.Fatalf("smtpd %s saw no connection from the client 127.0.0.5:\n%s", name, s.Log())
		}
	}

	// A stream of messages from two clients at once; smtpd A stops
	// (SIGTERM) in the middle. A message that did not get 250 is sent
	// again, as a client's queue would.
	const perClient = 15
	before := len(accepted)
	var mu sync.Mutex
	var failures []string
	stopAt := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				subject := fmt.Sprintf("stream-%d-%d", c, i)
				if c == 0 && i == perClient/3 {
					close(stopAt)
				}
				for try := 0; ; try++ {
					err := sendFrom(h.addr, client, from, subjectMessage(subject))
					mu.Lock()
					if err == nil {
						accepted[subject]++
					} else {
						failures = append(failures, subject+": "+err.Error())
					}
					mu.Unlock()
					if err == nil || try == 4 {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	<-stopAt
	a.cmd.Process.Signal(syscall.SIGTERM)
	wg.Wait()
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("smtpd A did not stop on SIGTERM")
	}
	if len(accepted)-before != 2*perClient {
		t.Fatalf("%d of %d messages got 250 (failures: %q)", len(accepted)-before, 2*perClient, failures)
	}

	if !strings.Contains(a.Log(), "msg=stopped") {
		t.Fatalf("smtpd A did not stop cleanly:\n%s", a.Log())
	}
	// After A stopped, new connections go to B.
	queuedB := strings.Count(b.Log(), `msg="message queued"`)
	for i := range 4 {
		subject := fmt.Sprintf("after-%d", i)
		if err := sendFrom(h.addr, client, from, subjectMessage(subject)); err != nil {
			t.Fatalf("message %d after A stopped: %v", i, err)
		}
		accepted[subject]++
	}
	if got := strings.Count(b.Log(), `msg="message queued"`) - queuedB; got != 4 {
		t.Fatalf("smtpd B queued %d of the 4 messages sent after A stopped", got)
	}

	// Every message that got 250 is in the Maildir exactly once.
	inMaildir := map[string]int{}
	for _, m := range readMaildir(t, mail) {
		if sub := regexp.MustCompile(`(?m)^Subject: (\S+)`).FindStringSubmatch(m); sub != nil {
			inMaildir[sub[1]]++
		}
		if !strings.Contains(m, "([127.0.0.5])") {
			t.Fatalf("a message's Received header does not name the client 127.0.0.5:\n%s", m)
		}
	}
	for subject, n := range accepted {
		if inMaildir[subject] != 1 || n != 1 {
			t.Errorf("%s: got 250 %d times, in the Maildir %d times; want once each", subject, n, inMaildir[subject])
		}
	}
	if len(inMaildir) != len(accepted) {
		t.Errorf("the Maildir has %d distinct messages, the clients got 250 for %d", len(inMaildir), len(accepted))
	}
	t.Logf("smtpd A queued %d messages before it stopped, B %d; failed attempts retried: %d %q", queued(a), queued(b), len(failures), failures)
}
