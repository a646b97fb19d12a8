package maxrcpt_test

import (
	"fmt"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/maxrcpt"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

func newHarness(t *testing.T, settings string) *hookstest.Harness {
	return hookstest.New(t,
		hookstest.Plugin("maxrcpt", hookstest.Build(t, "maxrcpt", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
}

func TestCap(t *testing.T) {
	for _, tt := range []struct {
		settings string
		max      int
		refusal  string
	}{
		// The hooks reply table answers 450 for DenySoft at RCPT; RFC 5321
		// wants 452 for "too many recipients" (see the README).
		{`max = 3`, 3, "452 4.5.3 Too many recipients"},
		{"max = 3\naction = \"defer\"", 3, "452 4.5.3 Too many recipients"},
		{"max = 1\naction = \"reject\"", 1, "552 5.5.3 Too many recipients"},
	} {
		h := newHarness(t, tt.settings)
		s := h.Connect("192.0.2.1")
		hookstest.Expect(t, s.Helo("client.example"), 250)
		hookstest.Expect(t, s.Mail("alice@example.org"), 250)
		for i := range tt.max {
			if got := s.Rcpt(fmt.Sprintf("r%d@example.test", i)).String(); got != "250 2.1.5 Recipient OK" {
				t.Fatalf("%s: recipient %d: %q; want 250", tt.settings, i+1, got)
			}
		}
		for i := range 2 {
			if got := s.Rcpt("over@example.test").String(); got != tt.refusal {
				t.Errorf("%s: recipient %d: %q; want %q", tt.settings, tt.max+1+i, got, tt.refusal)
			}
		}
		// A recipient maxrcpt refused is not added.
		if got := len(s.Transaction().Recipients); got != tt.max {
			t.Errorf("%s: %d recipients in the transaction; want %d", tt.settings, got, tt.max)
		}
		hookstest.Expect(t, s.Data("Subject: x\r\n\r\nbody\r\n"), 250)
		q := h.Queued()
		if len(q) != 1 || len(q[0].Recipients) != tt.max {
			t.Fatalf("%s: queued %+v", tt.settings, q)
		}
		if got := q[0].Notes[maxrcpt.NoteRefused.Name()]; got != 2 {
			t.Errorf("%s: note %s = %v; want 2", tt.settings, maxrcpt.NoteRefused, got)
		}
	}
}

// TestPerTransaction: the count starts again with each transaction.
func TestPerTransaction(t *testing.T) {
	h := newHarness(t, `max = 2`)
	s := h.Connect("192.0.2.1")
	rcpts := []string{"a@example.test", "b@example.test"}
	for range 3 {
		hookstest.Expect(t, s.Send("alice@example.org", rcpts, "Subject: x\r\n\r\nbody\r\n"), 250)
	}
	tr := s.SendAll("alice@example.org", append(rcpts, "c@example.test"), "Subject: x\r\n\r\nbody\r\n")
	if got := tr.Rcpt[2].String(); got != "452 4.5.3 Too many recipients" {
		t.Errorf("third recipient: %q", got)
	}
	// The client sends the message to the two it may.
	q := h.Queued()
	if len(q) != 4 || len(q[3].Recipients) != 2 {
		t.Fatalf("queued %d messages; want 4, the last to 2 recipients", len(q))
	}
	for i, m := range q {
		if _, ok := m.Notes[maxrcpt.NoteRefused.Name()]; ok != (i == 3) {
			t.Errorf("message %d: note %s set %v; want it only on the transaction over the cap", i, maxrcpt.NoteRefused, ok)
		}
	}
}

// TestDefault: the default cap is 100, the same as the server's own
// max_recipients default, which answers 452 before the hooks run: a max
// above the listener's limit has no effect.
func TestDefault(t *testing.T) {
	h := newHarness(t, ``)
	h.Limits.MaxRecipients = 1000
	if got := rcpt101(t, h); got != "452 4.5.3 Too many recipients" {
		t.Errorf("recipient 101: %q", got)
	}

	// With the listener's default limit (100) the server refuses first.
	if got := rcpt101(t, newHarness(t, `max = 200`)); got != "452 4.5.3 Too many recipients" {
		t.Errorf("recipient 101 under the listener's limit: %q", got)
	}
}

// rcpt101 gives a transaction 100 recipients, each accepted, and returns
// the reply to the 101st.
func rcpt101(t *testing.T, h *hookstest.Harness) string {
	t.Helper()
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	for i := range 100 {
		hookstest.Expect(t, s.Rcpt(fmt.Sprintf("r%d@example.test", i)), 250)
	}
	return s.Rcpt("over@example.test").String()
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`max = 0`, `max = 0: want at least 1`},
		{`max = -5`, `max = -5: want at least 1`},
		{`max = "ten"`, `max: expected an integer, got a string`},
		{`action = "drop"`, `action = "drop": want "defer" or "reject"`},
		{`action = "Defer"`, `action = "Defer": want "defer" or "reject"`},
		{`limit = 5`, `unknown key "limit"`},
	} {
		hookstest.ExpectBuildError(t, "maxrcpt", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "maxrcpt", "README.md")
}
