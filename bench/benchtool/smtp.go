package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// client is one SMTP connection that sends without pipelining, as
// smtp-source does.
type client struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer
}

func dial(addr string, deadline time.Time) (*client, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(deadline)
	c := &client{nc: nc, r: bufio.NewReaderSize(nc, 4<<10), w: bufio.NewWriterSize(nc, 32<<10)}
	if err := c.reply(220); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := c.cmd("EHLO bench.client.test", 250); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// reply reads one reply, skipping continuation lines, and checks its code.
func (c *client) reply(want int) error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 || line[0] < '0' || line[0] > '9' {
			return fmt.Errorf("malformed reply %q", line)
		}
		if line[3] == '-' {
			continue
		}
		code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
		if code != want {
			return fmt.Errorf("got %q, want %d", line, want)
		}
		return nil
	}
}

func (c *client) cmd(line string, want int) error {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.reply(want)
}

// send runs one transaction; body is the message with its final dot line.
func (c *client) send(from, to string, body []byte) error {
	if err := c.cmd("MAIL FROM:<"+from+">", 250); err != nil {
		return err
	}
	if err := c.cmd("RCPT TO:<"+to+">", 250); err != nil {
		return err
	}
	if err := c.cmd("DATA", 354); err != nil {
		return err
	}
	c.w.Write(body)
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.reply(250)
}

func (c *client) quit() {
	c.cmd("QUIT", 221)
	c.nc.Close()
}

// message builds a message of about size bytes (header plus body lines of
// 80 bytes), terminated by the final dot line.
func message(size int) []byte {
	b := []byte("From: <a@example.com>\r\nTo: <b@example.com>\r\nDate: Sun, 6 Dec 2026 01:00:00 +0000\r\nSubject: benchtool\r\n\r\n")
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n")
	for n := 0; n < size; n += len(line) {
		b = append(b, line...)
	}
	return append(b, ".\r\n"...)
}

