package server_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/server"
)

// The fuzz targets here drive a real server on 127.0.0.1:0, started once
// per process, with one listener per bare-newline policy; each input is the
// client's bytes on one connection. The seed corpora are in
// testdata/fuzz/FuzzSession and testdata/fuzz/FuzzDataStream.

// panicLog collects every log record that mentions a panic (go-smtp
// recovers a panic in a connection's goroutine and logs it through the
// server's logger).
type panicLog struct {
	mu   sync.Mutex
	msgs []string
}

func (p *panicLog) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicLog) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *panicLog) WithGroup(string) slog.Handler            { return p }
func (p *panicLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(strings.ToLower(r.Message), "panic") {
		p.mu.Lock()
		p.msgs = append(p.msgs, r.Message)
		p.mu.Unlock()
	}
	return nil
}

func (p *panicLog) check(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.msgs) > 0 {
		t.Fatalf("the server panicked: %s", p.msgs[0])
	}
}

type fuzzListener struct {
	addr  string
	queue *hookstest.QueueRecorder
}

type fuzzServer struct {
	byPolicy map[server.BareNewline]fuzzListener
	panics   *panicLog
}

var (
	fuzzOnce sync.Once
	fuzzSrv  *fuzzServer
	fuzzErr  error
)

// fuzzTarget returns the process's fuzz server, starting it on first use.
// It is never stopped: it lives as long as the test process.
func fuzzTarget(tb testing.TB) *fuzzServer {
	fuzzOnce.Do(func() {
		fs := &fuzzServer{byPolicy: map[server.BareNewline]fuzzListener{}, panics: &panicLog{}}
		log := slog.New(fs.panics)
		var lcs []server.ListenerConfig
		queues := map[string]*hookstest.QueueRecorder{}
		for _, policy := range []server.BareNewline{server.BareNewlineReject, server.BareNewlineNormalize} {
			q := &hookstest.QueueRecorder{}
			ch, err := hooks.NewChain([]hooks.Instance{{Name: "rcpt", Plugin: acceptRcpt{}}, {Name: "queue", Plugin: q}}, hooks.Options{Logger: log})
			if err != nil {
				fuzzErr = err
				return
			}
			queues[string(policy)] = q
			lcs = append(lcs, server.ListenerConfig{
				Name: string(policy), Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch,
				BareNewline: policy, ReadTimeout: 5 * time.Second,
				MaxConnections: 10000, MaxConnectionsPerIP: 10000,
				Limits: server.Limits{SpoolMemory: 1 << 10}, // large bodies spool to files too
			})
		}
		dir, err := os.MkdirTemp("", "sluice-fuzz-spool-")
		if err != nil {
			fuzzErr = err
			return
		}
		srv, err := server.New(server.Config{Listeners: lcs, SpoolDir: dir, Logger: log})
		if err == nil {
			err = srv.Listen()
		}
		if err != nil {
			fuzzErr = err
			return
		}
		go srv.Serve()
		for name, q := range queues {
			fs.byPolicy[server.BareNewline(name)] = fuzzListener{addr: srv.Addr(name).String(), queue: q}
		}
		fuzzSrv = fs
	})
	if fuzzErr != nil {
		tb.Fatalf("starting the fuzz server: %v", fuzzErr)
	}
	return fuzzSrv
}

// converse writes in to a new connection to addr, half-closes it, and
// returns everything the server wrote until it closed the connection.
// first, when set, is written and its replies read before in.
func converse(t *testing.T, addr, first string, firstReplies int, in []byte) (head, out []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if first != "" {
		var h bytes.Buffer
		if _, err := io.WriteString(c, first); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < firstReplies; {
			l, err := r.ReadString('\n')
			h.WriteString(l)
			if err != nil {
				t.Fatalf("reading the replies to %q: %v (so far %q)", first, err, h.Bytes())
			}
			if len(l) < 4 || l[3] != '-' {
				n++
			}
		}
		head = h.Bytes()
	}
	go func() {
		c.Write(in) // fails once the server has closed: that is fine
		c.(*net.TCPConn).CloseWrite()
	}()
	out, err = io.ReadAll(r)
	if err != nil && !isReset(err) {
		t.Fatalf("reading the server's replies: %v (so far %q)", err, out)
	}
	return head, out
}

// isReset reports a connection reset: the server closed while our input
// was still unread, which is how it cuts a client off.
func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset by peer")
}

