// Package hookstest is the plugin author's test kit, as net/http/httptest is
// to net/http: it drives SMTP sessions through a chain of plugins in
// process, with no socket, and lets a test assert the replies, the notes,
// the header and what was queued.
//
//	p := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
//	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
//	s := h.Connect("192.0.2.1")
//	hookstest.Expect(t, s.Helo("client.example"), 250)
//	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
//	hookstest.Expect(t, s.Rcpt("bob@elsewhere.test"), 550)
//	hookstest.ExpectReply(t, s.Cmd("RCPT TO:<bob@example.test> NOTIFY=NEVER"), "555 5.5.4 Unsupported parameter NOTIFY")
//
// Settings and README examples have helpers of their own:
//
//	hookstest.ExpectBuildError(t, "rcptok", `domains = ["bob@example.test"]`, "is not a domain")
//	hookstest.BuildFromReadme(t, "rcptok", "README.md")
//
// The replies are exactly what the server would send: hookstest runs the
// same state machine (server.Session) as a real connection, from the raw
// command arguments on: address parsing, the TLS and AUTH gates and the
// SASL exchange are the server's own (Session.StartTLS, AuthPlain, Cmd).
package hookstest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/transaction"
)

// Build constructs the registered plugin name from a TOML snippet of its
// settings (the body of its [plugins.NAME] table), failing the test on an
// error. Import the plugin's package (or cmd/smtpd's plugin list) so it is
// registered.
func Build(t testing.TB, name, settings string) any {
	t.Helper()
	p, err := BuildErr(name, settings)
	if err != nil {
		t.Fatalf("hookstest.Build(%q): %v", name, err)
	}
	return p
}

// BuildErr is Build returning the error, to test that bad settings are
// refused.
func BuildErr(name, settings string) (any, error) {
	reg, ok := hooks.Lookup(name)
	if !ok {
		return nil, &unknownPlugin{name}
	}
	return reg.New(func(v any) error { return config.DecodeString(settings, v) })
}

type unknownPlugin struct{ name string }

func (e *unknownPlugin) Error() string {
	return "no plugin registered as " + e.name + ": import its package"
}

// ExpectBuildError fails the test unless building the registered plugin
// name from settings is refused with an error containing want. It marks
// the test failed and goes on (t.Errorf), so a table of bad settings
// reports every row; it returns the error (nil if there was none) for
// further checks, such as that it does not show a secret.
func ExpectBuildError(t testing.TB, name, settings, want string) error {
	t.Helper()
	p, err := BuildErr(name, settings)
	switch {
	case err == nil:
		if c, ok := p.(io.Closer); ok {
			c.Close()
		}
		t.Errorf("hookstest.BuildErr(%q, %q) built the plugin; want an error containing %q", name, settings, want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("hookstest.BuildErr(%q, %q) = %q; want it to contain %q", name, settings, err, want)
	}
	return err
}

// tomlBlock is a README example: a fenced block marked toml.
var tomlBlock = regexp.MustCompile("(?s)```toml\n(.*?)```")

// ReadmeExamples returns the TOML examples of a README (its blocks fenced
// as ```toml), in order; it fails the test when the file cannot be read or
// has none.
func ReadmeExamples(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("hookstest.ReadmeExamples: %v", err)
	}
	var examples []string
	for _, m := range tomlBlock.FindAllSubmatch(b, -1) {
		examples = append(examples, string(m[1]))
	}
	if len(examples) == 0 {
		t.Fatalf("hookstest.ReadmeExamples: %s has no ```toml example", path)
	}
	return examples
}

// BuildFromConfig builds the registered plugin name from the text of a
// whole configuration file, as smtpd does: config.Parse checks the file
// (listeners, unknown keys), then the plugin is built from its
// [plugins.NAME] table (its defaults when there is none). It fails the
// test on an error. Use it for an example that needs a change first, such
// as a path replaced by a test file.
func BuildFromConfig(t testing.TB, name, text string) any {
	t.Helper()
	return buildFromConfig(t, "BuildFromConfig", name, "config", text)
}

// BuildFromReadme is BuildFromConfig on the first TOML example of the
// README at path, so the example cannot name a key, a value or a listener
// setting that smtpd would refuse. Line numbers in its errors count from
// the example's first line.
func BuildFromReadme(t testing.TB, name, path string) any {
	t.Helper()
	return buildFromConfig(t, "BuildFromReadme", name, path, ReadmeExamples(t, path)[0])
}

