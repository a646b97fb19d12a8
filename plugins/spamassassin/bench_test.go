package spamassassin_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/transaction"
)

// BenchmarkScan1KiB is one data_post scan of a 1 KiB ham message by the
// real spamd on loopback: spamd's own time plus the plugin's.
func BenchmarkScan1KiB(b *testing.B) {
	needSpamd(b)
	p := hookstest.Build(b, "spamassassin", `address = "`+spamd.addr+`"`).(hooks.DataPost)
	msg := "Subject: bench\r\n\r\n" + strings.Repeat("a clean line of text for the scanner to read.\r\n", 1024/48)
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:4000"))
	tx := transaction.New(b.TempDir(), 1<<20)
	if err := tx.ReplaceMessage(strings.NewReader(msg), transaction.HeaderLimits{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		tx.Header.Del("X-Spam-Status")
		if r := p.DataPost(context.Background(), c, tx); r.Code != hooks.Declined {
			b.Fatalf("result %+v", r)
		}
	}
}
