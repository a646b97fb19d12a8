package verify_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/verify"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
	"github.com/sluice-mta/sluice/state/statetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopRigs()
	statetest.StopRedis()
	os.Exit(code)
}

// The replies Postfix's smtpd gives at RCPT for an unknown user and a
// full mailbox, which the go-smtp downstream imitates.
const (
	unknownText = "<nobody@example.test>: Recipient address rejected: User unknown in local recipient table"
	fullText    = "<full@example.test>: Mailbox full"
)

// downstream starts a go-smtp server (SMTP or LMTP) that refuses
// nobody@example.test for good and full@example.test for now, as
// Postfix does, and accepts everyone else.
func downstream(t testing.TB, lmtp bool) *queuetest.Downstream {
	return queuetest.StartDownstream(t, queuetest.Options{LMTP: lmtp, RcptErr: map[string]*smtp.SMTPError{
		"nobody@example.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: unknownText},
		"full@example.test":   {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: fullText},
	}})
}

// stateTOML is a [state] table for a bbolt file of the test's own.
func stateTOML(t testing.TB) string {
	return fmt.Sprintf("[state]\npath = %q\n", filepath.Join(t.TempDir(), "state.db"))
}

// build builds verify from settings (a [state] table of the test's own
// is added unless settings have one) and closes it when the test ends.
func build(t testing.TB, settings string) *verify.Plugin {
	t.Helper()
	if !strings.Contains(settings, "[state]") {
		settings += "\n" + stateTOML(t)
	}
	p := hookstest.BuildAs[*verify.Plugin](t, "verify", settings)
	t.Cleanup(func() { p.Close() })
	return p
}

// chain puts verify before rcptok (which accepts example.test) and a
// queue, and opens a session up to MAIL.
func chain(t testing.TB, p *verify.Plugin) *hookstest.Session {
	t.Helper()
	rcptok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("verify", p), hookstest.Plugin("rcptok", rcptok), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("sender@example.org"), 250)
	return s
}

func expectAsked(t testing.TB, p *verify.Plugin, want int64) {
	t.Helper()
	if got := p.Asked(); got != want {
		t.Fatalf("the downstream was asked %d times; want %d", got, want)
	}
}

// TestVerdicts: a known recipient gets verify's no opinion (and rcptok's
// 250), an unknown one the downstream's 550 with its text, a full
// mailbox the downstream's 452; answers for good come from the cache the
// second time, answers for now do not.
func TestVerdicts(t *testing.T) {
	for _, method := range []string{"smtp", "lmtp"} {
		t.Run(method, func(t *testing.T) {
			d := downstream(t, method == "lmtp")
			p := build(t, fmt.Sprintf("method = %q\nhost = %q", method, d.Addr))
			s := chain(t, p)
			hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
			expectAsked(t, p, 1)
			hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), "550 5.1.1 "+unknownText)
			expectAsked(t, p, 2)
			hookstest.ExpectReply(t, s.Rcpt("full@example.test"), "452 4.2.2 "+fullText)
			expectAsked(t, p, 3)

			// Again: the answers for good from the cache, the one for now
			// asked again.
			hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
			hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), "550 5.1.1 "+unknownText)
			expectAsked(t, p, 3)
			hookstest.ExpectReply(t, s.Rcpt("full@example.test"), "452 4.2.2 "+fullText)
			expectAsked(t, p, 4)
			// The domain is compared without regard to case: one entry.
			hookstest.ExpectReply(t, s.Rcpt("nobody@EXAMPLE.test"), "550 5.1.1 "+unknownText)
			expectAsked(t, p, 4)

			hookstest.Expect(t, s.Data("Subject: hi\r\n\r\nhello\r\n"), 250)
			if len(d.Messages()) != 0 {
				t.Fatalf("the downstream got %d messages from the probes; want none", len(d.Messages()))
			}
		})
	}
}

// TestProbeConnectionReused: a connection whose probe was accepted is kept
// for the next check; one that saw a refusal is closed.
func TestProbeConnectionReused(t *testing.T) {
	d := downstream(t, false)
	p := build(t, fmt.Sprintf("host = %q\npositive_ttl = \"0s\"", d.Addr))
	s := chain(t, p)
	for range 3 {
		hookstest.Expect(t, s.Rcpt("alice@example.test"), 250)
		if p.Idle() != 1 {
			t.Fatalf("%d idle probe connections after an accepted probe; want 1", p.Idle())
		}
	}
	expectAsked(t, p, 3) // positive_ttl = "0s": nothing cached
	hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550)
	if p.Idle() != 0 {
		t.Fatalf("%d idle probe connections after a refusal; want 0", p.Idle())
	}
}

