package discard_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/discard"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

func TestRefusesToBuildWithoutTheSafetyCatch(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{``, "i_know_this_drops_mail"},
		{`i_know_this_drops_mail = false`, "i_know_this_drops_mail"},
		{`i_know_this_drops_mail = "yes"`, "i_know_this_drops_mail"},
		{`i_know_this_drops_mails = true`, "i_know_this_drops_mails"},
	} {
		_, err := hookstest.BuildErr("discard", tc.settings)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("settings %q: error %v; want one naming %q", tc.settings, err, tc.want)
		}
	}
}

func TestAcceptsAndDrops(t *testing.T) {
	p := hookstest.Build(t, "discard", `i_know_this_drops_mail = true`)
	if _, ok := p.(*discard.Plugin); !ok {
		t.Fatalf("Build returned %T", p)
	}
	rcptok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	// A recorder after discard shows that nothing goes on to be queued.
	h := hookstest.New(t, hookstest.Plugin("rcptok", rcptok), hookstest.Plugin("discard", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	for i := range 3 {
		rep := s.Send("a@example.org", []string{"b@example.test"}, "Subject: x\r\n\r\nbody\r\n")
		hookstest.Expect(t, rep, 250, "2.0.0", discard.Reply)
		if strings.Contains(rep.Msg, "queued") {
			t.Errorf("message %d: reply %q claims the message was queued", i, rep)
		}
	}
	if q := h.Queued(); len(q) != 0 {
		t.Errorf("%d messages reached the queue plugin after discard", len(q))
	}
	// Recipients are still checked by the plugins before it.
	hookstest.Expect(t, s.Send("a@example.org", []string{"b@elsewhere.test"}, "x\r\n"), 550)
}
