package headers_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/headers"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

func newHarness(t *testing.T, settings string) *hookstest.Harness {
	return hookstest.New(t,
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Plugin("headers", hookstest.Build(t, "headers", settings)),
		hookstest.Queue())
}

// date is a Date value d away from now.
func date(d time.Duration) string { return time.Now().Add(d).Format(time.RFC1123Z) }

var now = "Date: " + date(0)

// message builds a message of the given fields and a body.
func message(fields ...string) string {
	return strings.Join(fields, "\r\n") + "\r\n\r\nbody\r\n"
}

// good are the fields of a message that passes.
func good() []string {
	return []string{"From: Alice <alice@example.org>", now, "Subject: hi", "Message-ID: <1@example.org>", "To: bob@example.test"}
}

func TestReplies(t *testing.T) {
	long := "Subject: " + strings.Repeat("x", 998-len("Subject: "))
	for _, tt := range []struct {
		settings string
		fields   []string
		want     string // the reply to the message
		problems []string
	}{
		{``, good(), "250 2.0.0 Ok: queued", nil},
		{``, append(good()[2:], "From: a@example.org", now+" (UTC)"), "250 2.0.0 Ok: queued", nil},
		{``, append(good()[2:], "Date: Thu, 1 Jan 2026 00:00:00 +0000 (UTC)"), "554 5.6.0 Message is missing required header From", []string{"missing:From", "date_past"}},
		{``, []string{"From: a@example.org", "Subject: x"}, "554 5.6.0 Message is missing required header Date", []string{"missing:Date"}},
		{``, []string{"Subject: x"}, "554 5.6.0 Message is missing required header From", []string{"missing:From", "missing:Date"}},
		{``, append(good(), "Subject: again"), "554 5.6.0 Too many Subject headers", []string{"singular:Subject"}},
		{``, append(good(), "from: mallory@example.org"), "554 5.6.0 Too many From headers", []string{"singular:From"}},
		{``, append(good(), "Received: a", "Received: b", "Comments: c", "Comments: d"), "250 2.0.0 Ok: queued", nil},
		{`singular = ["Comments"]`, append(good(), "Comments: c", "Comments: d", "Subject: again"), "554 5.6.0 Too many Comments headers", []string{"singular:Comments"}},
		{`required = ["From", "Date", "Message-ID"]`, good()[:3], "554 5.6.0 Message is missing required header Message-ID", []string{"missing:Message-ID"}},
		{`max_fields = 5`, good(), "250 2.0.0 Ok: queued", nil},
		{`max_fields = 5`, append(good(), "X-Extra: 1"), "552 5.3.4 Too many header fields", []string{"fields"}},
		{``, append(good(), long), "554 5.6.0 Too many Subject headers", []string{"singular:Subject"}},
		{``, append(good()[:2], long), "250 2.0.0 Ok: queued", nil},
		{``, append(good()[:2], long+"x"), "554 5.6.0 Header line too long", []string{"line_length"}},
		{``, append(good()[:2], "Subject: short\r\n "+strings.Repeat("y", 1000)), "554 5.6.0 Header line too long", []string{"line_length"}},
		{`max_line_length = 0`, append(good()[:2], long+"x"), "250 2.0.0 Ok: queued", nil},
		// The Date window.
		{``, append(good()[2:], "From: a@example.org", "Date: "+date(47*time.Hour)), "250 2.0.0 Ok: queued", nil},
		{``, append(good()[2:], "From: a@example.org", "Date: "+date(49*time.Hour)), "554 5.6.0 The Date header is too far in the future", []string{"date_future"}},
		{``, append(good()[2:], "From: a@example.org", "Date: "+date(-14*24*time.Hour)), "250 2.0.0 Ok: queued", nil},
		{``, append(good()[2:], "From: a@example.org", "Date: "+date(-16*24*time.Hour)), "554 5.6.0 The Date header is too far in the past", []string{"date_past"}},
		{``, append(good()[2:], "From: a@example.org", "Date: yesterday"), "554 5.6.0 The Date header is not a valid date", []string{"date_invalid"}},
		{`future = "0s"`, append(good()[2:], "From: a@example.org", "Date: "+date(30*24*time.Hour)), "250 2.0.0 Ok: queued", nil},
		{`past = "1h"`, append(good()[2:], "From: a@example.org", "Date: "+date(-2*time.Hour)), "554 5.6.0 The Date header is too far in the past", []string{"date_past"}},
		{`date_action = "defer"`, append(good()[2:], "From: a@example.org", "Date: "+date(-16*24*time.Hour)), "451 4.6.0 The Date header is too far in the past", []string{"date_past"}},
		{`date_action = "note"`, append(good()[2:], "From: a@example.org", "Date: yesterday"), "250 2.0.0 Ok: queued", []string{"date_invalid"}},
		{`date_action = "off"`, append(good()[2:], "From: a@example.org", "Date: yesterday"), "250 2.0.0 Ok: queued", nil},
		// The date refuses even when the other checks only note.
		{`action = "note"`, []string{"Subject: a", "Subject: b", "Date: yesterday"}, "554 5.6.0 The Date header is not a valid date", []string{"missing:From", "singular:Subject", "date_invalid"}},
		{`action = "note"`, []string{"Subject: a", "Subject: b"}, "250 2.0.0 Ok: queued", []string{"missing:From", "missing:Date", "singular:Subject"}},
		{`action = "defer"`, []string{"Subject: a"}, "451 4.6.0 Message is missing required header From", []string{"missing:From", "missing:Date"}},
		{`action = "defer"` + "\nmax_fields = 1", []string{"From: a@example.org", now}, "451 4.3.4 Too many header fields", []string{"fields"}},
	} {
		h := newHarness(t, tt.settings)
		s := h.Connect("192.0.2.1")
		got := s.Send("alice@example.org", []string{"bob@example.test"}, message(tt.fields...)).String()
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s, %q: got %q; want %q", tt.settings, tt.fields, got, tt.want)
		}
		if q := h.Queued(); len(q) == 1 {
			p, _ := q[0].Notes[headers.NoteProblems.Name()].([]string)
			if !slices.Equal(p, tt.problems) {
				t.Errorf("%s, %q: note %s = %q; want %q", tt.settings, tt.fields, headers.NoteProblems, p, tt.problems)
			}
		}
	}
}