// TestCacheOutlivesDownstream: once the downstream is gone, the cached
// answers stay and an address not in the cache is deferred.
func TestCacheOutlivesDownstream(t *testing.T) {
	var addr string
	var p *verify.Plugin
	var s *hookstest.Session
	outer := t
	t.Run("up", func(t *testing.T) {
		d := downstream(t, false) // stops when this subtest ends
		addr = d.Addr
		p = build(outer, fmt.Sprintf("host = %q", addr))
		s = chain(outer, p)
		hookstest.Expect(t, s.Rcpt("alice@example.test"), 250)
		hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550)
	})
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the downstream at %s still answers", addr)
	}
	hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
	hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), "550 5.1.1 "+unknownText)
	hookstest.ExpectReply(t, s.Rcpt("carol@example.test"),
		"450 4.4.1 <carol@example.test>: Recipient address verification failed: the mailbox server is unreachable; try again later")
	expectAsked(t, p, 2)
}

// TestNegativeExpiry: a refusal is remembered for negative_ttl, then the
// downstream is asked again.
func TestNegativeExpiry(t *testing.T) {
	d := downstream(t, false)
	p := build(t, fmt.Sprintf("host = %q\nnegative_ttl = \"300ms\"", d.Addr))
	s := chain(t, p)
	start := time.Now()
	hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550, unknownText)
	hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550, unknownText)
	if time.Since(start) < 300*time.Millisecond {
		expectAsked(t, p, 1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Asked() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the refusal was still cached 10s later; want it gone after negative_ttl (300ms)")
		}
		time.Sleep(20 * time.Millisecond) // polling the condition: the next check asks once the entry expired
		hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550, unknownText)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("the downstream was asked again %v after the first refusal, before negative_ttl (300ms)", time.Since(start))
	}
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestUnreachable: a downstream that is down defers the recipient with
// 450 4.4.1, or lets it through (logged at WARN) with on_unreachable =
// "accept"; nothing is cached.
func TestUnreachable(t *testing.T) {
	addr := closedPort(t)
	p := build(t, fmt.Sprintf("host = %q", addr))
	s := chain(t, p)
	hookstest.ExpectReply(t, s.Rcpt("alice@example.test"),
		"450 4.4.1 <alice@example.test>: Recipient address verification failed: the mailbox server is unreachable; try again later")

	p = build(t, fmt.Sprintf("host = %q\non_unreachable = \"accept\"", addr))
	var log hookstest.LogBuffer
	p.SetLogger(log.Logger())
	s = chain(t, p)
	hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
	if l := log.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "rcpt=alice@example.test") || !strings.Contains(l, "connection refused") {
		t.Fatalf("log %q: want a WARN line naming the recipient and the cause", l)
	}
	// Not cached: the next check tries again, and warns again.
	hookstest.ExpectReply(t, s.Rcpt("alice@example.test"), "250 2.1.5 Recipient OK")
	if n := strings.Count(log.String(), "level=WARN"); n != 2 {
		t.Fatalf("%d WARN lines after two unverified recipients; want 2 (an unreachable answer is not cached)", n)
	}
}

// TestTimeout: a downstream that accepts the connection and never greets
// defers the recipient once timeout is over. The silent listener stands
// in for a hung server, which no real program here can be made to be.
func TestTimeout(t *testing.T) {
	p := build(t, fmt.Sprintf("host = %q\ntimeout = \"300ms\"", scannertest.Silent(t)))
	s := chain(t, p)
	start := time.Now()
	hookstest.Expect(t, s.Rcpt("alice@example.test"), 450, "4.4.1", "unreachable")
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the check took %v; want about timeout (300ms)", took)
	}
}

// TestDomains: only the listed domains are verified; a recipient
// elsewhere is left to rcptok (which refuses relaying) without a probe.
func TestDomains(t *testing.T) {
	d := downstream(t, false)
	p := build(t, fmt.Sprintf("host = %q\ndomains = [\"example.test\", \".sub.example.test\"]", d.Addr))
	s := chain(t, p)
	hookstest.Expect(t, s.Rcpt("someone@elsewhere.test"), 550, "relaying denied")
	expectAsked(t, p, 0)
	hookstest.Expect(t, s.Rcpt("alice@x.sub.example.test"), 550, "relaying denied") // asked, then rcptok's no
	expectAsked(t, p, 1)
	hookstest.Expect(t, s.Rcpt("nobody@example.test"), 550, unknownText)
	expectAsked(t, p, 2)
	// A recipient without a domain (<postmaster>) is never verified.
	hookstest.Expect(t, s.Rcpt("postmaster"), 250)
	expectAsked(t, p, 2)
}

