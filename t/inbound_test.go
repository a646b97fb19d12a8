package t_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/resolver/dnstest"
	"github.com/sluice-mta/sluice/state/statetest"
)

// inboundDNS is a DNS server holding the block list's answers: 127.0.0.2
// and 127.0.0.3 are listed in zen.spamhaus.org (as Spamhaus lists
// 127.0.0.2 for testing), with a TXT record for the first; everything else
// is NXDOMAIN. The resolver of the docs example is pointed at it, so no
// lookup leaves the machine.
func inboundDNS(t *testing.T) *dnstest.Server {
	return dnstest.Start(t,
		"2.0.0.127.zen.spamhaus.org. 60 A 127.0.0.2",
		dnstest.TXT("2.0.0.127.zen.spamhaus.org.", "Listed by SBL, see https://check.spamhaus.org/"),
		"3.0.0.127.zen.spamhaus.org. 60 A 127.0.0.4",
	)
}

// inboundConfig is the configuration of docs/inbound-mx.md, with its
// addresses and paths made local, the greeting delay and the greylisting
// delay shortened, the partner network made 127.0.0.3, and state the
// [state] table's body.
func inboundConfig(t *testing.T, dns *dnstest.Server, state string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(rootDir, "docs/inbound-mx.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```toml\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/inbound-mx.md has no toml example")
	}
	cfg := string(m[1])
	for _, r := range [][2]string{
		{`servers = ["127.0.0.1:53"]`, fmt.Sprintf("servers = [%q]", dns.Addr)},
		{"[state]\nbackend = \"bbolt\"", "[state]\n" + state},
		{`"0.0.0.0:25"`, `"127.0.0.1:0"`},
		{`greeting_delay = "1s"`, `greeting_delay = "300ms"`},
		{`allow_clients = ["192.0.2.0/24"]`, `allow_clients = ["127.0.0.3"]`},
		{`delay = "5m"`, `delay = "1s"`},
		{`"/var/lib/sluice/mail"`, `"./var/mail"`},
		{`"/var/lib/sluice"`, `"./var"`},
	} {
		if !strings.Contains(cfg, r[0]) {
			t.Fatalf("the docs example no longer has %s:\n%s", r[0], cfg)
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	return cfg
}

// inboundSend sends one message with swaks from the loopback address
// from, and returns the transcript.
func inboundSend(t *testing.T, addr, from, rcpt string, more ...string) string {
	t.Helper()
	args := append([]string{"--local-interface", from, "--ehlo", "mail.example.org",
		"--from", "alice@example.org", "--to", rcpt, "--header", "Subject: inbound"}, more...)
	out, _ := swaks(t, addr, args...)
	return out
}

func expectInTranscript(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("%s: the transcript lacks %q:\n%s", what, w, out)
		}
	}
}

// TestInboundMXFromTheDocs runs the inbound MX of docs/inbound-mx.md with
// its state in the embedded store: each check refuses what the page says
// it does, a listed client still reaches postmaster, a partner skips the
// block list and greylisting, and a new client's first attempt is
// greylisted and its retry, after smtpd restarted, delivered.
func TestInboundMXFromTheDocs(t *testing.T) {
	t.Parallel()
	dns := inboundDNS(t)
	dir := t.TempDir()
	cfg := inboundConfig(t, dns, `backend = "bbolt"`)
	s := startSmtpdIn(t, dir, cfg)
	mx := s.Addr("mx")

	// helo: a bare IP address is refused at MAIL.
	out, _ := swaks(t, mx, "--ehlo", "192.0.2.1", "--from", "a@example.org", "--to", "bob@example.test")
	expectInTranscript(t, "bare IP HELO", out, "<** 501 5.5.2 <192.0.2.1>: Helo command rejected: Invalid name; an address goes in brackets")

	// earlytalker: a client that sends EHLO before the greeting is greeted
	// after the delay, then refused at MAIL.
	early := earlyTalk(t, mx)
	if !strings.HasPrefix(early[0], "220 ") || !strings.HasPrefix(early[len(early)-1], "554 5.7.1 Client talked before the greeting") {
		t.Fatalf("early talker: %q", early)
	}

	// bwl: a blacklisted sender domain is refused at MAIL.
	out, _ = swaks(t, mx, "--ehlo", "mail.example.org", "--from", "promo@spam.example", "--to", "bob@example.test")
	expectInTranscript(t, "blacklisted sender", out, "<** 550 5.7.1 sender <promo@spam.example> is blacklisted (spam.example)")

	// dnsbl: a listed client is refused at RCPT, with the list's TXT
	// record; postmaster is still reached, at once (bwl's
	// allow_recipients spares it greylisting).
	out = inboundSend(t, mx, "127.0.0.2", "bob@example.test")
	expectInTranscript(t, "listed client", out,
		"<** 554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org; Listed by SBL, see https://check.spamhaus.org/")
	out = inboundSend(t, mx, "127.0.0.2", "postmaster@example.test")
	expectInTranscript(t, "listed client to postmaster", out, "<-  250 2.0.0 Ok: queued as")

	// bwl: the partner network is listed too, and skips the list and
	// greylisting.
	out = inboundSend(t, mx, "127.0.0.3", "bob@example.test")
	expectInTranscript(t, "partner", out, "<-  250 2.0.0 Ok: queued as")

	// rcptok: another domain is not relayed.
	out = inboundSend(t, mx, "127.0.0.1", "someone@elsewhere.example")
	expectInTranscript(t, "relaying", out, "<** 550 5.7.1 relaying denied")

	// greylist: a new client's first attempt is deferred; smtpd restarts;
	// the retry after the delay is delivered.
	first := time.Now()
	out = inboundSend(t, mx, "127.0.0.1", "bob@example.test")
	expectInTranscript(t, "first attempt", out, "<** 451 4.7.1 Greylisted: please try again in 1 seconds")
	s.stop()
	s2 := startSmtpdIn(t, dir, cfg)
	out = inboundRetry(t, s2.Addr("mx"), first)
	files := maildirFiles(t, filepath.Join(dir, "var/mail"))
	if len(files) != 3 {
		t.Fatalf("the Maildir has %d messages; want 3 (postmaster's, the partner's, the retried one)", len(files))
	}
	var retried string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "\r\nTo: bob@example.test\r\n") && strings.Contains(string(b), "from mail.example.org ([127.0.0.1])") {
			retried = string(b)
		}
	}
	if retried == "" || !strings.Contains(retried, "\r\nSubject: inbound\r\n") {
		t.Fatalf("no delivered message is the retried one from 127.0.0.1:\n%s", out)
	}
}

