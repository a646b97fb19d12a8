package clamav_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/clamav"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

func harness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return scannertest.Harness(t, "clamav", settings)
}

const clean = "From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nJust a clean message.\r\n"

func withEICAR() string {
	return "From: a@example.org\r\nTo: b@example.test\r\nSubject: a virus\r\n\r\n" + eicar + "\r\n"
}

func TestEICARIsRefused(t *testing.T) {
	needClamd(t)
	for _, addr := range []string{"unix:" + clamd.socket, clamd.socket, clamd.tcp} {
		t.Run(addr, func(t *testing.T) {
			h := harness(t, `address = "`+addr+`"`)
			rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, withEICAR())
			hookstest.ExpectReply(t, rep, "554 5.7.1 Message contains a virus: "+scannertest.EICARSignature)
			if n := len(h.Queued()); n != 0 {
				t.Errorf("%d messages queued, want none", n)
			}
		})
	}
}

func TestCleanMessagePasses(t *testing.T) {
	needClamd(t)
	h := harness(t, `address = "unix:`+clamd.socket+`"`)
	// A forged verdict from the sender does not survive.
	rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, "X-Virus-Scanned: clean (forged)\r\n"+clean)
	hookstest.Expect(t, rep, 250)
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("%d messages queued", len(q))
	}
	if want := addField(clean, "X-Virus-Scanned: clean (ClamAV)"); q[0].WithoutReceived() != want {
		t.Errorf("queued:\n%q\nwant\n%q", q[0].Data, want)
	}
	if v, _ := q[0].Notes["clamav.result"].(clamav.Verdict); !v.Clean || v.Virus != "" {
		t.Errorf("note = %+v, want clean", q[0].Notes["clamav.result"])
	}
}

// A message clamd's StreamMaxLength refuses is a scan failure; under
// max_size it never reaches clamd.
func TestLargeMessages(t *testing.T) {
	needClamd(t)
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 2*streamMax/64)
	h := harness(t, `address = "unix:`+clamd.socket+`"`)
	rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, big)
	hookstest.ExpectReply(t, rep, "451 4.7.0 clamav scan failed; try again later")

	h = harness(t, `address = "unix:`+clamd.socket+`"`+"\nmax_size = \"64KB\"")
	rep = h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, big)
	hookstest.Expect(t, rep, 250)
	if got := h.Queued()[0].WithoutReceived(); !strings.HasPrefix(got, "Subject: big\r\nX-Virus-Scanned: no (message of ") || !strings.Contains(got, " bytes over max_size)\r\n\r\n") {
		t.Errorf("queued message starts %q", got[:100])
	}
}

func TestClamdDown(t *testing.T) {
	dead := scannertest.Closed(t)
	h := harness(t, `address = "`+dead+`"`)
	rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, clean)
	hookstest.ExpectReply(t, rep, "451 4.7.0 clamav scan failed; try again later")

	h = harness(t, `address = "`+dead+`"`+"\nfailure = \"accept\"")
	rep = h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, clean)
	hookstest.Expect(t, rep, 250)
	if want := addField(clean, "X-Virus-Scanned: no (scan failed)"); h.Queued()[0].WithoutReceived() != want {
		t.Errorf("queued:\n%q\nwant\n%q", h.Queued()[0].Data, want)
	}
}

// A clamd that accepts and never answers fails the scan at timeout.
func TestTimeout(t *testing.T) {
	silent := scannertest.Silent(t)
	h := harness(t, `address = "`+silent+`"`+"\ntimeout = \"300ms\"")
	start := time.Now()
	rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, clean)
	hookstest.ExpectReply(t, rep, "451 4.7.0 clamav scan failed; try again later")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s with timeout 300ms", d)
	}
}

func TestSkipAuthenticated(t *testing.T) {
	needClamd(t)
	h := harness(t, `address = "unix:`+clamd.socket+`"`)
	s := h.Connect("192.0.2.1:40000")
	s.Conn().AuthUser = "alice"
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, withEICAR()), 554)

	h = harness(t, `address = "unix:`+clamd.socket+`"`+"\nskip_authenticated = true\nheader = \"\"")
	s = h.Connect("192.0.2.1:40000")
	s.Conn().AuthUser = "alice"
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@example.test"}, withEICAR()), 250)
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "clamav", `failure = "ignore"`, `failure = "ignore": want "defer"`)
	hookstest.ExpectBuildError(t, "clamav", `address = "nohost"`, `address "nohost": want host:port`)
	hookstest.ExpectBuildError(t, "clamav", `timeout = "0s"`, `timeout = 0s`)
}

// addField puts field at the end of msg's header.
func addField(msg, field string) string {
	i := strings.Index(msg, "\r\n\r\n")
	return msg[:i+2] + field + "\r\n" + msg[i+2:]
}
