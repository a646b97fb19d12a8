package milter_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/discard"
)

// BenchmarkSession1KiB is one connection with one 1 KiB message through
// a milter that accepts everything: the client's cost per message
// (connect, helo, mail, rcpt, header, body, end of message) without the
// milter's own work.
func BenchmarkSession1KiB(b *testing.B) {
	sc := &script{}
	h := hookstest.New(b,
		hookstest.Plugin("milter", hookstest.Build(b, "milter", `address = "`+serveB(b, sc)+`"`)),
		hookstest.Plugin("rcptok", hookstest.Build(b, "rcptok", `domains = ["example.test"]`)),
		hookstest.Plugin("discard", hookstest.Build(b, "discard", "i_know_this_drops_mail = true")),
	)
	body := "From: a@example.org\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n" + strings.Repeat("a line of body text for the milter.\r\n", 1024/37)
	b.ReportAllocs()
	for b.Loop() {
		s := h.Connect("192.0.2.1:40000")
		if rep := s.Send("a@example.org", []string{"b@example.test"}, body); rep.Code != 250 {
			b.Fatalf("reply %q", rep.String())
		}
		s.Close()
	}
}