func cmdLat(args []string) error {
	fs := flag.NewFlagSet("lat", flag.ExitOnError)
	addr := fs.String("addr", "", "server address (loopback)")
	total := fs.Int("n", 1000, "messages in all")
	sessions := fs.Int("c", 20, "parallel sessions")
	size := fs.Int("size", 1024, "body bytes")
	perConn := fs.Int("per-conn", 0, "messages per connection, then QUIT (0: one connection per session for the whole run)")
	timeout := fs.Duration("timeout", 30*time.Second, "stop after this long")
	from := fs.String("from", "a@example.com", "sender")
	to := fs.String("to", "b@example.com", "recipient")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	if *total < 1 || *total > 5_000_000 || *sessions < 1 || *sessions > 5000 {
		return errors.New("-n must be 1..5000000 and -c 1..5000")
	}
	body := message(*size)
	deadline := time.Now().Add(*timeout)
	var next, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	lat := make([][]time.Duration, *sessions)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range *sessions {
		wg.Go(func() {
			var c *client
			sent := 0
			defer func() {
				if c != nil {
					c.quit()
				}
			}()
			for next.Add(1) <= int64(*total) && time.Now().Before(deadline) && failed.Load() < 50 {
				t0 := time.Now()
				var err error
				if c == nil {
					c, err = dial(*addr, deadline)
					sent = 0
				}
				if err == nil {
					err = c.send(*from, *to, body)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					if c != nil {
						c.nc.Close()
						c = nil
					}
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
				if sent++; *perConn > 0 && sent >= *perConn {
					c.quit()
					c = nil
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	q := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := min(len(all)-1, int(p*float64(len(all))))
		return float64(all[i]) / float64(time.Millisecond)
	}
	fmt.Printf("lat ok=%d failed=%d secs=%.3f msgs_per_s=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
		len(all), failed.Load(), secs, float64(len(all))/secs, q(0.50), q(0.90), q(0.99), q(1))
	if firstErr != nil {
		return fmt.Errorf("%d failed; first: %v", failed.Load(), firstErr)
	}
	if len(all) < *total {
		return fmt.Errorf("only %d of %d messages in %v", len(all), *total, *timeout)
	}
	return nil
}

func cmdIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "server address (loopback)")
	pid := fs.Int("pid", 0, "the server's pid, for its RSS")
	n := fs.Int("n", 10000, "idle connections to hold")
	parallel := fs.Int("parallel", 64, "connections opened at once")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	if *n < 1 || *n > 60000 {
		return errors.New("-n must be 1..60000")
	}
	deadline := time.Now().Add(*timeout)
	rss0 := rssKB(*pid)
	conns := make([]net.Conn, *n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	for range *parallel {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) || time.Now().After(deadline) {
					return
				}
				c, err := greet(*addr, deadline)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	opened := time.Since(t0)
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d connections got no greeting; first: %v", f, *n, firstErr.Load())
	}
	// The server has answered every greeting; take the highest of a few
	// readings, as the runtime may still be returning or taking memory.
	var rss int64
	for range 5 {
		rss = max(rss, rssKB(*pid))
		time.Sleep(100 * time.Millisecond)
	}
	// The next client, while all of them stay connected.
	var worst, first time.Duration
	for i := range 5 {
		s := time.Now()
		c, err := greet(*addr, time.Now().Add(5*time.Second))
		if err != nil {
			return fmt.Errorf("client %d: %v", *n+1+i, err)
		}
		d := time.Since(s)
		c.Close()
		if i == 0 {
			first = d
		}
		worst = max(worst, d)
	}
	fmt.Printf("idle conns=%d open_secs=%.2f rss_before_kb=%d rss_kb=%d per_conn_kb=%.1f next_greet_ms=%.2f worst_of_5_ms=%.2f\n",
		*n, opened.Seconds(), rss0, rss, float64(rss-rss0)/float64(*n),
		float64(first)/float64(time.Millisecond), float64(worst)/float64(time.Millisecond))
	return nil
}

// greet connects and reads the whole 220 greeting.
func greet(addr string, deadline time.Time) (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	nc.SetReadDeadline(deadline)
	c := &client{nc: nc, r: bufio.NewReaderSize(nc, 512)}
	if err := c.reply(220); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetReadDeadline(time.Time{})
	return nc, nil
}

func cmdBig(args []string) error {
	fs := flag.NewFlagSet("big", flag.ExitOnError)
	addr := fs.String("addr", "", "server address (loopback)")
	pid := fs.Int("pid", 0, "the server's pid, for its RSS")
	size := fs.Int64("size", 100<<20, "message bytes")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	if *size < 1 || *size > 4<<30 {
		return errors.New("-size must be 1..4GiB")
	}
	deadline := time.Now().Add(*timeout)
	c, err := dial(*addr, deadline)
	if err != nil {
		return err
	}
	defer c.nc.Close()
	rss0 := rssKB(*pid)
	var peak atomic.Int64
	peak.Store(rss0)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if r := rssKB(*pid); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	t0 := time.Now()
	err = func() error {
		if err := c.cmd("MAIL FROM:<a@example.com> SIZE="+fmt.Sprint(*size+200), 250); err != nil {
			return err
		}
		if err := c.cmd("RCPT TO:<b@example.com>", 250); err != nil {
			return err
		}
		if err := c.cmd("DATA", 354); err != nil {
			return err
		}
		c.w.WriteString("Subject: one big message\r\n\r\n")
		if _, err := io.Copy(c.w, io.LimitReader(&lines{}, *size)); err != nil {
			return err
		}
		c.w.WriteString("\r\n.\r\n")
		if err := c.w.Flush(); err != nil {
			return err
		}
		return c.reply(250)
	}()
	secs := time.Since(t0).Seconds()
	close(stop)
	<-sampled
	if err != nil {
		return err
	}
	c.quit()
	fmt.Printf("big size=%d secs=%.2f mib_per_s=%.0f rss_before_kb=%d rss_peak_kb=%d growth_kb=%d\n",
		*size, secs, float64(*size)/secs/(1<<20), rss0, peak.Load(), peak.Load()-rss0)
	return nil
}

// lines is an endless body of 80-byte CRLF lines.
type lines struct{ off int }

func (l *lines) Read(p []byte) (int, error) {
	const text = "The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOPQRSTU\r\n"
	n := 0
	for n < len(p) {
		c := copy(p[n:], text[l.off:])
		n += c
		l.off = (l.off + c) % len(text)
	}
	return n, nil
}
