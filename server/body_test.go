package server_test

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server"
)

// The message body reaches the queue byte for byte (dot-stuffing undone)
// however the client's writes split it: one byte at a time, at random
// points, with the final dot and pipelined commands in the same write.
func TestBodyAcrossWriteBoundaries(t *testing.T) {
	body := "Subject: split\r\n\r\n" +
		"..stuffed\r\n" +
		".\r\n"[:1] + "x\r\n" + // ".x": a stuffed dot before x
		"...\r\n" +
		strings.Repeat("a long line of text ", 300) + "\r\n" +
		"\r\n" +
		"last\r\n"
	want := "Subject: split\r\n\r\n.stuffed\r\nx\r\n..\r\n" + strings.Repeat("a long line of text ", 300) + "\r\n\r\nlast\r\n"
	wire := body + ".\r\n"

	ts := start(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	for round, split := range []func(int) int{
		func(int) int { return 1 },
		func(left int) int { return 1 + rng.IntN(min(left, 7)) },
		func(left int) int { return 1 + rng.IntN(min(left, 3000)) },
		func(left int) int { return left },
	} {
		c := dial(t, ts.addr)
		c.startData()
		rest := wire
		for len(rest) > 0 {
			n := split(len(rest))
			c.send(rest[:n])
			rest = rest[n:]
		}
		c.expect("", "250 2.0.0 Ok: queued")
		c.expect("QUIT", "221")
		msgs := ts.queue.Messages()
		if len(msgs) != round+1 {
			t.Fatalf("round %d: %d messages queued", round, len(msgs))
		}
		got := string(msgs[round].Data)
		if i := strings.Index(got, "Subject: split"); i < 0 || got[i:] != want {
			t.Fatalf("round %d: queued\n%q\nwant it to end with\n%q", round, got, want)
		}
	}
}

// The final dot split as ".", "\r", "\n" over three writes ends the message.
// (Writes are separate segments with TCP_NODELAY; the server usually reads
// them apart.)
func TestBodyFinalDotSplit(t *testing.T) {
	ts := start(t, nil)
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: x\r\n\r\nbody\r\n")
	for _, part := range []string{".", "\r", "\n"} {
		c.send(part)
	}
	c.expect("", "250 2.0.0 Ok: queued")
	if m := ts.queue.Messages(); len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\nbody\r\n") {
		t.Fatalf("queued %q", m)
	}
}

// After Session stops reading early (the size limit), the rest of the
// message is read and dropped, and the next transaction on the same
// connection works, even when its commands came in the same write as the
// end of the refused message.
func TestBodyDrainedAfterAnEarlyReply(t *testing.T) {
	ts := start(t, func(lc *server.ListenerConfig) { lc.Limits.MaxMessageBytes = 2000 })
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 5000) + "..\r\n.\r\nMAIL FROM:<c@a.example>\r\n")
	c.expect("", "552 5.3.4")
	c.expect("", "250 2.1.0")
	c.expect("RCPT TO:<d@b.example>", "250")
	c.expect("DATA", "354")
	c.send("Subject: small\r\n\r\nok\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	if m := ts.queue.Messages(); len(m) != 1 || !strings.Contains(string(m[0].Data), "Subject: small") {
		t.Fatalf("queued %d messages", len(m))
	}
}

// A bare LF, a bare CR, or a CR split from a following non-LF across
// writes gets 554 and the connection closes; nothing is queued.
func TestBodyBareNewlineRejected(t *testing.T) {
	ts := start(t, nil)
	for _, parts := range [][]string{
		{"Subject: x\r\n\r\nbare\nlf\r\n.\r\n"},
		{"Subject: x\r\n\r\nbare\rcr\r\n.\r\n"},
		{"Subject: x\r\n\r\nsplit\r", "x\r\n.\r\n"},
		{"Subject: x\r\n\r\n.\n.\r\n"},
		{"Subject: x\r\n\r\n\n.\r\n"},
	} {
		c := dial(t, ts.addr)
		c.startData()
		for _, p := range parts {
			c.send(p)
		}
		c.expect("", "554 5.5.2")
		c.closed()
	}
	if n := len(ts.queue.Messages()); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
}

