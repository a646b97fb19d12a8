package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/transaction"
)

// heldMail holds the mail hook until release is closed.
type heldMail struct{ entered, release chan struct{} }

func (h *heldMail) Mail(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	close(h.entered)
	<-h.release
	return hooks.Result{}
}

// TestShutdownLetsATransactionOpenedDuringItFinish: a client whose MAIL
// is being processed when Shutdown starts has a transaction in progress,
// and Shutdown lets it finish. Shutdown's wakeIdle found the connection
// not busy and set its read deadline to now; the loop must replace it,
// not keep it as a deadline barely earlier than its own (it answered
// "421 Timeout waiting for a command").
func TestShutdownLetsATransactionOpenedDuringItFinish(t *testing.T) {
	h := &heldMail{entered: make(chan struct{}), release: make(chan struct{})}
	ts := start(t, nil, hooks.Instance{Name: "held", Plugin: h})
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.send("MAIL FROM:<a@a.example>\r\n")
	<-h.entered
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond) // a few wakeIdle ticks while MAIL runs
	close(h.release)
	c.expect("", "250 2.1.0")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestMinDataRateLetsAnHonestClientFinish: a client sending at twice the
// minimum data rate is never cut off: the rate's deadline moves with every
// read, even by less than the idle deadline's step (a 64th of
// ReadTimeout, 1 s here, more than the 300 ms grace).
func TestMinDataRateLetsAnHonestClientFinish(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) {
		l.ReadTimeout = 64 * time.Second
		l.MinDataRate = 1000
		l.MinDataRateGrace = 300 * time.Millisecond
	})
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: slow\r\n\r\n")
	line := strings.Repeat("x", 98) + "\r\n" // 100 bytes every 50ms: 2000 B/s
	for i := 0; i < 30; i++ {
		time.Sleep(50 * time.Millisecond)
		c.send(line)
	}
	c.send(".\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
}