var prefixes atomic.Int64

// TestCacheSharedThroughRedis: two instances with their own Redis
// clients (two smtpd processes) share the answers: the second asks
// nothing.
func TestCacheSharedThroughRedis(t *testing.T) {
	d := downstream(t, false)
	redis := statetest.Redis(t)
	prefix := fmt.Sprintf("verify%d:", prefixes.Add(1))
	// A different timeout gives the second instance a Redis client of its
	// own, as another process would have.
	st := func(timeout string) string {
		return fmt.Sprintf("[state]\nbackend = \"redis\"\naddrs = [%q]\nprefix = %q\ntimeout = %q\n", redis, prefix, timeout)
	}
	a := build(t, fmt.Sprintf("host = %q\n%s", d.Addr, st("2s")))
	b := build(t, fmt.Sprintf("host = %q\n%s", d.Addr, st("3s")))
	sa, sb := chain(t, a), chain(t, b)
	hookstest.Expect(t, sa.Rcpt("alice@example.test"), 250)
	hookstest.ExpectReply(t, sa.Rcpt("nobody@example.test"), "550 5.1.1 "+unknownText)
	expectAsked(t, a, 2)
	hookstest.Expect(t, sb.Rcpt("alice@example.test"), 250)
	hookstest.ExpectReply(t, sb.Rcpt("nobody@example.test"), "550 5.1.1 "+unknownText)
	expectAsked(t, b, 0)
}

// TestConcurrentChecks: many sessions at once, through max_connections =
// 2, each get the right answer.
func TestConcurrentChecks(t *testing.T) {
	d := downstream(t, true)
	p := build(t, fmt.Sprintf("method = \"lmtp\"\nhost = %q\nmax_connections = 2\npositive_ttl = \"0s\"\nnegative_ttl = \"0s\"", d.Addr))
	var wg sync.WaitGroup
	for i := range 16 {
		s := chain(t, p)
		wg.Go(func() {
			for range 5 {
				if i%2 == 0 {
					if r := s.Rcpt("alice@example.test"); r.Code != 250 {
						t.Errorf("alice: %s; want 250", r)
					}
				} else if r := s.Rcpt("nobody@example.test"); r.String() != "550 5.1.1 "+unknownText {
					t.Errorf("nobody: %s; want the downstream's 550", r)
				}
			}
		})
	}
	wg.Wait()
	expectAsked(t, p, 80)
	if p.Idle() > 2 {
		t.Fatalf("%d idle connections; want at most max_connections (2)", p.Idle())
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{``, `host = "": required`},
		{`host = "localhost"`, `want "host:port"`},
		{`host = "unix:relative.sock"`, `absolute path`},
		{`host = "127.0.0.1:25"` + "\nmethod = \"ldap\"", `method = "ldap"`},
		{`host = "127.0.0.1:25"` + "\non_unreachable = \"bounce\"", `on_unreachable = "bounce"`},
		{`host = "127.0.0.1:25"` + "\ntimeout = \"0s\"", `timeout`},
		{`host = "127.0.0.1:25"` + "\nnegative_ttl = \"-1h\"", `negative_ttl`},
		{`host = "127.0.0.1:25"` + "\nprobe_sender = \"<>\"", `probe_sender`},
		{`host = "127.0.0.1:25"` + "\ndomains = [\"bob@example.test\"]", `is not a domain`},
		{`host = "127.0.0.1:25"` + "\nstarttls = \"maybe\"", `starttls`},
		{`host = "unix:/run/dovecot/auth-userdb"` + "\nmethod = \"dovecot\"\nstarttls = \"required\"", `starttls`},
		{`host = "127.0.0.1:25"` + "\nmax_connections = 0", `max_connections`},
		{`host = "127.0.0.1:25"` + "\nposititve_ttl = \"1h\"", `posititve_ttl`},
	} {
		hookstest.ExpectBuildError(t, "verify", tc.settings+"\n"+stateTOML(t), tc.want)
	}
}

func TestReadme(t *testing.T) {
	p := hookstest.BuildFromReadme(t, "verify", "README.md").(*verify.Plugin)
	p.Close()
}
