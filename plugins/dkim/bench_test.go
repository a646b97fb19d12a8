package dkim_test

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/resolver/dnstest"
	"github.com/sluice-mta/sluice/transaction"
)

// BenchmarkVerify100KiB verifies a 100 KiB message with one RSA-2048
// signature, read from the spool, at data_post: the key lookup on the
// loopback DNS server, the body hash and the signature check. The spool
// is in memory (under spool_memory's default of 256 KiB, where such a
// message is) or a file.
func BenchmarkVerify100KiB(b *testing.B) {
	srv := dnstest.Start(b, keyRecord(b, "example.org", "rsa1", rsaKey()))
	p := hookstest.BuildAs[*dkim.Plugin](b, "dkim", srv.TOML())
	var body strings.Builder
	line := "All work and no play makes Jack a dull boy.\r\n"
	for body.Len() < 100<<10 {
		body.WriteString(line)
	}
	head, _, _ := strings.Cut(message, "\r\n\r\n")
	msg := sign(b, head+"\r\n\r\n"+body.String(), "example.org", "rsa1", rsaKey())

	for _, spool := range []struct {
		name   string
		memory int64
	}{{"memory", transaction.DefaultSpoolMemory}, {"file", 0}} {
		b.Run(spool.name, func(b *testing.B) {
			tx := transaction.New(b.TempDir(), spool.memory)
			defer tx.Close()
			r := bufio.NewReader(strings.NewReader(msg))
			if err := tx.ReadHeader(r, transaction.HeaderLimits{}); err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(tx.Body, r); err != nil {
				b.Fatal(err)
			}
			if tx.Body.InMemory() != (spool.memory > 0) {
				b.Fatalf("spool in memory: %v", tx.Body.InMemory())
			}
			ctx := context.Background()
			b.SetBytes(tx.MessageSize())
			b.ReportAllocs()
			for b.Loop() {
				if res := p.DataPost(ctx, nil, tx); res.Code != 0 {
					b.Fatalf("DataPost: %+v", res)
				}
				if got := dkim.NoteResults.Get(&tx.Notes); len(got) != 1 || got[0].Result != "pass" {
					b.Fatalf("note %+v; want one pass", got)
				}
			}
		})
	}
}