var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9]([ -].*)?$`)

// replies splits a server's output into reply lines, checking that each
// is a well-formed reply line ending in CRLF.
func replies(t *testing.T, out []byte) []string {
	t.Helper()
	if len(out) == 0 {
		return nil
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		t.Fatalf("server output does not end with CRLF: %q", out)
	}
	lines := strings.Split(string(out[:len(out)-2]), "\r\n")
	for _, l := range lines {
		if !replyLine.MatchString(l) || strings.ContainsAny(l, "\r\n") {
			t.Fatalf("malformed reply line %q in %q", l, out)
		}
	}
	return lines
}

// countQueued counts the replies that announce a queued message.
func countQueued(lines []string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "250 2.0.0 Ok: queued as ") {
			n++
		}
	}
	return n
}

// crlfOnly reports whether every CR in b is followed by LF and every LF
// preceded by CR.
func crlfOnly(b []byte) bool {
	for i, c := range b {
		switch {
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			return false
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return false
		}
	}
	return true
}

// stillServing checks that a fresh connection gets the greeting and an
// orderly QUIT.
func stillServing(t *testing.T, addr string) {
	t.Helper()
	_, out := converse(t, addr, "", 0, []byte("QUIT\r\n"))
	if !bytes.HasPrefix(out, []byte("220 mx.example.test ")) || !bytes.Contains(out, []byte("\r\n221 ")) {
		t.Fatalf("a fresh connection after the input got %q", out)
	}
}

// FuzzSession feeds arbitrary client bytes to a whole session, under
// both bare-newline policies. The server must not panic or hang, every
// line it writes must be a reply line, every "queued" reply must match one
// message the queue took (and every message one reply), no queued message
// may hold a bare CR or LF, and the server must still serve afterwards.
func FuzzSession(f *testing.F) {
	f.Add([]byte("EHLO a.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"))
	f.Add([]byte("EHLO a.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nBDAT 14\r\nSubject: x\r\n\r\nBDAT 6 LAST\r\nbody\n\rQUIT\r\n"))
	f.Add([]byte("EHLO a.example\r\nMAIL FROM:<a@a.example> RET=FULL\r\nRCPT TO:<b@b.example> NOTIFY=NEVER\r\nBDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\nQUIT\r\n"))
	f.Add([]byte("EHLO a.example\r\nAUTH PLAIN\r\n*\r\nMAIL FROM:<a@a.example>\r\nBDAT 4 LAST\r\nQUITRSET\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<20 {
			t.Skip("inputs are capped at 1 MiB")
		}
		fs := fuzzTarget(t)
		for _, policy := range []server.BareNewline{server.BareNewlineReject, server.BareNewlineNormalize} {
			l := fs.byPolicy[policy]
			before := len(l.queue.Messages())
			_, out := converse(t, l.addr, "", 0, in)
			lines := replies(t, out)
			if len(lines) == 0 || !strings.HasPrefix(lines[0], "220 ") {
				t.Fatalf("%s: no greeting: %q", policy, out)
			}
			msgs := l.queue.Messages()[before:]
			if n := countQueued(lines); n != len(msgs) {
				t.Fatalf("%s: %d queued replies for %d queued messages:\n%q", policy, n, len(msgs), out)
			}
			for _, m := range msgs {
				if !crlfOnly(m.Data) {
					t.Fatalf("%s: a bare CR or LF reached the queue: %q", policy, m.Data)
				}
			}
			fs.panics.check(t)
			stillServing(t, l.addr)
		}
	})
}

// dataPrelude opens a transaction; its four replies (EHLO's, MAIL's,
// RCPT's and 354) are read before the message is sent.
const dataPrelude = "EHLO f.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n"

// dotStuff does what an SMTP client does to a message: it doubles the dot
// that starts a line (after a CRLF, or at the start).
func dotStuff(b []byte) []byte {
	var out []byte
	for i, c := range b {
		if c == '.' && (i == 0 || i >= 2 && b[i-2] == '\r' && b[i-1] == '\n') {
			out = append(out, '.')
		}
		out = append(out, c)
	}
	return out
}

// visible drops CR and LF, leaving the bytes that must survive the trip.
func visible(b []byte) []byte {
	return bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, b)
}

// FuzzDataStream sends a message body (dot-stuffed as a client would,
// then CRLF.CRLF and QUIT) inside DATA. Under normalize, exactly one
// message is queued, with CRLF line ends only and every other byte of the
// body in order: a bare CR or LF never ends the message and never yields a
// second one. Under reject, a body with a bare CR or LF gets 554 5.5.2 and
// nothing is queued; any other body is queued once, intact.
func FuzzDataStream(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 256<<10 {
			t.Skip("bodies are capped at 256 KiB")
		}
		fs := fuzzTarget(t)
		wire := append(dotStuff(body), "\r\n.\r\nQUIT\r\n"...)
		bare := !crlfOnly(append(append([]byte{}, body...), "\r\n"...))
		for _, policy := range []server.BareNewline{server.BareNewlineReject, server.BareNewlineNormalize} {
			l := fs.byPolicy[policy]
			before := len(l.queue.Messages())
			head, out := converse(t, l.addr, dataPrelude, 5, wire)
			if !bytes.HasSuffix(head, []byte("\r\n354 End data with <CR><LF>.<CR><LF>\r\n")) {
				t.Fatalf("%s: no 354: %q", policy, head)
			}
			lines := replies(t, out)
			msgs := l.queue.Messages()[before:]
			fs.panics.check(t)
			if policy == server.BareNewlineReject && bare {
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "554 5.5.2 ") || len(msgs) != 0 {
					t.Fatalf("reject: a body with a bare CR or LF got %q and %d queued messages", out, len(msgs))
				}
				continue
			}
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "250 2.0.0 Ok: queued as ") || !strings.HasPrefix(lines[1], "221 ") {
				t.Fatalf("%s: replies after the message: %q", policy, out)
			}
			if len(msgs) != 1 {
				t.Fatalf("%s: %d messages queued, want 1", policy, len(msgs))
			}
			m := msgs[0].Data
			if !crlfOnly(m) {
				t.Fatalf("%s: a bare CR or LF reached the queue: %q", policy, m)
			}
			// The Received field comes first; then the message, line ends
			// aside (normalize rewrites them; a header that ended without
			// an empty line gets one), byte for byte.
			if !bytes.HasSuffix(visible(m), visible(body)) {
				t.Fatalf("%s: the queued message lost or gained bytes:\nsent   %q\nqueued %q", policy, body, m)
			}
		}
	})
}
