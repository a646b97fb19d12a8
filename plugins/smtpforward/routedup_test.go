package smtpforward_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/smtpforward"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

// refusingQueue is a route that refuses everything for now.
type refusingQueue struct{}

func (refusingQueue) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return hooks.Result{Code: hooks.DenySoft, Err: errors.New("bounce route down")}
}

// TestBounceRouteFailureNamesTheFallbackCopiesAsDuplicates: the fallback
// took the recipient refused for now, then the bounce route failed, so
// the client retries the whole message: the log must name that
// recipient among the possible duplicates too, not only the one the
// downstream delivered.
func TestBounceRouteFailureNamesTheFallbackCopiesAsDuplicates(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{RcptErr: map[string]*smtp.SMTPError{
		"nobody@example.test": userUnknown, "full@example.test": mailboxFull,
	}})
	fallback := &hookstest.QueueRecorder{}
	p := hookstest.BuildAs[*smtpforward.Plugin](t, "smtpforward", `host = "`+d.Addr+`"`+"\nfallback_queue = \"retry\"\ndsn_queue = \"bounces\"")
	if err := p.SetRoutes(map[string]hooks.Queue{"retry": fallback, "bounces": refusingQueue{}}); err != nil {
		t.Fatal(err)
	}
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("smtpforward", p))
	logs := &hookstest.LogBuffer{}
	h.Logger = logs.Logger()
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"alice@example.test", "nobody@example.test", "full@example.test"}, body)
	hookstest.Expect(t, rep, 451)
	if n := len(fallback.Messages()); n != 1 {
		t.Fatalf("fallback got %d messages, want 1", n)
	}
	if !strings.Contains(logs.String(), "<alice@example.test>, <full@example.test> will get the message again (possible duplicate)") {
		t.Errorf("log does not name both copies as possible duplicates:\n%s", logs.String())
	}
}
