package scannertest

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok" // Harness's chain
	"github.com/sluice-mta/sluice/transaction"
)

// Harness is the chain a content filter's tests send through: the plugin
// registered as name, built from settings, then rcptok accepting
// example.test, then a queue recorder.
func Harness(t testing.TB, name, settings string) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin(name, hookstest.Build(t, name, settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
}

// BenchDataPost runs p's data_post over and over on one transaction
// holding msg (header and body), from a@example.org to b@example.test,
// on a connection from 192.0.2.1, and fails unless it declines. before,
// when not nil, runs before each call (to undo what the previous one
// wrote).
func BenchDataPost(b *testing.B, p hooks.DataPost, msg string, before func(*transaction.Transaction)) {
	b.Helper()
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:4000"))
	tx := transaction.New(b.TempDir(), 1<<20)
	defer tx.Close()
	tx.Sender, tx.Recipients = "a@example.org", []string{"b@example.test"}
	if err := tx.ReplaceMessage(strings.NewReader(msg), transaction.HeaderLimits{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if before != nil {
			before(tx)
		}
		if r := p.DataPost(context.Background(), c, tx); r.Code != hooks.Declined {
			b.Fatalf("result %+v", r)
		}
	}
}
