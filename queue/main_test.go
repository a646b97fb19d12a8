package queue_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

// qqcheck is the path of the qmail-queue protocol checker built for this run.
var qqcheck string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "queue-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qqcheck, err = queuetest.BuildQQCheck(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// received is the trace field newTx prepends, as the core does.
const received = "Received: from client.example.test ([192.0.2.1])\r\n\tby mx.example.test (Sluice) with ESMTP id TEST; Fri, 02 Jan 2026 03:04:05 +0000\r\n"

// newTx builds a transaction as the core hands it to the queue: the header
// parsed, the body spooled (to a file once past spoolMemory bytes), the
// Received field prepended.
func newTx(t testing.TB, from string, to []string, msg string, spoolMemory int64) *transaction.Transaction {
	t.Helper()
	tx := transaction.New(t.TempDir(), spoolMemory)
	t.Cleanup(func() { tx.Close() })
	tx.Sender, tx.Recipients = from, to
	br := bufio.NewReader(strings.NewReader(msg))
	if err := tx.ReadHeader(br, transaction.HeaderLimits{}); err != nil {
		t.Fatalf("read header: %v", err)
	}
	if _, err := io.Copy(tx.Body, br); err != nil {
		t.Fatal(err)
	}
	tx.Header.Prepend("Received", strings.TrimSuffix(strings.TrimPrefix(received, "Received: "), "\r\n"))
	return tx
}

// wantMessage is what every handoff must deliver for msg: the Received
// field, then the message byte for byte.
func wantMessage(msg string) string { return received + msg }

// testMessage has a dot-leading line, a bare-LF-free CRLF body and no
// trailing newline quirks.
const testMessage = "From: <a@example.org>\r\nSubject: hi\r\n\tfolded\r\n\r\nbody line 1\r\n.leading dot\r\n\r\nlast line\r\n"

// bigMessage returns a message of about n bytes with distinct lines.
func bigMessage(n int) string {
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %07d: the quick brown fox jumps over the lazy dog\r\n", i)
	}
	return b.String()
}