func buildFromConfig(t testing.TB, fn, name, path, text string) any {
	t.Helper()
	reg, ok := hooks.Lookup(name)
	if !ok {
		t.Fatalf("hookstest.%s(%q): %v", fn, name, &unknownPlugin{name})
	}
	c, err := config.Parse(path, text)
	if err != nil {
		t.Fatalf("hookstest.%s(%q): %v", fn, name, err)
	}
	p, err := reg.New(c.Decoder(name))
	if err != nil {
		t.Fatalf("hookstest.%s(%q): %v", fn, name, err)
	}
	return p
}

// LogBuffer collects log lines for a test to assert on: what a plugin
// logs, and that it never logs a password. Pass l.Logger() where a logger
// is wanted (hooks.Options, slog.SetDefault, Harness.Logger). It is safe
// for concurrent use; the zero value is ready.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Logger returns a text logger that writes into l.
func (l *LogBuffer) Logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// Plugin names a plugin value for New.
func Plugin(name string, p any) hooks.Instance { return hooks.Instance{Name: name, Plugin: p} }

// Message is one message a Queue plugin took.
type Message struct {
	QueueID    string
	Sender     string
	Recipients []string
	// Data is the message as it would be queued, Received header included.
	Data []byte
	// Notes are the transaction's notes, copied when it was queued.
	Notes map[string]any
}

// WithoutReceived returns Data without the Received field the server
// put on top (its id and time change from run to run), for a test that
// compares the rest byte for byte. Fields a plugin prepended above it
// stay.
func (m Message) WithoutReceived() string {
	s := string(m.Data)
	head, _, _ := strings.Cut(s, "\r\n\r\n")
	i := 0
	if !strings.HasPrefix(head, "Received: ") {
		if i = strings.Index(head, "\r\nReceived: "); i < 0 {
			return s
		}
		i += 2
	}
	end := i
	for {
		j := strings.Index(s[end:], "\r\n")
		if j < 0 {
			return s
		}
		end += j + 2
		if end >= len(s) || (s[end] != ' ' && s[end] != '\t') {
			return s[:i] + s[end:]
		}
	}
}

// QueueRecorder is a queue plugin that keeps every message in memory; use
// it as the last plugin of a test chain.
type QueueRecorder struct {
	mu   sync.Mutex
	msgs []Message
}

// Queue returns the instance of a fresh QueueRecorder, named "queue".
func Queue() hooks.Instance { return hooks.Instance{Name: "queue", Plugin: &QueueRecorder{}} }

// Queue implements hooks.Queue.
func (q *QueueRecorder) Queue(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	var b bytes.Buffer
	if _, err := tx.WriteTo(&b); err != nil {
		return hooks.Fail(err)
	}
	notes := map[string]any{}
	for _, k := range tx.Notes.Keys() {
		notes[k] = tx.Notes.Value(k)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, Message{QueueID: tx.ID, Sender: tx.Sender, Recipients: append([]string(nil), tx.Recipients...), Data: b.Bytes(), Notes: notes})
	return hooks.Accept("")
}

// Messages returns what was queued so far.
func (q *QueueRecorder) Messages() []Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Message(nil), q.msgs...)
}

// Harness is a chain under test.
type Harness struct {
	t      testing.TB
	Chain  *hooks.Chain
	Limits server.Limits
	// Hostname is the name the "server" announces. Default mx.example.test.
	Hostname string
	// Now is the clock for Received headers. Default: a fixed time.
	Now func() time.Time
	// Logger receives the session's and the chain's logs (plugin errors,
	// panics, timeouts), also when set after New. Default: the test's log
	// (shown with -v or when the test fails).
	Logger *slog.Logger
	// The listener's rules, for sessions connected after they are set:
	// StartTLS offers STARTTLS (Session.StartTLS then marks the session
	// as encrypted), RequireTLS and RequireAuth refuse MAIL before them,
	// AuthPlaintextLoopback allows AUTH without TLS from 127.0.0.1.
	StartTLS, RequireTLS, RequireAuth, AuthPlaintextLoopback bool
	// AuthLimiter counts failed AUTHs across the harness's sessions.
	AuthLimiter *authlimit.Limiter
	queue       *QueueRecorder
	// spoolDir is the sessions' spool directory: spool files are
	// unlinked at once, so sessions share it.
	spoolDir string
}

// Options tune the chain NewWithOptions builds.
type Options struct {
	// Timeout bounds each hook's run through the chain; default 5s.
	// QueueTimeout bounds the queue hook; default the same as Timeout.
	Timeout, QueueTimeout time.Duration
}

