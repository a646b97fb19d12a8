package spamassassin_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/spamassassin"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// gtube is SpamAssassin's test string: any message holding it scores 1000.
const gtube = scannertest.GTUBE

const ham = "From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: lunch\r\n" +
	"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\nMessage-ID: <lunch-1@example.org>\r\n\r\nLunch tomorrow at noon?\r\n"

func spam() string {
	return "From: a@example.org\r\nTo: bob@example.test\r\nSubject: test\r\n\r\n" + gtube + "\r\n"
}

func harness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return scannertest.Harness(t, "spamassassin", settings)
}

func send(h *hookstest.Harness, msg string) string {
	return h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"bob@example.test"}, msg).String()
}

// header returns the value of the first field named name in a queued
// message's header.
func header(data []byte, name string) string {
	head, _, _ := strings.Cut(string(data), "\r\n\r\n")
	for _, l := range strings.Split(head, "\r\n") {
		if n, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(n, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestGTUBEIsRefused(t *testing.T) {
	needSpamd(t)
	h := harness(t, `address = "`+spamd.addr+`"`)
	rep := send(h, spam())
	if !strings.HasPrefix(rep, "550 5.7.1 Message refused as spam (score 100") || !strings.HasSuffix(rep, ", limit 10.0)") {
		t.Errorf("reply %q, want 550 5.7.1 naming the score", rep)
	}
	if n := len(h.Queued()); n != 0 {
		t.Errorf("%d queued", n)
	}
}

func TestHamPasses(t *testing.T) {
	needSpamd(t)
	h := harness(t, `address = "`+spamd.addr+`"`)
	// The sender forged a verdict: it must not reach the mailbox.
	rep := send(h, "X-Spam-Status: No, score=-100\r\nX-Spam-Flag: NO\r\n"+ham)
	if !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	q := h.Queued()[0]
	st := header(q.Data, "X-Spam-Status")
	if !strings.HasPrefix(st, "No, score=") || !strings.Contains(st, " required=5.0 tests=") {
		t.Errorf("X-Spam-Status = %q", st)
	}
	if strings.Contains(string(q.Data), "score=-100") || strings.Contains(string(q.Data), "X-Spam-Flag") {
		t.Errorf("the forged fields are still there:\n%s", q.Data)
	}
	if strings.Count(string(q.Data), "X-Spam-Status:") != 1 {
		t.Errorf("want one X-Spam-Status:\n%s", q.Data)
	}
	v, ok := q.Notes["spamassassin.result"].(spamassassin.Verdict)
	if !ok || v.Spam || v.Required != 5 {
		t.Errorf("note = %+v", q.Notes["spamassassin.result"])
	}
}

// Under reject_score, spam is tagged, with the report when asked.
func TestSpamTagged(t *testing.T) {
	needSpamd(t)
	h := harness(t, `address = "`+spamd.addr+`"`+"\nreject_score = 0\nreport = true")
	if rep := send(h, spam()); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	q := h.Queued()[0]
	if got := header(q.Data, "X-Spam-Flag"); got != "YES" {
		t.Errorf("X-Spam-Flag = %q", got)
	}
	if st := header(q.Data, "X-Spam-Status"); !strings.HasPrefix(st, "Yes, score=100") || !strings.Contains(st, "GTUBE") {
		t.Errorf("X-Spam-Status = %q", st)
	}
	if !strings.Contains(string(q.Data), "X-Spam-Report: ") || !strings.Contains(string(q.Data), "GTUBE") {
		t.Errorf("no report:\n%s", q.Data)
	}
}

func TestDeferScore(t *testing.T) {
	needSpamd(t)
	h := harness(t, `address = "`+spamd.addr+`"`+"\nreject_score = 2000\ndefer_score = 500")
	if rep := send(h, spam()); !strings.HasPrefix(rep, "451 4.7.1 Message looks like spam (score 100") {
		t.Errorf("reply %q", rep)
	}
}

func TestSkips(t *testing.T) {
	needSpamd(t)
	h := harness(t, `address = "`+spamd.addr+`"`)
	s := h.Connect("192.0.2.1:40000")
	s.Conn().AuthUser = "alice"
	if rep := s.Send("a@example.org", []string{"bob@example.test"}, spam()).String(); !strings.HasPrefix(rep, "250 ") {
		t.Errorf("authenticated: reply %q, want it not scanned", rep)
	}
	if st := header(h.Queued()[0].Data, "X-Spam-Status"); st != "" {
		t.Errorf("authenticated: X-Spam-Status = %q", st)
	}
	h = harness(t, `address = "`+spamd.addr+`"`+"\nscan_authenticated = true")
	s = h.Connect("192.0.2.1:40000")
	s.Conn().AuthUser = "alice"
	if rep := s.Send("a@example.org", []string{"bob@example.test"}, spam()).String(); !strings.HasPrefix(rep, "550 ") {
		t.Errorf("scan_authenticated: reply %q", rep)
	}

	h = harness(t, `address = "`+spamd.addr+`"`+"\nmax_size = 100")
	if rep := send(h, spam()); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("max_size: reply %q", rep)
	}
	if st := header(h.Queued()[0].Data, "X-Spam-Status"); !strings.HasPrefix(st, "Unknown, not scanned (message of ") {
		t.Errorf("max_size: X-Spam-Status = %q", st)
	}
}

func TestSpamdDown(t *testing.T) {
	dead := scannertest.Closed(t)
	h := harness(t, `address = "`+dead+`"`)
	if rep := send(h, ham); rep != "451 4.7.0 spamassassin scan failed; try again later" {
		t.Errorf("reply %q", rep)
	}
	h = harness(t, `address = "`+dead+`"`+"\nfailure = \"accept\"")
	if rep := send(h, ham); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	if st := header(h.Queued()[0].Data, "X-Spam-Status"); st != "Unknown, scan failed" {
		t.Errorf("X-Spam-Status = %q", st)
	}
}

// A spamd that takes the connection and never answers fails at timeout.
func TestTimeout(t *testing.T) {
	silent := scannertest.Silent(t)
	h := harness(t, `address = "`+silent+`"`+"\ntimeout = \"300ms\"")
	start := time.Now()
	if rep := send(h, ham); rep != "451 4.7.0 spamassassin scan failed; try again later" {
		t.Errorf("reply %q", rep)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "spamassassin", `defer_score = 12`, `defer_score = 12 is not under reject_score = 10`)
	hookstest.ExpectBuildError(t, "spamassassin", `failure = "pass"`, `failure = "pass"`)
	hookstest.ExpectBuildError(t, "spamassassin", `user = "a\nb"`, `no line breaks`)
}