// The final dot in a write of its own, after the size limit's early
// reply: the drain reads it alone and the session goes on (it used to
// take the dot's io.EOF for a read error and close with 421).
func TestBodyFinalDotAloneAfterAnEarlyReply(t *testing.T) {
	ts := start(t, func(lc *server.ListenerConfig) { lc.Limits.MaxMessageBytes = 2000 })
	c := dial(t, ts.addr)
	c.startData()
	c.send("Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 500))
	time.Sleep(100 * time.Millisecond) // the server has read all of it
	c.send(".\r\n")
	c.expect("", "552 5.3.4")
	c.expect("NOOP", "250")
}

// A message of exactly the size limit is accepted under both bare-newline
// policies, by DATA and by BDAT, and a BDAT message without a final CRLF
// gets one. The size check reads one byte past the limit into a one-byte
// buffer: under normalize the DATA reader used to read nothing into it
// for ever (421), and BDAT dropped the CRLF it adds.
func TestMessageExactlyAtTheLimit(t *testing.T) {
	const msg = "Subject: x\r\n\r\nhello\r\n"
	for _, policy := range []server.BareNewline{server.BareNewlineReject, server.BareNewlineNormalize} {
		t.Run(string(policy)+"/DATA", func(t *testing.T) {
			ts := start(t, func(lc *server.ListenerConfig) {
				lc.BareNewline, lc.Limits.MaxMessageBytes = policy, int64(len(msg))
			})
			c := dial(t, ts.addr)
			c.startData()
			c.send(msg + ".\r\n")
			c.expect("", "250 2.0.0 Ok: queued")
			if m := ts.queue.Messages(); len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\n"+msg) {
				t.Fatalf("queued %q", m)
			}
		})
		t.Run(string(policy)+"/BDAT", func(t *testing.T) {
			const chunk = "Subject: x\r\n\r\nhello" // no final CRLF
			ts := start(t, func(lc *server.ListenerConfig) {
				lc.BareNewline, lc.Limits.MaxMessageBytes = policy, int64(len(chunk))
			})
			c := bdatStart(t, ts)
			c.send("BDAT " + strconv.Itoa(len(chunk)) + " LAST\r\n" + chunk)
			c.expect("", "250 2.0.0 Ok: queued")
			if m := ts.queue.Messages(); len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\n"+chunk+"\r\n") {
				t.Fatalf("queued %q; want it to end with the chunk and a CRLF", m)
			}
		})
	}
}

// TestBdatEndingInABareCRCountsTheClientsBytes: under normalize, a last
// chunk that ends in a bare CR gets its LF added, and only that LF is not
// the client's: a message one byte over the limit is refused, one exactly
// at it is queued with the CR made a line end.
func TestBdatEndingInABareCRCountsTheClientsBytes(t *testing.T) {
	const msg = "Subject: x\r\n\r\nhello\r" // ends in a bare CR
	for _, tc := range []struct {
		limit int
		reply string
	}{
		{len(msg) - 1, "552 5.3.4 Message size exceeds the limit of 19 bytes"},
		{len(msg), "250 2.0.0 Ok: queued"},
	} {
		ts := start(t, func(lc *server.ListenerConfig) {
			lc.BareNewline, lc.Limits.MaxMessageBytes = server.BareNewlineNormalize, int64(tc.limit)
		})
		c := bdatStart(t, ts)
		// Two chunks, so that the total, not one chunk's size, meets the limit.
		c.send("BDAT 10\r\n" + msg[:10] + "BDAT 10 LAST\r\n" + msg[10:])
		c.expect("", "250 2.0.0 10 octets received")
		c.expect("", tc.reply)
		m := ts.queue.Messages()
		if tc.reply[0] == '5' && len(m) != 0 || tc.reply[0] == '2' && (len(m) != 1 || !strings.HasSuffix(string(m[0].Data), "\r\nSubject: x\r\n\r\nhello\r\n")) {
			t.Fatalf("limit %d: queued %q", tc.limit, m)
		}
	}
}