// New builds a chain from the instances, in order. A QueueRecorder among
// them is what Queued reports.
func New(t testing.TB, plugins ...hooks.Instance) *Harness {
	t.Helper()
	return NewWithOptions(t, Options{}, plugins...)
}

// NewWithOptions is New with the chain's hook deadlines set, to test a
// plugin that must give up in time.
func NewWithOptions(t testing.TB, opts Options, plugins ...hooks.Instance) *Harness {
	t.Helper()
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = opts.Timeout
	}
	h := &Harness{t: t, Hostname: "mx.example.test", Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }, AuthLimiter: &authlimit.Limiter{},
		spoolDir: t.TempDir()}
	ch, err := hooks.NewChain(plugins, hooks.Options{Timeout: opts.Timeout, QueueTimeout: opts.QueueTimeout, Logger: slog.New(harnessHandler{h})})
	if err != nil {
		t.Fatalf("hookstest.New: %v", err)
	}
	t.Cleanup(func() { ch.Close() })
	h.Chain = ch
	for _, in := range plugins {
		if q, ok := in.Plugin.(*QueueRecorder); ok {
			h.queue = q
		}
	}
	return h
}

// harnessHandler sends the chain's log lines to whatever Harness.Logger is
// when they are logged.
type harnessHandler struct{ h *Harness }

func (x harnessHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return x.h.Logger.Handler().Enabled(ctx, l)
}

func (x harnessHandler) Handle(ctx context.Context, r slog.Record) error {
	return x.h.Logger.Handler().Handle(ctx, r)
}

func (x harnessHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return x.h.Logger.Handler().WithAttrs(as)
}

func (x harnessHandler) WithGroup(name string) slog.Handler {
	return x.h.Logger.Handler().WithGroup(name)
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Queued returns the messages the harness's QueueRecorder took.
func (h *Harness) Queued() []Message {
	if h.queue == nil {
		h.t.Fatalf("hookstest: the chain has no hookstest.Queue()")
	}
	return h.queue.Messages()
}

// Session is one simulated connection: the server's own state machine,
// driven without a socket. Its methods take what a client types; the
// embedded *server.Session's take the raw command arguments (Mail("FROM:<a@b.example> SIZE=10")),
// and its Command a whole line with its CRLF.
type Session struct {
	*server.Session
	t         testing.TB
	greeting  hooks.Reply
	closeOnce sync.Once
}

// Close ends the session (reset_transaction and disconnect run), once;
// Connect also registers it with t.Cleanup.
func (s *Session) Close() { s.closeOnce.Do(s.Session.Close) }

// Connect opens a session from remote (an IP, or IP:port) and runs the
// connect hook, as a real connection does before its greeting; Greeting
// returns that reply.
func (h *Harness) Connect(remote string) *Session {
	h.t.Helper()
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		ip, err2 := netip.ParseAddr(remote)
		if err2 != nil {
			h.t.Fatalf("hookstest.Connect(%q): not an IP or IP:port", remote)
		}
		ap = netip.AddrPortFrom(ip, 40000)
	}
	c := connection.New("test", h.Hostname, netip.MustParseAddrPort("127.0.0.1:25"), ap)
	s := &Session{Session: server.NewSession(context.Background(), c, server.SessionConfig{
		Chain: h.Chain, Limits: h.Limits, SpoolDir: h.spoolDir, Now: h.Now, Logger: h.Logger,
		StartTLS: h.StartTLS, RequireTLS: h.RequireTLS, RequireAuth: h.RequireAuth,
		AuthPlaintextLoopback: h.AuthPlaintextLoopback, AuthLimiter: h.AuthLimiter,
	}), t: h.t}
	s.greeting = s.Session.Connect()
	h.t.Cleanup(s.Close)
	return s
}

// Greeting returns the reply the connect hook gave at Connect.
func (s *Session) Greeting() hooks.Reply { return s.greeting }

// Cmd sends one command line (CRLF added), exactly as a client would type
// it: "MAIL FROM:<a@example.org> SIZE=100".
func (s *Session) Cmd(line string) hooks.Reply { return s.Session.Command(line + "\r\n") }

// Helo sends EHLO host.
func (s *Session) Helo(host string) hooks.Reply { return s.Session.Ehlo(host) }

