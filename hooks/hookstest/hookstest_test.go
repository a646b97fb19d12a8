package hookstest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

// noteDomain is the transaction note domains sets to the domain it accepted.
var noteDomain = notes.NewKey[string]("hookstesttest.domain")

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
		noteDomain.Set(&tx.Notes, domain)
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

// fakeTB records the first fatal failure instead of ending the test, and
// the failures reported with Errorf.
type fakeTB struct {
	testing.TB
	failure string
	errors  []string
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
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

// errorsOf runs fn with a fakeTB and returns what it reported with Errorf.
func errorsOf(t *testing.T, fn func(tb testing.TB)) []string {
	ft := &fakeTB{TB: t}
	fn(ft)
	return ft.errors
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
	if len(q) != 1 || q[0].Notes[noteDomain.Name()] != "example.test" || !strings.HasSuffix(string(q[0].Data), "Subject: hi\r\n\r\nhello\r\n") {
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
	// A refused recipient is reported, and the message goes to the others,
	// as a real client sends it.
	rep := s.Send("a@example.org", []string{"b@example.test", "c@elsewhere.test", "d@example.test"}, "Subject: 2\r\n\r\n")
	hookstest.Expect(t, rep, 550, "550 5.7.1 relaying denied")
	if s.Transaction() != nil {
		t.Fatal("Send left the transaction open")
	}
	if q := h.Queued(); len(q) != 2 || strings.Join(q[1].Recipients, ",") != "b@example.test,d@example.test" {
		t.Fatalf("queued %d messages; want the second to b and d only", len(q))
	}
	// SendAll gives every reply.
	tr := s.SendAll("a@example.org", []string{"c@elsewhere.test", "b@example.test"}, "Subject: 2b\r\n\r\n")
	if tr.Mail.Code != 250 || len(tr.Rcpt) != 2 || tr.Rcpt[0].Code != 550 || tr.Rcpt[1].Code != 250 || tr.Data.Code != 250 {
		t.Fatalf("SendAll: %+v", tr)
	}
	// Every recipient refused: no DATA.
	if tr := s.SendAll("a@example.org", []string{"c@elsewhere.test"}, "x\r\n"); tr.Data.Code != 0 || len(h.Queued()) != 3 {
		t.Fatalf("SendAll with no recipient sent DATA: %+v", tr)
	}
	// A session that said HELO keeps its name.
	s = h.Connect("192.0.2.1")
	s.Helo("mine.example")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: 3\r\n\r\n"), 250)
	if !strings.Contains(string(h.Queued()[3].Data), "from mine.example ") {
		t.Fatalf("Send replaced the client's name: %q", h.Queued()[3].Data)
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

func TestExpectBuildError(t *testing.T) {
	var err error
	if got := errorsOf(t, func(tb testing.TB) {
		err = hookstest.ExpectBuildError(tb, "hookstesttestdomains", ``, "list at least one")
	}); len(got) != 0 {
		t.Fatalf("a refusal with the text reported %q", got)
	}
	if err == nil || err.Error() != "domains: list at least one" {
		t.Fatalf("ExpectBuildError returned %v; want the plugin's error", err)
	}
	// Settings that build: one failure naming the settings and the text.
	got := errorsOf(t, func(tb testing.TB) {
		err = hookstest.ExpectBuildError(tb, "hookstesttestdomains", `domains = ["example.test"]`, "list at least one")
	})
	if len(got) != 1 || !strings.Contains(got[0], `domains = [\"example.test\"]`) || !strings.Contains(got[0], `built the plugin; want an error containing "list at least one"`) {
		t.Fatalf("settings that build reported %q", got)
	}
	if err != nil {
		t.Fatalf("settings that build: ExpectBuildError returned %v", err)
	}
	// Another error: one failure showing the error and the text wanted.
	got = errorsOf(t, func(tb testing.TB) {
		hookstest.ExpectBuildError(tb, "hookstesttestdomains", "domains = [\"a\"]\ndomain = \"typo\"", "list at least one")
	})
	if len(got) != 1 || !strings.Contains(got[0], `unknown key \"domain\"`) || !strings.Contains(got[0], `want it to contain "list at least one"`) {
		t.Fatalf("another error reported %q", got)
	}
	// It goes on after a failure: a table reports every bad row.
	got = errorsOf(t, func(tb testing.TB) {
		hookstest.ExpectBuildError(tb, "hookstesttestdomains", `domains = ["a"]`, "x")
		hookstest.ExpectBuildError(tb, "nosuchpluginanywhere", ``, "import its package")
		hookstest.ExpectBuildError(tb, "hookstesttestdomains", `domains = ["b"]`, "y")
	})
	if len(got) != 2 {
		t.Fatalf("two bad rows reported %q", got)
	}
}

// writeReadme writes a README into a fresh folder and returns its path.
func writeReadme(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "README.md")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const listener = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\nplugins = [\"hookstesttestdomains\"]\n"

func TestReadmeExamples(t *testing.T) {
	path := writeReadme(t, "# x\n\n```toml\na = 1\n```\n\n```go\nb := 2\n```\n\n```toml\n[c]\nd = 3\n```\n")
	if got := hookstest.ReadmeExamples(t, path); !slices.Equal(got, []string{"a = 1\n", "[c]\nd = 3\n"}) {
		t.Fatalf("ReadmeExamples = %q", got)
	}
	for _, tt := range []struct{ path, want string }{
		{writeReadme(t, "# x\n\n```go\nb := 2\n```\n"), "has no ```toml example"},
		{filepath.Join(t.TempDir(), "nothere.md"), "nothere.md: no such file"},
	} {
		if msg := failure(t, func(tb testing.TB) { hookstest.ReadmeExamples(tb, tt.path) }); !strings.Contains(msg, tt.want) {
			t.Errorf("ReadmeExamples(%s): %q; want a failure containing %q", tt.path, msg, tt.want)
		}
	}
}

func TestBuildFromReadme(t *testing.T) {
	path := writeReadme(t, "# x\n\n```toml\n"+listener+"\n[plugins.hookstesttestdomains]\ndomains = [\"example.test\"]\n```\n\n```toml\nnot = toml = at all\n```\n")
	p := hookstest.BuildFromReadme(t, "hookstesttestdomains", path).(*domains)
	if !slices.Equal(p.Domains, []string{"example.test"}) {
		t.Fatalf("BuildFromReadme decoded %v", p.Domains)
	}
	for _, tt := range []struct{ name, example, want string }{
		{"unknown key", "[plugins.hookstesttestdomains]\ndomains = [\"a\"]\ndomain = \"typo\"\n", `README.md:8: unknown key "plugins.hookstesttestdomains.domain"`},
		{"refused setting", "[plugins.hookstesttestdomains]\ndomains = []\n", "domains: list at least one"},
		{"no table: the defaults", "", "domains: list at least one"},
		{"bad listener", "[plugins.hookstesttestdomains]\ndomains = [\"a\"]\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2526\"\nplugins = [\"x\"]\n", `listener "mx": the name is used twice`},
	} {
		path := writeReadme(t, "```toml\n"+listener+"\n"+tt.example+"```\n")
		if msg := failure(t, func(tb testing.TB) { hookstest.BuildFromReadme(tb, "hookstesttestdomains", path) }); !strings.Contains(msg, tt.want) {
			t.Errorf("%s: %q; want a failure containing %q", tt.name, msg, tt.want)
		}
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.BuildFromReadme(tb, "nosuchpluginanywhere", path) }); !strings.Contains(msg, "import its package") {
		t.Errorf("an unregistered plugin: %q", msg)
	}
}

func TestBuildFromConfig(t *testing.T) {
	example := hookstest.ReadmeExamples(t, writeReadme(t, "```toml\n"+listener+"[plugins.hookstesttestdomains]\ndomains = [\"/etc/example\"]\n```\n"))[0]
	p := hookstest.BuildFromConfig(t, "hookstesttestdomains", strings.Replace(example, "/etc/example", "example.test", 1)).(*domains)
	if !slices.Equal(p.Domains, []string{"example.test"}) {
		t.Fatalf("BuildFromConfig decoded %v", p.Domains)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.BuildFromConfig(tb, "hookstesttestdomains", `log_level = "loud"`) }); !strings.Contains(msg, `config:1: log_level = "loud"`) {
		t.Errorf("a config smtpd refuses: %q", msg)
	}
}

func TestLogBuffer(t *testing.T) {
	var l hookstest.LogBuffer
	log := l.Logger()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { log.Info("auth failed", "user", fmt.Sprint("u", i)) })
	}
	wg.Wait()
	out := l.String()
	if n := strings.Count(out, "level=INFO msg=\"auth failed\" user=u"); n != 8 {
		t.Fatalf("%d lines of 8 in:\n%s", n, out)
	}
}

// slowRcpt waits for its context: it gives up when the hook's deadline
// passes.
type slowRcpt struct{}

func (slowRcpt) Rcpt(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	<-ctx.Done()
	return hooks.Result{Code: hooks.DenySoft, Err: ctx.Err()}
}

// TestHookTimeoutAndChainLogs: NewWithOptions sets the hook deadline, and
// Harness.Logger, set after New, gets the chain's lines (a plugin's error)
// as well as the session's.
func TestHookTimeoutAndChainLogs(t *testing.T) {
	h := hookstest.NewWithOptions(t, hookstest.Options{Timeout: 50 * time.Millisecond}, hookstest.Plugin("slow", slowRcpt{}))
	logs := &hookstest.LogBuffer{}
	h.Logger = logs.Logger()
	s := h.Connect("192.0.2.1")
	s.Helo("client.example")
	s.Mail("a@example.org")
	start := time.Now()
	hookstest.ExpectReply(t, s.Rcpt("b@example.test"), "451 4.3.0 Local error in processing; try again later")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the hook ran %v: the 50ms deadline was not applied", d)
	}
	if !strings.Contains(logs.String(), "plugin=slow") || !strings.Contains(logs.String(), "deadline exceeded") {
		t.Fatalf("the chain's log line about the plugin is not in Harness.Logger:\n%s", logs)
	}
}

