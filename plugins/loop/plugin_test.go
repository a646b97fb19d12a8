package loop_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/loop"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

const looping = "554 5.4.6 Too many hops: mail loop?"

func newHarness(t *testing.T, settings string) *hookstest.Harness {
	return hookstest.New(t,
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Plugin("loop", hookstest.Build(t, "loop", settings)),
		hookstest.Queue())
}

// message builds a message with the given header fields before Subject.
func message(fields ...string) string {
	var b strings.Builder
	for _, f := range fields {
		b.WriteString(f + "\r\n")
	}
	b.WriteString("Subject: hops\r\n\r\nReceived: in the body does not count\r\nDelivered-To: nor this\r\n")
	return b.String()
}

func repeat(field string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = field
	}
	return out
}

func TestHops(t *testing.T) {
	const rcvd = "Received: from a.example by b.example; Thu, 1 Jan 2026 00:00:00 +0000"
	const dt = "Delivered-To: bob@example.test"
	for _, tt := range []struct {
		name   string
		fields []string
		hops   int
		want   string // "" means queued (250)
	}{
		{"none", nil, 0, ""},
		{"two received", repeat(rcvd, 2), 2, ""},
		{"three received", repeat(rcvd, 3), 3, looping},
		{"two received, one delivered-to", append(repeat(rcvd, 2), dt), 3, looping},
		{"one of each", []string{rcvd, dt}, 2, ""},
		{"three delivered-to", repeat(dt, 3), 3, looping},
		{"any case", []string{"RECEIVED: x", "received: y", "delivered-to: z"}, 3, looping},
		{"folded fields count once", []string{"Received: from a\r\n\tby b", "Received: from c\r\n by d"}, 2, ""},
		{"lookalikes do not count", []string{"X-Received: x", "Delivered-To-Foo: y", "Original-Received: z", rcvd}, 1, ""},
	} {
		h := newHarness(t, `max_hops = 3`)
		s := h.Connect("192.0.2.1")
		msg := message(tt.fields...)
		rep := s.Send("alice@example.org", []string{"bob@example.test"}, msg)
		q := h.Queued()
		if tt.want != "" {
			if got := rep.String(); got != tt.want {
				t.Errorf("%s: %q; want %q", tt.name, got, tt.want)
			}
			if len(q) != 0 {
				t.Errorf("%s: a refused message was queued", tt.name)
			}
			// The connection goes on: the next message is taken.
			hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, message()), 250)
			continue
		}
		hookstest.Expect(t, rep, 250)
		if len(q) != 1 {
			t.Fatalf("%s: queued %d messages; want 1", tt.name, len(q))
		}
		if got := q[0].Notes[loop.NoteHops.Name()]; got != tt.hops {
			t.Errorf("%s: note %s = %v; want %d", tt.name, loop.NoteHops, got, tt.hops)
		}
		if _, ok := q[0].Notes[loop.NoteDetected.Name()]; ok {
			t.Errorf("%s: note %s set under the limit", tt.name, loop.NoteDetected)
		}
		// The message is queued unchanged, under Sluice's own Received.
		if data := string(q[0].Data); !strings.HasSuffix(data, "\r\n"+msg) || !strings.HasPrefix(data, "Received: from client.example.test ([192.0.2.1])\r\n") {
			t.Errorf("%s: queued %q", tt.name, data)
		}
	}
}

// TestDefault: 100 hops, as qpsmtpd and qmail-smtpd.
func TestDefault(t *testing.T) {
	h := newHarness(t, ``)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, message(repeat("Received: x", 99)...)), 250)
	if got := s.Send("alice@example.org", []string{"bob@example.test"}, message(repeat("Received: x", 100)...)).String(); got != looping {
		t.Errorf("100 hops: %q; want %q", got, looping)
	}
}

// TestNoteOnly: reject = false queues the message and notes the loop.
func TestNoteOnly(t *testing.T) {
	h := newHarness(t, "max_hops = 2\nreject = false")
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, message("Received: a", "Received: b", "Received: c")), 250)
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages; want 1", len(q))
	}
	if got := q[0].Notes[loop.NoteDetected.Name()]; got != true {
		t.Errorf("note %s = %v; want true", loop.NoteDetected, got)
	}
	if got := q[0].Notes[loop.NoteHops.Name()]; got != 3 {
		t.Errorf("note %s = %v; want 3", loop.NoteHops, got)
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`max_hops = 0`, `max_hops = 0: want at least 1`},
		{`max_hops = -3`, `max_hops = -3: want at least 1`},
		{`max_hops = "many"`, `max_hops: expected an integer, got a string`},
		{`reject = "yes"`, `reject: expected true or false, got a string`},
		{`max = 10`, `unknown key "max"`},
	} {
		hookstest.ExpectBuildError(t, "loop", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "loop", "README.md")
}
