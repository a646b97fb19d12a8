package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/servertest"
	"github.com/sluice-mta/sluice/transaction"
)

// dropQueue takes every message and keeps nothing, as plugins/discard.
type dropQueue struct{}

func (dropQueue) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return hooks.Result{Code: hooks.Done, Msg: "Ok: discarded"}
}

// BenchmarkServerLoopback drives the whole server, socket to queue hook,
// over loopback with 20 client sessions that do not pipeline (as
// smtp-source): one op is one message. Profile it with
//
//	go test -run '^$' -bench ServerLoopback -benchmem -cpuprofile cpu.out ./server/
//
// The figures include the in-process client's own work.
func BenchmarkServerLoopback(b *testing.B) {
	for _, bc := range []struct {
		name    string
		size    int
		perConn int // messages per connection; 0: the whole run
	}{
		{"1k-many", 1 << 10, 0},
		{"1k-one", 1 << 10, 1},
		{"100k-many", 100 << 10, 0},
		// The same with the operator's figures: a Recorder timing every
		// hook and plugin ("-recorder"), and with a Bus too, nobody
		// reading it ("-monitor").
		{"1k-many-recorder", 1 << 10, 0},
		{"1k-many-monitor", 1 << 10, 0},
		{"1k-one-monitor", 1 << 10, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			_, mode, _ := strings.Cut(strings.TrimPrefix(bc.name, "1k-"), "-")
			addr := benchServer(b, mode)
			msg := benchMessage(bc.size)
			const sessions = 20
			var wg sync.WaitGroup
			work := make(chan struct{}, b.N)
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for range sessions {
				wg.Go(func() {
					var c *benchClient
					sent := 0
					for range work {
						if c == nil {
							var err error
							if c, err = benchDial(addr); err != nil {
								b.Error(err)
								return
							}
						}
						if err := c.send(msg); err != nil {
							b.Error(err)
							return
						}
						if sent++; bc.perConn > 0 && sent == bc.perConn {
							c.quit()
							c, sent = nil, 0
						}
					}
					if c != nil {
						c.quit()
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// benchServer starts a server; mode "recorder" gives it a Recorder (also
// the chain's Meter), "monitor" a Recorder and a Bus.
func benchServer(b testing.TB, mode string) string {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var (
		rec   *monitor.Recorder
		bus   *monitor.Bus
		meter hooks.Meter
	)
	switch mode {
	case "monitor":
		bus = monitor.NewBus(1000)
		fallthrough
	case "recorder":
		rec = monitor.NewRecorder()
		meter = rec
	}
	ch, err := hooks.NewChain([]hooks.Instance{{Name: "rcpt", Plugin: acceptRcpt{}}, {Name: "queue", Plugin: dropQueue{}}},
		hooks.Options{Logger: log, Meter: meter})
	if err != nil {
		b.Fatal(err)
	}
	srv := servertest.Serve(b, server.Config{SpoolDir: b.TempDir(), Logger: log, Recorder: rec, Bus: bus, Listeners: []server.ListenerConfig{{
		Name: "mx", Address: "127.0.0.1:0", Hostname: "mx.example.test", Chain: ch,
		MaxConnections: 10000, MaxConnectionsPerIP: 10000,
		// The rate check runs for every connection (no loopback
		// exemption), with a limit no run reaches: its cost is measured.
		MaxConnectionRatePerIP: 1 << 30, ConnectionRateExceptions: []netip.Prefix{},
	}}})
	return srv.Addr("mx").String()
}

// benchMessage is a message of about size bytes with its final dot.
func benchMessage(size int) []byte {
	m := []byte("From: <a@example.org>\r\nTo: <b@example.test>\r\nSubject: bench\r\n\r\n")
	line := []byte("The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrst\r\n")
	for len(m) < size {
		m = append(m, line...)
	}
	return append(m, ".\r\n"...)
}

type benchClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func benchDial(addr string) (*benchClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &benchClient{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	if err := c.expect(220); err != nil {
		return nil, err
	}
	if err := c.cmd([]byte("EHLO client.example.test\r\n"), 250); err != nil {
		return nil, err
	}
	return c, nil
}

var (
	benchMail = []byte("MAIL FROM:<a@example.org>\r\n")
	benchRcpt = []byte("RCPT TO:<b@example.test>\r\n")
	benchData = []byte("DATA\r\n")
	benchQuit = []byte("QUIT\r\n")
)

func (c *benchClient) send(msg []byte) error {
	if err := c.cmd(benchMail, 250); err != nil {
		return err
	}
	if err := c.cmd(benchRcpt, 250); err != nil {
		return err
	}
	if err := c.cmd(benchData, 354); err != nil {
		return err
	}
	return c.cmd(msg, 250)
}

func (c *benchClient) quit() {
	c.cmd(benchQuit, 221)
	c.conn.Close()
}

func (c *benchClient) cmd(p []byte, want int) error {
	if _, err := c.conn.Write(p); err != nil {
		return err
	}
	return c.expect(want)
}

func (c *benchClient) expect(want int) error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 {
			return fmt.Errorf("short reply %q", line)
		}
		if line[3] == '-' {
			continue
		}
		if code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'); code != want {
			return fmt.Errorf("reply %q, want %d", line, want)
		}
		return nil
	}
}
