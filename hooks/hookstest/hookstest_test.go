package hookstest_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

// domains accepts recipients in its domains and counts connections.
type domains struct {
	Domains  []string `toml:"domains"`
	connects atomic.Int32
}

func (p *domains) Connect(context.Context, *connection.Connection) hooks.Result {
	p.connects.Add(1)
	return hooks.Result{}
}

func (p *domains) Rcpt(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	_, domain, _ := strings.Cut(rcpt, "@")
	if slices.Contains(p.Domains, domain) {
		notes.Set(&tx.Notes, "hookstesttest.domain", domain)
		return hooks.Accept("")
	}
	return hooks.Reject("relaying denied")
}

func init() {
	hooks.Register("hookstesttestdomains", func(decode hooks.Decoder) (*domains, error) {
		p := &domains{}
		if err := decode(p); err != nil {
			return nil, err
		}
		if len(p.Domains) == 0 {
			return nil, fmt.Errorf("domains: list at least one")
		}
		return p, nil
	})
}

// fakeTB records the first fatal failure instead of ending the test.
type fakeTB struct {
	testing.TB
	failure string
}

type fatal struct{}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failure = fmt.Sprintf(format, args...)
	panic(fatal{})
}

func (f *fakeTB) Helper() {}

// failure runs fn with a fakeTB and returns its fatal message, "" if none.
func failure(t *testing.T, fn func(tb testing.TB)) (msg string) {
	ft := &fakeTB{TB: t}
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(fatal); !ok {
				panic(v)
			}
			msg = ft.failure
		}
	}()
	fn(ft)
	return ""
}

func TestBuild(t *testing.T) {
	p := hookstest.Build(t, "hookstesttestdomains", `domains = ["example.test"]`).(*domains)
	if !slices.Equal(p.Domains, []string{"example.test"}) {
		t.Fatalf("Build decoded %v", p.Domains)
	}
	if _, err := hookstest.BuildErr("hookstesttestdomains", ``); err == nil || !strings.Contains(err.Error(), "domains: list at least one") {
		t.Fatalf("BuildErr with no domains = %v", err)
	}
	if _, err := hookstest.BuildErr("hookstesttestdomains", "domains = [\"a\"]\ndomain = \"typo\""); err == nil ||
		!strings.Contains(err.Error(), `settings:2: unknown key "domain"`) {
		t.Fatalf("BuildErr with an unknown key = %v", err)
	}
	if _, err := hookstest.BuildErr("hookstesttestdomains", `domains = "example.test"`); err == nil || !strings.Contains(err.Error(), "settings:1: domains") {
		t.Fatalf("BuildErr with a wrong type = %v", err)
	}
	if _, err := hookstest.BuildErr("nosuchpluginanywhere", ``); err == nil || !strings.Contains(err.Error(), "import its package") {
		t.Fatalf("BuildErr of an unregistered plugin = %v", err)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.Build(tb, "hookstesttestdomains", ``) }); !strings.Contains(msg, "domains: list at least one") {
		t.Fatalf("Build with a bad setting did not fail the test: %q", msg)
	}
}

func TestTheDocExample(t *testing.T) {
	p := hookstest.Build(t, "hookstesttestdomains", `domains = ["example.test"]`)
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Greeting(), 220)
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	hookstest.Expect(t, s.Rcpt("bob@elsewhere.test"), 550, "relaying denied")
	hookstest.Expect(t, s.Rcpt("bob@example.test"), 250)
	hookstest.Expect(t, s.Data("Subject: hi\r\n\r\nhello\r\n"), 250, "queued as")
	q := h.Queued()
	if len(q) != 1 || q[0].Notes["hookstesttest.domain"] != "example.test" || !strings.HasSuffix(string(q[0].Data), "Subject: hi\r\n\r\nhello\r\n") {
		t.Fatalf("queued %+v", q)
	}
	// Queued returns a copy.
	q[0].Sender = "changed"
	if h.Queued()[0].Sender != "alice@example.org" {
		t.Fatal("Queued shares its slice with the recorder")
	}
}