// TestInboundMXSharedByTwoSmtpd: the same MX twice, sharing its state in
// one Redis: the first attempt reaches one smtpd and is greylisted, the
// retry reaches the other and is delivered.
func TestInboundMXSharedByTwoSmtpd(t *testing.T) {
	t.Parallel()
	dns := inboundDNS(t)
	cfg := inboundConfig(t, dns, fmt.Sprintf("backend = \"redis\"\naddrs = [%q]\nprefix = \"inbound:\"", statetest.StartRedis(t)))
	a := startSmtpd(t, cfg)
	b := startSmtpd(t, cfg)
	first := time.Now()
	out := inboundSend(t, a.Addr("mx"), "127.0.0.1", "bob@example.test")
	expectInTranscript(t, "first attempt, on the first smtpd", out, "<** 451 4.7.1 Greylisted: please try again in 1 seconds")
	inboundRetry(t, b.Addr("mx"), first)
	if n := len(maildirFiles(t, filepath.Join(b.dir, "var/mail"))); n != 1 {
		t.Fatalf("the second smtpd delivered %d messages; want the retried one", n)
	}
	if n := len(maildirFiles(t, filepath.Join(a.dir, "var/mail"))); n != 0 {
		t.Fatalf("the first smtpd delivered %d messages; want none", n)
	}
}

// TestInboundMXObserveOnly: the rollout of docs/inbound-mx.md, dnsbl and
// greylist with enforce = false: a listed client's message is delivered
// on its first attempt, and the log says what each would have refused.
func TestInboundMXObserveOnly(t *testing.T) {
	t.Parallel()
	dns := inboundDNS(t)
	cfg := inboundConfig(t, dns, `backend = "bbolt"`)
	for _, table := range []string{"[plugins.dnsbl]\n", "[plugins.greylist]\n"} {
		if !strings.Contains(cfg, table) {
			t.Fatalf("the docs example has no %s", table)
		}
		cfg = strings.Replace(cfg, table, table+"enforce = false\n", 1)
	}
	s := startSmtpd(t, cfg)
	out := inboundSend(t, s.Addr("mx"), "127.0.0.2", "bob@example.test")
	expectInTranscript(t, "listed client, observed only", out, "<-  250 2.0.0 Ok: queued as")
	if n := len(maildirFiles(t, filepath.Join(s.dir, "var/mail"))); n != 1 {
		t.Fatalf("%d messages delivered; want 1", n)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`level=WARN msg="plugin would refuse \(enforce = false\)" listener=mx hook=rcpt plugin=dnsbl .*reply="554 5\.7\.1 Service unavailable; Client host \[127\.0\.0\.2\] blocked using zen\.spamhaus\.org; Listed by SBL`),
		regexp.MustCompile(`level=WARN msg="plugin would refuse \(enforce = false\)" listener=mx hook=data plugin=greylist .*reply="451 4\.7\.1 Greylisted: please try again in 1 seconds"`),
	} {
		if !want.MatchString(s.Log()) {
			t.Errorf("the log has no line matching %s:\n%s", want, s.Log())
		}
	}
}

// inboundRetry retries from 127.0.0.1 until the message is delivered,
// after the one-second delay.
func inboundRetry(t *testing.T, addr string, first time.Time) string {
	t.Helper()
	return retryUntilAccepted(t, func() string { return inboundSend(t, addr, "127.0.0.1", "bob@example.test") }, first, time.Second)
}

// earlyTalk connects, sends EHLO and MAIL before the greeting, and
// returns the last line of each reply: the greeting, EHLO's, MAIL's.
func earlyTalk(t *testing.T, addr string) []string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("EHLO early.example.org\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	var last []string
	reply := func() string {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("early talker: %v after %q", err, last)
			}
			line = strings.TrimRight(line, "\r\n")
			if len(line) < 4 || line[3] != '-' {
				return line
			}
		}
	}
	last = append(last, reply(), reply())
	fmt.Fprintf(conn, "MAIL FROM:<a@example.org>\r\n")
	return append(last, reply())
}
