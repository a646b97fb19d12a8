package earlytalker_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/earlytalker"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/servertest"
)

const delay = 200 * time.Millisecond

// serve runs a real listener on loopback with greeting_delay, whose chain
// is earlytalker (built from settings), rcptok and a recording queue.
func serve(t *testing.T, settings string) (string, *hookstest.QueueRecorder) {
	t.Helper()
	q := &hookstest.QueueRecorder{}
	ch, err := hooks.NewChain([]hooks.Instance{
		hookstest.Plugin("earlytalker", hookstest.Build(t, "earlytalker", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		{Name: "queue", Plugin: q},
	}, hooks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := servertest.Serve(t, server.Config{
		Listeners: []server.ListenerConfig{{Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch, GreetingDelay: delay}},
		SpoolDir:  t.TempDir(),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return srv.Addr("mx").String(), q
}

// client is a raw SMTP client on a real TCP connection.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// expect sends cmd (CRLF added, none when empty) and checks that the
// whole reply, lines joined by "\n", starts with want.
func (c *client) expect(cmd, want string) {
	c.t.Helper()
	if cmd != "" {
		c.send(cmd + "\r\n")
	}
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			lines = append(lines, "EOF")
			break
		}
		lines = append(lines, strings.TrimRight(l, "\r\n"))
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	if got := strings.Join(lines, "\n"); !strings.HasPrefix(got, want) {
		c.t.Fatalf("after %q: got %q; want %q", cmd, got, want)
	}
}

// closed checks that the server closed the connection.
func (c *client) closed() {
	c.t.Helper()
	if l, err := c.r.ReadString('\n'); err == nil {
		c.t.Fatalf("read %q after the refusal; want the connection closed", l)
	}
}

const msg = "Subject: hi\r\n\r\nhello\r\n"

// deliver sends a message from MAIL on and expects it queued.
func (c *client) deliver(from string) {
	c.t.Helper()
	c.expect("MAIL FROM:<"+from+">", "250 2.1.0")
	c.expect("RCPT TO:<b@example.test>", "250 2.1.5")
	c.expect("DATA", "354")
	c.send(msg + ".\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
}

// polite sends a whole message the patient way and expects it queued.
func polite(t *testing.T, addr string) {
	t.Helper()
	c := dial(t, addr)
	c.expect("", "220 mx.example.test ESMTP")
	c.expect("EHLO polite.example", "250")
	c.deliver("a@polite.example")
	c.expect("QUIT", "221")
}

func TestRefusedAtConnect(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ settings, want string }{
		{``, "554 5.7.1 Client talked before the greeting"},
		{`action = "deny"` + "\n" + `hook = "connect"`, "554 5.7.1 Client talked before the greeting"},
		{`action = "defer"`, "421 4.7.1 Client talked before the greeting"},
	} {
		addr, q := serve(t, tt.settings)
		// Timed from before the dial: the server's delay starts at its
		// accept, which comes after this, so a correct server never
		// refuses sooner (a start taken after dial returns can be late).
		start := time.Now()
		c := dial(t, addr)
		c.send("EHLO rude.example\r\n")
		c.expect("", tt.want)
		c.closed()
		if waited := time.Since(start); waited < delay {
			t.Errorf("%s: refused after %v; want the whole greeting delay", tt.settings, waited)
		}
		polite(t, addr)
		if n := len(q.Messages()); n != 1 {
			t.Errorf("%s: %d messages queued; want the polite client's one", tt.settings, n)
		}
	}
}

func TestRefusedAtMail(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ settings, want string }{
		{`hook = "mail"`, "554 5.7.1 Client talked before the greeting"},
		{"hook = \"mail\"\naction = \"defer\"", "450 4.7.1 Client talked before the greeting"},
	} {
		addr, q := serve(t, tt.settings)
		c := dial(t, addr)
		c.send("EHLO rude.example\r\n")
		c.expect("", "220 mx.example.test ESMTP")
		c.expect("", "250") // the early EHLO is read as the first command
		c.expect("MAIL FROM:<spam@rude.example>", tt.want)
		c.expect("MAIL FROM:<spam@rude.example>", tt.want)
		c.expect("QUIT", "221")
		polite(t, addr)
		if n := len(q.Messages()); n != 1 {
			t.Errorf("%s: %d messages queued; want the polite client's one", tt.settings, n)
		}
	}
}

// TestNote: with action = "note" the early talker is served at either
// hook, and the connection note is set for other plugins.
func TestNote(t *testing.T) {
	t.Parallel()
	for _, hook := range []string{"connect", "mail"} {
		settings := "action = \"note\"\nhook = \"" + hook + "\""
		addr, q := serve(t, settings)
		c := dial(t, addr)
		c.send("EHLO rude.example\r\n")
		c.expect("", "220 mx.example.test ESMTP")
		c.expect("", "250")
		c.deliver("a@rude.example")
		if n := len(q.Messages()); n != 1 {
			t.Errorf("%s: %d messages queued; want 1", settings, n)
		}

		p := hookstest.BuildAs[*earlytalker.Plugin](t, "earlytalker", settings)
		for _, early := range []bool{true, false} {
			conn := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:40000"))
			conn.EarlyTalker = early
			if r := p.Connect(context.Background(), conn); r.Code != hooks.Declined {
				t.Errorf("%s: connect answered %v; want declined", settings, r.Code)
			}
			if got, _ := earlytalker.NoteEarlyTalker.Lookup(&conn.Notes); got != early {
				t.Errorf("%s: note %s = %v on a client with EarlyTalker %v", settings, earlytalker.NoteEarlyTalker, got, early)
			}
		}
	}
}

// TestMailHookThroughHarness: the MAIL refusal and the note, with
// hookstest (the early talk is played by setting the flag the loop sets).
func TestMailHookThroughHarness(t *testing.T) {
	h := hookstest.New(t,
		hookstest.Plugin("earlytalker", hookstest.Build(t, "earlytalker", `hook = "mail"`)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	s := h.Connect("192.0.2.1")
	s.Conn().EarlyTalker = true
	hookstest.Expect(t, s.Helo("rude.example"), 250)
	hookstest.ExpectReply(t, s.Mail("a@rude.example"), "554 5.7.1 Client talked before the greeting")

	// A relay client and a whitelisted one are spared.
	s = h.Connect("192.0.2.2")
	s.Conn().EarlyTalker = true
	s.Conn().Relay = true
	hookstest.Expect(t, s.Send("a@rude.example", []string{"b@example.test"}, msg), 250)
	s = h.Connect("192.0.2.3")
	s.Conn().EarlyTalker = true
	connection.NoteWhitelisted.Set(&s.Conn().Notes, "client 192.0.2.3")
	hookstest.Expect(t, s.Send("a@rude.example", []string{"b@example.test"}, msg), 250)

	// A polite client passes.
	s = h.Connect("192.0.2.4")
	hookstest.Expect(t, s.Send("a@polite.example", []string{"b@example.test"}, msg), 250)
	if n := len(h.Queued()); n != 3 {
		t.Errorf("%d messages queued; want 3", n)
	}
}

// TestDataDelay: the 354 comes data_delay after DATA, and never past the
// hook's deadline.
func TestDataDelay(t *testing.T) {
	t.Parallel()
	h := hookstest.New(t,
		hookstest.Plugin("earlytalker", hookstest.Build(t, "earlytalker", `data_delay = "150ms"`)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("a@client.example"), 250)
	hookstest.Expect(t, s.Rcpt("b@example.test"), 250)
	start := time.Now()
	hookstest.Expect(t, s.Cmd("DATA"), 354)
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("354 after %v; want data_delay (150ms)", waited)
	}

	// A delay longer than the hook's deadline ends before it: the client
	// gets its 354, not the 451 of a plugin that overran.
	h = hookstest.NewWithOptions(t, hookstest.Options{Timeout: 400 * time.Millisecond},
		hookstest.Plugin("earlytalker", hookstest.Build(t, "earlytalker", `data_delay = "30s"`)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	s = h.Connect("192.0.2.1")
	start = time.Now()
	hookstest.Expect(t, s.Send("a@client.example", []string{"b@example.test"}, msg), 250, "queued")
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("the message took %v; want the delay cut at the 400ms deadline", waited)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`action = "reject"`, `action = "reject": want "deny", "defer" or "note"`},
		{`hook = "rcpt"`, `hook = "rcpt": want "connect" or "mail"`},
		{`data_delay = "2"`, `data_delay = "2": want a duration`},
		{`data_delay = "-1s"`, `data_delay = "-1s": want a duration`},
		{`data_delay = "2m"`, `data_delay = "2m": want a duration`},
		{`delay = "1s"`, `unknown key "delay"`},
	} {
		hookstest.ExpectBuildError(t, "earlytalker", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "earlytalker", "README.md")
}
