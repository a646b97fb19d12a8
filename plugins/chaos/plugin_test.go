package chaos_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/chaos"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

// harness builds chaos (with settings), rcptok and a queue recorder into
// a chain with a short hook deadline, logging into the returned buffer.
func harness(t *testing.T, settings string) (*hookstest.Harness, *hookstest.LogBuffer) {
	t.Helper()
	log := &hookstest.LogBuffer{}
	ins := []hooks.Instance{
		hookstest.Plugin("chaos", hookstest.Build(t, "chaos", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	}
	h := hookstest.New(t, ins...)
	ch, err := hooks.NewChain(ins, hooks.Options{Timeout: 50 * time.Millisecond, QueueTimeout: 50 * time.Millisecond,
		Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	h.Chain = ch
	return h, log
}

const msg = "Subject: chaos\r\n\r\nbody\r\n"

func TestFaultsBecomeTemporaryFailures(t *testing.T) {
	for _, tt := range []struct {
		settings string
		reply    string // of the step the fault hits
		log      string
	}{
		{`panic = ["connect"]`, "421 4.3.0 Local error in processing; try again later", "msg=\"plugin panicked\" hook=connect plugin=chaos"},
		{`panic = ["rcpt"]`, "451 4.3.0 Local error in processing; try again later", "msg=\"plugin panicked\" hook=rcpt plugin=chaos"},
		{`fail = ["mail"]`, "451 4.3.0 Local error in processing; try again later", "msg=\"plugin error\" hook=mail plugin=chaos"},
		{`hang = ["data"]`, "451 4.3.0 Local error in processing; try again later", "msg=\"plugin outlived its deadline\" hook=data plugin=chaos"},
		{"sleep = [\"data_post\"]\ndelay = \"80ms\"", "451 4.3.0 Local error in processing; try again later", "msg=\"plugin outlived its deadline\" hook=data_post plugin=chaos"},
		{`panic = ["queue"]`, "451 4.3.0 Queueing failed; try again later", "msg=\"plugin panicked\" hook=queue plugin=chaos"},
		{`fail = ["queue_pre"]`, "452 4.3.0 Queueing temporarily refused", "msg=\"plugin error\" hook=queue_pre plugin=chaos"},
	} {
		t.Run(tt.settings, func(t *testing.T) {
			h, log := harness(t, tt.settings)
			s := h.Connect("192.0.2.1")
			got := s.Greeting()
			if got.Positive() {
				got = s.Send("alice@example.org", []string{"bob@example.test"}, msg)
			}
			if got.String() != tt.reply {
				t.Fatalf("reply %q, want %q", got, tt.reply)
			}
			if n := len(h.Queued()); n != 0 {
				t.Fatalf("%d messages queued despite the fault", n)
			}
			if !strings.Contains(log.String(), tt.log) {
				t.Fatalf("log lacks %q:\n%s", tt.log, log)
			}
			if strings.Contains(tt.log, "panicked") && !strings.Contains(log.String(), "plugins/chaos.(*Plugin).fire") {
				t.Fatalf("panic logged without the plugin's stack:\n%s", log)
			}
		})
	}
}

func TestSilentHooksOnlyLog(t *testing.T) {
	h, log := harness(t, `panic = ["queue_post", "reset_transaction", "disconnect"]`)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "Ok: queued as")
	s.Close()
	for _, hook := range []string{"queue_post", "reset_transaction", "disconnect"} {
		if !strings.Contains(log.String(), "msg=\"plugin panicked\" hook="+hook+" plugin=chaos") {
			t.Errorf("no panic logged at %s:\n%s", hook, log)
		}
	}
	if n := len(h.Queued()); n != 1 {
		t.Fatalf("queued %d, want 1", n)
	}
}

func TestNoFaultDeclines(t *testing.T) {
	h, log := harness(t, `panic = ["vrfy"]`)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Greeting(), 220)
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)
	if log.String() != "" {
		t.Fatalf("chaos logged without a fault:\n%s", log)
	}
}

// TestProbability: with probability 0.5 some of 200 messages are deferred
// and some queued; every 250 is one queued message.
func TestProbability(t *testing.T) {
	h, _ := harness(t, "fail = [\"queue\"]\nprobability = 0.5")
	s := h.Connect("192.0.2.1")
	ok, deferred := 0, 0
	for range 200 {
		switch rep := s.Send("alice@example.org", []string{"bob@example.test"}, msg); rep.Code {
		case 250:
			ok++
		case 451:
			deferred++
		default:
			t.Fatalf("reply %q", rep)
		}
	}
	if ok == 0 || deferred == 0 || len(h.Queued()) != ok {
		t.Fatalf("%d queued, %d deferred, recorder holds %d", ok, deferred, len(h.Queued()))
	}
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`panic = ["auth"]`, `panic: unknown hook "auth": want one of connect, helo`},
		{`hang = ["rcpt "]`, `hang: unknown hook "rcpt "`},
		{"panic = [\"rcpt\"]\nfail = [\"rcpt\"]", `fail: hook "rcpt" is already in another list`},
		{`fail = ["disconnect"]`, `fail: hook "disconnect" has no reply to fail`},
		{`delay = "soon"`, `delay = "soon": want a duration`},
		{`probability = 0.0`, `probability = 0: want a number above 0 and at most 1`},
		{`probability = 1.5`, `probability = 1.5: want a number above 0`},
		{`rate = 1`, `unknown key "rate"`},
	} {
		hookstest.ExpectBuildError(t, "chaos", tt.settings, tt.want)
	}
}

func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "chaos", "README.md")
}