// TestExpectReply compares the whole reply.
func TestExpectReply(t *testing.T) {
	rep := hooks.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "relaying denied"}
	if msg := failure(t, func(tb testing.TB) { hookstest.ExpectReply(tb, rep, "550 5.7.1 relaying denied") }); msg != "" {
		t.Fatalf("an exact reply failed: %q", msg)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.ExpectReply(tb, rep, "550 5.7.1 relaying") }); !strings.Contains(msg, "want exactly") {
		t.Fatalf("a prefix passed ExpectReply: %q", msg)
	}
}

// TestBuildAs returns the plugin as its own type.
func TestBuildAs(t *testing.T) {
	p := hookstest.BuildAs[*domains](t, "hookstesttestdomains", `domains = ["example.test"]`)
	if !slices.Equal(p.Domains, []string{"example.test"}) {
		t.Fatalf("BuildAs: %+v", p)
	}
	if msg := failure(t, func(tb testing.TB) { hookstest.BuildAs[slowRcpt](tb, "hookstesttestdomains", `domains = ["x.test"]`) }); !strings.Contains(msg, "not a hookstest_test.slowRcpt") {
		t.Fatalf("BuildAs with the wrong type: %q", msg)
	}
}

// userPass accepts alice's password.
type userPass struct{}

func (userPass) Auth(_ context.Context, _ *connection.Connection, _, user, pass string) hooks.Result {
	if user == "alice" && pass == "s3cret" {
		return hooks.Accept("")
	}
	return hooks.Reject("")
}

