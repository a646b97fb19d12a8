package execfilter_test

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

// BenchmarkCat1KiB runs /bin/cat as a rewriting filter on a 1 KiB
// message: the cost of starting a program per message, and of taking its
// output as the new message.
func BenchmarkCat1KiB(b *testing.B) {
	p := hookstest.Build(b, "execfilter", `command = ["/bin/cat"]`+"\nrewrite = true").(hooks.DataPost)
	msg := "Subject: bench\r\n\r\n" + strings.Repeat("a line of text for the filter to copy back out.\r\n", 1024/50)
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:4000"))
	tx := transaction.New(b.TempDir(), 1<<20)
	if err := tx.ReplaceMessage(strings.NewReader(msg), transaction.HeaderLimits{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := p.DataPost(context.Background(), c, tx); r.Code != hooks.Declined {
			b.Fatalf("result %+v", r)
		}
	}
}