// TestSubmission: an authenticated user or a relay client may leave Date
// and Message-ID to the server, not From.
func TestSubmission(t *testing.T) {
	h := newHarness(t, `required = ["From", "Date", "Message-ID"]`)
	for i, who := range []string{"auth", "relay"} {
		s := h.Connect("192.0.2.1")
		if who == "auth" {
			s.Conn().AuthUser = "alice"
		} else {
			s.Conn().Relay = true
		}
		hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, message("From: alice@example.org", "Subject: x")), 250)
		hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, message("Subject: x")), "554 5.6.0 Message is missing required header From")
		if n := len(h.Queued()); n != i+1 {
			t.Errorf("%s: %d messages queued; want %d", who, n, i+1)
		}
	}
	h = newHarness(t, `required_submission = ["From", "Date"]`)
	s := h.Connect("192.0.2.1")
	s.Conn().AuthUser = "alice"
	hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, message("From: alice@example.org")), "554 5.6.0 Message is missing required header Date")
}

// TestPastTheIndex: fields past the server's header index are not seen; a
// header that long counts as too many fields when max_fields is the index
// size, and is never judged as missing a field.
func TestPastTheIndex(t *testing.T) {
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("X-Filler-%d: %d", i, i))
	}
	for _, tt := range []struct {
		settings, want string
	}{
		{`max_fields = 10`, "552 5.3.4 Too many header fields"},
		{`max_fields = 0`, "250 2.0.0 Ok: queued"},
	} {
		h := newHarness(t, tt.settings)
		h.Limits.HeaderIndexFields = 10
		s := h.Connect("192.0.2.1")
		// From and Date come after the indexed fields.
		msg := message(append(many, "From: a@example.org", now)...)
		if got := s.Send("alice@example.org", []string{"bob@example.test"}, msg).String(); !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: got %q; want %q", tt.settings, got, tt.want)
		}
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`required = ["From:"]`, `required: "From:" is not a header field name`},
		{`singular = ["Sub ject"]`, `singular: "Sub ject" is not a header field name`},
		{`max_fields = -1`, `max_fields = -1: want 0 (no limit) or more`},
		{`max_line_length = 10`, `max_line_length = 10: want 0 (no limit) or at least 78`},
		{`action = "reject"`, `action = "reject": want "deny", "defer" or "note"`},
		{`date_action = "reject"`, `date_action = "reject": want "deny", "defer", "note" or "off"`},
		{`future = "2d"`, `future = "2d": want a duration such as "48h"`},
		{`past = "-1h"`, `past = "-1h": want a duration`},
		{`max_header = 5`, `unknown key "max_header"`},
	} {
		hookstest.ExpectBuildError(t, "headers", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "headers", "README.md")
}
