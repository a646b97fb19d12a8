package server_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/servertest"
	"github.com/sluice-mta/sluice/transaction"
)

// spoolQueue records each message's body and whether it was still in
// memory when queued.
type spoolQueue struct {
	mu       sync.Mutex
	bodies   []string
	inMemory []bool
}

func (q *spoolQueue) Queue(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	b, err := io.ReadAll(tx.Body.Reader())
	if err != nil {
		return hooks.Fail(err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.bodies = append(q.bodies, string(b))
	q.inMemory = append(q.inMemory, tx.Body.InMemory())
	return hooks.Accept("")
}

func (q *spoolQueue) got() ([]string, []bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.bodies...), append([]bool(nil), q.inMemory...)
}

// startOverload serves one listener "mx" with a server configured by
// mutate, a chain accepting every recipient and q as its queue.
func startOverload(t *testing.T, q *spoolQueue, mutate func(*server.Config)) *server.Server {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ch, err := hooks.NewChain([]hooks.Instance{{Name: "rcpt", Plugin: acceptRcpt{}}, {Name: "queue", Plugin: q}}, hooks.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{SpoolDir: t.TempDir(), Logger: log, Listeners: []server.ListenerConfig{{
		Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch,
		Limits: server.Limits{MaxMessageBytes: 64 << 10},
	}}}
	mutate(&cfg)
	srv := servertest.Serve(t, cfg)
	return srv
}

// waitFor polls cond every 5 ms for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func released(t *testing.T, srv *server.Server, after string) {
	t.Helper()
	waitFor(t, after+": the spool memory and the spooling place are given back", func() bool {
		return srv.SpoolMemory() == 0 && srv.Spooling() == 0
	})
}

const replyTooBusy = "421 4.7.0 Too many messages being received; try again later; closing connection"

func TestMaxSpoolingRefusesDATAAndBDATWith421(t *testing.T) {
	q := &spoolQueue{}
	srv := startOverload(t, q, func(c *server.Config) { c.MaxSpooling = 1 })
	addr := srv.Addr("mx").String()

	a := dial(t, addr)
	a.startData() // holds the one place
	if srv.Spooling() != 1 {
		t.Fatalf("Spooling = %d during a DATA; want 1", srv.Spooling())
	}

	b := dial(t, addr)
	b.expect("", "220 ")
	b.expect("EHLO b.example", "250")
	b.expect("MAIL FROM:<a@a.example>", "250")
	b.expect("RCPT TO:<b@b.example>", "250")
	if got := b.expect("DATA", "421"); got != replyTooBusy {
		t.Fatalf("DATA at the cap: got %q, want %q", got, replyTooBusy)
	}
	b.closed()

	c := dial(t, addr)
	c.expect("", "220 ")
	c.expect("EHLO c.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.send("BDAT 5 LAST\r\nhello")
	if got := c.reply(); got != replyTooBusy {
		t.Fatalf("BDAT at the cap: got %q, want %q", got, replyTooBusy)
	}
	c.closed()

	a.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	a.expect("", "250 ")
	released(t, srv, "a message queued")

	d := dial(t, addr)
	d.startData() // the place is free again
	d.send("Subject: y\r\n\r\nbody\r\n.\r\n")
	d.expect("", "250 ")
	if bodies, _ := q.got(); len(bodies) != 2 {
		t.Fatalf("%d messages queued; want 2", len(bodies))
	}
}

// A refused data hook or a refused DATA gives the place back.
func TestMaxSpoolingPlaceReturnedByEveryEnd(t *testing.T) {
	q := &spoolQueue{}
	srv := startOverload(t, q, func(c *server.Config) { c.MaxSpooling = 1 })
	addr := srv.Addr("mx").String()

	// The client goes away in the middle of the message.
	a := dial(t, addr)
	a.startData()
	a.send("Subject: x\r\n\r\npart")
	a.conn.Close()
	released(t, srv, "a client gone mid-DATA")

	// A message past the size limit (552).
	b := dial(t, addr)
	b.startData()
	b.send("Subject: x\r\n\r\n" + strings.Repeat("y", 70<<10) + "\r\n.\r\n")
	b.expect("", "552 5.3.4")
	released(t, srv, "a message too big")

	// A BDAT sequence interrupted by another command.
	c := dial(t, addr)
	c.expect("", "220 ")
	c.expect("EHLO c.example", "250")
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.send("BDAT 4\r\nab\r\n")
	c.expect("", "250 2.0.0 4 octets received")
	c.expect("RSET", "250")
	released(t, srv, "a BDAT sequence ended by RSET")

	// Every end: a new message still gets its place.
	c.expect("MAIL FROM:<a@a.example>", "250")
	c.expect("RCPT TO:<b@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: z\r\n\r\nok\r\n.\r\n")
	c.expect("", "250 ")
	released(t, srv, "a message queued")
}

func TestSpoolMemoryBudgetSpillsAndIsReleased(t *testing.T) {
	q := &spoolQueue{}
	srv := startOverload(t, q, func(c *server.Config) {
		c.SpoolMemoryBudget = 1000
		c.Listeners[0].Limits.SpoolMemory = 1 << 20
	})
	addr := srv.Addr("mx").String()
	chunk := strings.Repeat("a", 78) + "\r\n" // 80 bytes

	// a holds 800 bytes of body in memory, mid-message.
	a := dial(t, addr)
	a.startData()
	a.send("Subject: a\r\n\r\n" + strings.Repeat(chunk, 10))
	waitFor(t, "800 bytes of a's body counted", func() bool { return srv.SpoolMemory() == 800 })

	// b's 400 bytes do not fit beside them: b spools to a file, intact.
	b := dial(t, addr)
	b.startData()
	b.send("Subject: b\r\n\r\n" + strings.Repeat(chunk, 5) + ".\r\n")
	b.expect("", "250 ")
	bodies, inMemory := q.got()
	if len(bodies) != 1 || bodies[0] != strings.Repeat(chunk, 5) || inMemory[0] {
		t.Fatalf("b's message: %d queued, in memory %v, body ok %v; want 1, false, true", len(bodies), inMemory, len(bodies) == 1 && bodies[0] == strings.Repeat(chunk, 5))
	}
	if srv.SpoolMemory() != 800 {
		t.Fatalf("after b: SpoolMemory = %d; want a's 800", srv.SpoolMemory())
	}

	// a ends its message: in memory, and everything is given back.
	a.send(".\r\n")
	a.expect("", "250 ")
	released(t, srv, "a's message queued")
	bodies, inMemory = q.got()
	if len(bodies) != 2 || bodies[1] != strings.Repeat(chunk, 10) || !inMemory[1] {
		t.Fatalf("a's message: in memory %v; want its body kept in memory within the budget", inMemory)
	}

	// A client that goes away mid-message gives its bytes back.
	c := dial(t, addr)
	c.startData()
	c.send("Subject: c\r\n\r\n" + strings.Repeat(chunk, 3))
	waitFor(t, "240 bytes of c's body counted", func() bool { return srv.SpoolMemory() == 240 })
	c.conn.Close()
	released(t, srv, "a client gone mid-DATA")

	// So does a message refused for its size, and a connection closed
	// at shutdown is covered by the same Reset.
	d := dial(t, addr)
	d.startData()
	d.send("Subject: d\r\n\r\n" + strings.Repeat(chunk, 900) + ".\r\n")
	d.expect("", "552 5.3.4")
	released(t, srv, "a message too big")
}

// TestMaxConnectionsHoldsForConnectionsAdmittedAtOnce: connections admitted
// at the same moment (a PROXY listener admits each on its own goroutine,
// ServeConn may be called from many) never get past MaxConnections.
func TestMaxConnectionsHoldsForConnectionsAdmittedAtOnce(t *testing.T) {
	const max, clients = 3, 40
	ts := start(t, func(l *server.ListenerConfig) { l.MaxConnections, l.MaxConnectionsPerIP = max, clients })
	var ready sync.WaitGroup
	ready.Add(1)
	greeted := make(chan bool, clients)
	for i := range clients {
		cs, ss := net.Pipe()
		t.Cleanup(func() { cs.Close() })
		go func() {
			ready.Wait()
			remote := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 25)
			ts.srv.ServeConn("mx", ss, server.ClientInfo{Remote: remote})
		}()
		go func() {
			line, _ := bufio.NewReader(cs).ReadString('\n')
			greeted <- strings.HasPrefix(line, "220 ")
		}()
	}
	ready.Done()
	n := 0
	for range clients {
		if <-greeted {
			n++
		}
	}
	if n != max {
		t.Fatalf("%d of %d clients admitted at once were greeted, want MaxConnections = %d", n, clients, max)
	}
}
