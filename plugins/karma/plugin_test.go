package karma_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/karma"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/transaction"
)

const msg = "From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nhello\r\n"

// marker sets the naughty note at connect for clients from 192.0.2.66,
// as a plugin that wants a later refusal does.
type marker struct{}

func (marker) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	if c.Remote.Addr().String() == "192.0.2.66" {
		karma.NoteNaughty.Set(&c.Notes, "Your HELO looked forged")
	}
	return hooks.Result{}
}

// refuser refuses every recipient; run observe-only, it only notes.
type refuser struct{}

func (refuser) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Result{Code: hooks.Deny, Msg: "Listed in bl.example"}
}

func harness(t *testing.T, settings string, extra ...hooks.Instance) *hookstest.Harness {
	t.Helper()
	st := fmt.Sprintf("\n[state]\npath = %q\n", filepath.Join(t.TempDir(), "state.db"))
	ins := append([]hooks.Instance{hookstest.Plugin("marker", marker{})}, extra...)
	ins = append(ins,
		hookstest.Plugin("karma", hookstest.Build(t, "karma", settings+st)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	return hookstest.New(t, ins...)
}

// connection runs one connection sending one message and returns the
// reply.
func connection1(h *hookstest.Harness, remote string) hooks.Reply {
	s := h.Connect(remote)
	defer s.Close()
	if g := s.Greeting(); g.Code != 220 {
		return g
	}
	return s.Send("a@example.org", []string{"b@example.test"}, msg)
}

func TestNaughtyIsRefusedLater(t *testing.T) {
	h := harness(t, "")
	hookstest.ExpectReply(t, connection1(h, "192.0.2.66:4000"), "550 5.7.1 Your HELO looked forged")
	hookstest.Expect(t, connection1(h, "192.0.2.1:4000"), 250)

	h = harness(t, `reject_at = "mail"`)
	hookstest.ExpectReply(t, connection1(h, "192.0.2.66:4000"), "550 5.7.1 Your HELO looked forged")
}

func TestNaughtyFromAnObserveOnlyPlugin(t *testing.T) {
	watch := hookstest.Plugin("trial", refuser{})
	watch.ObserveOnly = true
	h := harness(t, `naughty_from = ["trial"]`, watch)
	// The observe-only refusal at rcpt does not refuse; karma, after it,
	// refuses with its text.
	hookstest.ExpectReply(t, connection1(h, "192.0.2.1:4000"), "550 5.7.1 Listed in bl.example")

	h = harness(t, ``, watch)
	hookstest.Expect(t, connection1(h, "192.0.2.1:4000"), 250)
}

func TestEarlyTalker(t *testing.T) {
	h := harness(t, "")
	s := h.Connect("192.0.2.1:4000")
	s.Conn().EarlyTalker = true
	hookstest.ExpectReply(t, s.Send("a@example.org", []string{"b@example.test"}, msg), "550 5.7.1 Talked before the greeting")
	s.Close()

	h = harness(t, "earlytalker_naughty = false")
	s = h.Connect("192.0.2.1:4000")
	s.Conn().EarlyTalker = true
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
	s.Close()
}

// Bad connections put the client's address in the penalty box; another
// address is not touched.
func TestPenaltyBox(t *testing.T) {
	h := harness(t, "penalty_bad = 2\npenalty_time = \"1h\"")
	for range 2 {
		hookstest.Expect(t, connection1(h, "192.0.2.66:4000"), 550)
	}
	s := h.Connect("192.0.2.66:4001")
	g := s.Greeting()
	s.Close()
	if g.Code != 421 || g.Enhanced != [3]int{4, 7, 1} {
		t.Errorf("greeting %q, want 421 4.7.1 from the penalty box", g.String())
	}
	hookstest.Expect(t, connection1(h, "192.0.2.1:4000"), 250)
}

// Good connections make a client trusted: the whitelist note is set.
func TestGoodRecordIsTrusted(t *testing.T) {
	h := harness(t, "good_trust = 2")
	for range 2 {
		hookstest.Expect(t, connection1(h, "192.0.2.1:4000"), 250)
	}
	s := h.Connect("192.0.2.1:4001")
	defer s.Close()
	if w, ok := connection.NoteWhitelisted.Lookup(&s.Conn().Notes); !ok || w != "karma: 2 good connections, none bad" {
		t.Errorf("whitelist note = %q, %v", w, ok)
	}
	if hist := karma.NoteHistory.Get(&s.Conn().Notes); hist.Good != 2 || hist.Bad != 0 || !hist.Trusted {
		t.Errorf("history = %+v", hist)
	}
}

// A client with more bad connections than good gets fewer recipients.
func TestBadRecordCapsRecipients(t *testing.T) {
	h := harness(t, "penalty_bad = 0\nbad_max_recipients = 2")
	hookstest.Expect(t, connection1(h, "192.0.2.66:4000"), 550)
	// Same /32 but without the naughty mark: 192.0.2.66 again.
	h2 := h
	s := h2.Connect("192.0.2.66:4001")
	defer s.Close()
	karma.NoteNaughty.Delete(&s.Conn().Notes)
	tr := s.SendAll("a@example.org", []string{"b@example.test", "c@example.test", "d@example.test"}, msg)
	if len(tr.Rcpt) != 3 {
		t.Fatalf("MAIL: %q", tr.Mail.String())
	}
	hookstest.Expect(t, tr.Rcpt[0], 250)
	hookstest.Expect(t, tr.Rcpt[1], 250)
	hookstest.ExpectReply(t, tr.Rcpt[2], "452 4.5.3 Too many recipients for an address with a bad record")
}

func TestRelayClientsAreSpared(t *testing.T) {
	h := harness(t, "")
	s := h.Connect("192.0.2.66:4000")
	defer s.Close()
	s.Conn().Relay = true
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, msg), 250)
}

// whitelister whitelists clients connecting from port 4099, as bwl does
// at connect.
type whitelister struct{}

func (whitelister) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	if c.Remote.Port() == 4099 {
		connection.NoteWhitelisted.Set(&c.Notes, "client 192.0.2.66")
	}
	return hooks.Result{}
}

// A client whitelisted by a plugin before karma is not judged: neither
// the penalty box nor its naughty mark refuses it.
func TestWhitelistedClientsAreSpared(t *testing.T) {
	h := harness(t, "penalty_bad = 1\npenalty_time = \"1h\"", hookstest.Plugin("whitelister", whitelister{}))
	hookstest.Expect(t, connection1(h, "192.0.2.66:4000"), 550)
	hookstest.Expect(t, connection1(h, "192.0.2.66:4001"), 421) // in the penalty box now
	hookstest.Expect(t, connection1(h, "192.0.2.66:4099"), 250)
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "karma", `reject_at = "data"`, `reject_at = "data"`)
	hookstest.ExpectBuildError(t, "karma", `penalty_bad = -1`, `penalty_bad = -1`)
	hookstest.ExpectBuildError(t, "karma", `history = "soon"`, `history = "soon"`)
}
