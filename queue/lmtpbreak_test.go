package queue_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/queue"
)

// lmtpBreaker is an LMTP server that takes the message, refuses the first
// recipient (452) and closes the connection before answering for the
// others: a crash or a timeout part-way through the per-recipient
// replies. A fake: no real LMTP server can be made to die on cue.
func lmtpBreaker(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		c.Write([]byte("220 lmtp.test LMTP\r\n"))
		inData := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if inData {
				if line == ".\r\n" {
					c.Write([]byte("452 4.2.2 Mailbox full\r\n"))
					return // no reply for the other recipients
				}
				continue
			}
			switch strings.ToUpper(strings.Fields(line + " x")[0]) {
			case "LHLO":
				c.Write([]byte("250-lmtp.test\r\n250 8BITMIME\r\n"))
			case "DATA":
				inData = true
				c.Write([]byte("354 go ahead\r\n"))
			default:
				c.Write([]byte("250 2.1.0 Ok\r\n"))
			}
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// TestLMTPConnectionLostAmidRepliesIsNoDelivery: when the connection
// breaks after the first recipient's reply, the recipients with no reply
// are not known to be delivered: Forward must not report them delivered
// (Routes.Settle would then answer 250 for them).
func TestLMTPConnectionLostAmidRepliesIsNoDelivery(t *testing.T) {
	addr := lmtpBreaker(t)
	rc, err := forward(t, &queue.Forwarder{Addr: addr, LMTP: true, ConnectTimeout: 5 * time.Second},
		[]string{"full@example.test", "b@example.test", "c@example.test"}, testMessage)
	checkForwardError(t, err, false, "")
	for _, o := range rc.Outcomes {
		if o.Delivered {
			t.Errorf("%s reported delivered without a reply: %+v", o.Rcpt, o)
		}
	}
	if err != nil && !strings.Contains(err.Error(), "possible duplicate") {
		t.Errorf("error %q does not warn of a possible duplicate", err)
	}
}