// Mail sends MAIL FROM:<from>, with SMTPUTF8 when from is not ASCII (as
// a real client does: without it the server refuses the address).
func (s *Session) Mail(from string) hooks.Reply {
	for i := 0; i < len(from); i++ {
		if from[i] >= 0x80 {
			return s.Session.Mail("FROM:<" + from + "> SMTPUTF8")
		}
	}
	return s.Session.Mail("FROM:<" + from + ">")
}

// Rcpt sends RCPT TO:<to>.
func (s *Session) Rcpt(to string) hooks.Reply { return s.Session.Rcpt("TO:<" + to + ">") }

// StartTLS sends STARTTLS and, when the server agrees (220), completes a
// TLS 1.3 "handshake": the session is then encrypted, through the same
// path as a real one (and, as there, has forgotten its EHLO).
func (s *Session) StartTLS() hooks.Reply {
	rep := s.Session.StartTLS("")
	if rep.Code == 220 {
		s.Session.TLSStarted(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, HandshakeComplete: true})
	}
	return rep
}

// AuthPlain sends AUTH PLAIN with user and password as its initial
// response, through the server's SASL exchange and the auth hook.
func (s *Session) AuthPlain(user, password string) hooks.Reply {
	return s.Cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)))
}

// Data sends DATA and, when it gets 354, the message (use "\r\n" line
// endings; no final dot); it returns the last reply.
func (s *Session) Data(msg string) hooks.Reply {
	rep := s.Session.Data("")
	if rep.Code != 354 {
		return rep
	}
	return s.Session.Message(strings.NewReader(msg))
}

// Transcript holds every reply of one SendAll.
type Transcript struct {
	Mail hooks.Reply
	Rcpt []hooks.Reply // one per recipient, in order
	// Data is the reply to DATA (a refusal) or to the end of the message;
	// zero when DATA was not sent (MAIL or every recipient refused).
	Data hooks.Reply
}

// SendAll runs a whole transaction as a real client does (EHLO when
// needed, MAIL, each RCPT, DATA when at least one recipient was accepted)
// and returns every reply. The transaction is over when it returns.
func (s *Session) SendAll(from string, to []string, msg string) Transcript {
	var tr Transcript
	defer s.Reset() // whatever happened, the next one starts a new transaction
	if s.Conn().Helo == "" {
		if rep := s.Helo("client.example.test"); !rep.Positive() {
			tr.Mail = rep
			return tr
		}
	}
	if tr.Mail = s.Mail(from); !tr.Mail.Positive() {
		return tr
	}
	accepted := 0
	for _, r := range to {
		rep := s.Rcpt(r)
		tr.Rcpt = append(tr.Rcpt, rep)
		if rep.Positive() {
			accepted++
		}
	}
	if accepted > 0 {
		tr.Data = s.Data(msg)
	}
	return tr
}

// Send is SendAll returning one reply: the first refusal (of EHLO, MAIL
// or a recipient) or, when there was none, the reply to the message. Like
// a real client it goes on past a refused recipient: the message goes to
// the others.
func (s *Session) Send(from string, to []string, msg string) hooks.Reply {
	tr := s.SendAll(from, to, msg)
	if !tr.Mail.Positive() {
		return tr.Mail
	}
	for _, rep := range tr.Rcpt {
		if !rep.Positive() {
			return rep
		}
	}
	return tr.Data
}

// Expect fails the test unless rep has the given code; with text, the reply
// must also contain it.
func Expect(t testing.TB, rep hooks.Reply, code int, text ...string) {
	t.Helper()
	if rep.Code != code {
		t.Fatalf("reply %q: want code %d", rep.String(), code)
	}
	for _, want := range text {
		if !strings.Contains(rep.String(), want) {
			t.Fatalf("reply %q: want it to contain %q", rep.String(), want)
		}
	}
}

// ExpectReply fails the test unless rep is exactly want as the client
// reads it, without CRLF ("550 5.7.1 relaying denied"; the lines of a
// multi-line reply joined by "\n" as in hooks.Reply.Msg).
func ExpectReply(t testing.TB, rep hooks.Reply, want string) {
	t.Helper()
	if got := rep.String(); got != want {
		t.Fatalf("reply %q: want exactly %q", got, want)
	}
}

// BuildAs is Build returning the plugin as its type: a test that needs
// the concrete plugin gets it, or fails when the registered constructor
// returns another type.
func BuildAs[T any](t testing.TB, name, settings string) T {
	t.Helper()
	p := Build(t, name, settings)
	v, ok := p.(T)
	if !ok {
		var zero T
		t.Fatalf("hookstest.BuildAs(%q): the plugin is a %T, not a %T", name, p, zero)
	}
	return v
}