func TestConnectRunsTheConnectHookOnce(t *testing.T) {
	p := &domains{Domains: []string{"example.test"}}
	h := hookstest.New(t, hookstest.Plugin("d", p))
	s := h.Connect("192.0.2.1")
	if n := p.connects.Load(); n != 1 {
		t.Fatalf("connect hook ran %d times at Connect", n)
	}
	hookstest.Expect(t, s.Greeting(), 220, "mx.example.test")
	s.Greeting()
	if n := p.connects.Load(); n != 1 {
		t.Fatalf("Greeting ran the connect hook again (%d)", n)
	}
	if got := s.Conn().Remote.String(); got != "192.0.2.1:40000" {
		t.Fatalf("remote without a port = %s", got)
	}
	if got := h.Connect("[2001:db8::1]:25").Conn().Remote.String(); got != "[2001:db8::1]:25" {
		t.Fatalf("remote with a port = %s", got)
	}
	h.Hostname = "other.example.test"
	hookstest.Expect(t, h.Connect("192.0.2.1").Greeting(), 220, "other.example.test")
	if msg := failure(t, func(tb testing.TB) { hookstest.New(tb, hookstest.Plugin("d", p)).Connect("not an ip") }); !strings.Contains(msg, "not an IP") {
		t.Fatalf("Connect with a bad address: %q", msg)
	}
}

func TestSend(t *testing.T) {
	p := &domains{Domains: []string{"example.test"}}
	h := hookstest.New(t, hookstest.Plugin("d", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	// Send says EHLO when the session has not.
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: 1\r\n\r\n"), 250)
	if s.Conn().Helo != "client.example.test" || !s.Conn().ESMTP {
		t.Fatalf("Send's EHLO: %q %v", s.Conn().Helo, s.Conn().ESMTP)
	}
	// A refused recipient stops it, with the transaction reset.
	rep := s.Send("a@example.org", []string{"b@example.test", "c@elsewhere.test", "d@example.test"}, "Subject: 2\r\n\r\n")
	hookstest.Expect(t, rep, 550, "550 5.7.1 relaying denied")
	if s.Transaction() != nil {
		t.Fatal("Send left the refused transaction open")
	}
	if len(h.Queued()) != 1 {
		t.Fatal("the refused transaction was queued")
	}
	// A session that said HELO keeps its name.
	s = h.Connect("192.0.2.1")
	s.Helo("mine.example")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: 3\r\n\r\n"), 250)
	if !strings.Contains(string(h.Queued()[1].Data), "from mine.example ") {
		t.Fatalf("Send replaced the client's name: %q", h.Queued()[1].Data)
	}
}

func TestExpect(t *testing.T) {
	rep := hooks.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "relaying denied"}
	if msg := failure(t, func(tb testing.TB) { hookstest.Expect(tb, rep, 550, "5.7.1", "relaying") }); msg != "" {
		t.Fatalf("a matching reply failed: %q", msg)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.Expect(tb, rep, 250) }); !strings.Contains(msg, "550 5.7.1 relaying denied") || !strings.Contains(msg, "250") {
		t.Fatalf("a wrong code: %q", msg)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.Expect(tb, rep, 550, "relaying", "allowed") }); !strings.Contains(msg, `"allowed"`) {
		t.Fatalf("a missing text: %q", msg)
	}
}

func TestQueuedWithoutRecorder(t *testing.T) {
	if msg := failure(t, func(tb testing.TB) {
		hookstest.New(tb, hookstest.Plugin("d", &domains{})).Queued()
	}); !strings.Contains(msg, "hookstest.Queue()") {
		t.Fatalf("Queued without a recorder: %q", msg)
	}
}

func TestNewWithAPluginWithoutHooks(t *testing.T) {
	if msg := failure(t, func(tb testing.TB) { hookstest.New(tb, hookstest.Plugin("x", struct{}{})) }); !strings.Contains(msg, "no hook") {
		t.Fatalf("New with a hookless plugin: %q", msg)
	}
}

func TestDataRefusedBeforeTheMessage(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("d", &domains{Domains: []string{"example.test"}}), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	s.Helo("c")
	s.Mail("a@example.org")
	// DATA with no recipient: the refusal comes back, the message is not read.
	hookstest.Expect(t, s.Data("Subject: x\r\n\r\n"), 554)
	if len(h.Queued()) != 0 {
		t.Fatal("queued")
	}
}