// TestTLSAndAuthThroughTheRealPath: the session's TLS and AUTH gates are
// the server's: AUTH needs TLS, STARTTLS forgets the EHLO, MAIL needs AUTH
// where the listener requires it, and the raw argument parser runs.
func TestTLSAndAuthThroughTheRealPath(t *testing.T) {
	h := hookstest.New(t, hookstest.Plugin("auth", userPass{}), hookstest.Plugin("d", &domains{Domains: []string{"example.test"}}), hookstest.Queue())
	h.StartTLS, h.RequireAuth = true, true
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250, "STARTTLS")
	hookstest.ExpectReply(t, s.AuthPlain("alice", "s3cret"), "538 5.7.11 Encryption required for authentication: use STARTTLS first")
	hookstest.ExpectReply(t, s.StartTLS(), "220 2.0.0 Ready to start TLS")
	if s.Conn().TLS == nil || s.Conn().Helo != "" {
		t.Fatalf("after STARTTLS: TLS %v, HELO %q", s.Conn().TLS, s.Conn().Helo)
	}
	hookstest.ExpectReply(t, s.AuthPlain("alice", "s3cret"), "503 5.5.1 Send EHLO first")
	hookstest.Expect(t, s.Helo("client.example"), 250, "AUTH PLAIN LOGIN")
	hookstest.ExpectReply(t, s.Mail("a@example.org"), "530 5.7.0 Authentication required")
	hookstest.ExpectReply(t, s.AuthPlain("alice", "wrong"), "535 5.7.8 Authentication credentials invalid")
	hookstest.ExpectReply(t, s.AuthPlain("alice", "s3cret"), "235 2.7.0 Authentication successful")
	if s.Conn().AuthUser != "alice" || connection.NoteAuthUser.Get(&s.Conn().Notes) != "alice" {
		t.Fatalf("after AUTH: user %q", s.Conn().AuthUser)
	}
	hookstest.ExpectReply(t, s.Cmd("MAIL FROM:<a@example.org> SIZE=x"), "501 5.5.4 Bad SIZE value")
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, "Subject: x\r\n\r\n"), 250)
	if data := string(h.Queued()[0].Data); !strings.Contains(data, "with ESMTPSA id") {
		t.Fatalf("Received: %q", data)
	}
}

func TestWithoutReceived(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{"Received: from a\r\n\tby b; now\r\nSubject: x\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbody\r\n"},
		{"X-Top: 1\r\nReceived: from a\r\n by b\r\nSubject: x\r\n\r\nReceived: in the body\r\n", "X-Top: 1\r\nSubject: x\r\n\r\nReceived: in the body\r\n"},
		{"Subject: no trace\r\n\r\nbody\r\n", "Subject: no trace\r\n\r\nbody\r\n"},
		{"Subject: no trace\r\n\r\nReceived: in the body\r\n", "Subject: no trace\r\n\r\nReceived: in the body\r\n"},
		{"XReceived: 1\r\nReceived: from a\r\nSubject: x\r\n\r\n", "XReceived: 1\r\nSubject: x\r\n\r\n"},
		{"X-Note: Received: quoted\r\nReceived: from a\r\n\r\n", "X-Note: Received: quoted\r\n\r\n"},
	} {
		if got := (hookstest.Message{Data: []byte(tc.data)}).WithoutReceived(); got != tc.want {
			t.Errorf("WithoutReceived(%q) = %q, want %q", tc.data, got, tc.want)
		}
	}
}
