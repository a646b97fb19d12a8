package smtpforward_test

import (
	"bufio"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
)

// rcptBreaker is a downstream that accepts MAIL and the first RCPT, then
// drops the connection at the second RCPT, and counts DATA commands. A
// fake: no real server can be made to break at one command on cue.
func rcptBreaker(t *testing.T) (addr string, datas *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	datas = &atomic.Int32{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			serveRcptBreaker(c, datas)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String(), datas
}

func serveRcptBreaker(c net.Conn, datas *atomic.Int32) {
	defer c.Close()
	r := bufio.NewReader(c)
	c.Write([]byte("220 downstream.test ESMTP\r\n"))
	rcpts := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
		case "EHLO":
			c.Write([]byte("250-downstream.test\r\n250 8BITMIME\r\n"))
		case "RCPT":
			if rcpts++; rcpts > 1 {
				return // the connection breaks
			}
			c.Write([]byte("250 2.1.5 Ok\r\n"))
		case "DATA":
			datas.Add(1)
			c.Write([]byte("554 5.5.1 Error: no valid recipients\r\n"))
		case "QUIT":
			c.Write([]byte("221 Bye\r\n"))
			return
		default:
			c.Write([]byte("250 Ok\r\n"))
		}
	}
}

// TestConnectionLostAtRcptDefers: the downstream took the first RCPT and
// the connection broke at the second, before any message was sent. The
// client must be told to retry (451), not 250 for a message nobody has.
func TestConnectionLostAtRcptDefers(t *testing.T) {
	addr, datas := rcptBreaker(t)
	for _, routes := range []bool{false, true} {
		h, fallback, bounces, _ := withRoutes(t, `host = "`+addr+`"`+"\nconnect_timeout = \"5s\"", routes)
		rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"alice@example.test", "bob@example.test"}, body)
		hookstest.Expect(t, rep, 451)
		if n := datas.Load(); n != 0 {
			t.Errorf("routes %v: the downstream got DATA %d times", routes, n)
		}
		if n := len(fallback.Messages()) + len(bounces.Messages()); n != 0 {
			t.Errorf("routes %v: the routes got %d messages", routes, n)
		}
	}
}
