package queue_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

// BenchmarkForwardToSMTPSink measures one store-and-forward handoff of a
// 1 KiB message to Postfix's smtp-sink: connect, EHLO, MAIL, RCPT, DATA,
// QUIT, one connection per message as smtpforward does.
func BenchmarkForwardToSMTPSink(b *testing.B) {
	addr := queuetest.SMTPSink(b)
	f := &queue.Forwarder{Addr: addr, Helo: "relay.example.test"}
	tx := newTx(b, "a@example.org", []string{"b@example.test"}, bigMessage(1<<10), 64<<10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Forward(context.Background(), tx, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWrite7Bit measures the conversion of a 1 MiB 8-bit text body
// to quoted-printable for a downstream without 8BITMIME.
func BenchmarkWrite7Bit(b *testing.B) {
	line := "Grüße aus Köln: 10 € pro Stück, für alle Größen gleich.\r\n"
	msg := "From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		strings.Repeat(line, (1<<20)/len(line))
	tx := newTx(b, "a@example.org", []string{"b@example.test"}, msg, 64<<10)
	b.SetBytes(tx.MessageSize())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := queue.Write7Bit(io.Discard, tx); err != nil {
			b.Fatal(err)
		}
	}
}
