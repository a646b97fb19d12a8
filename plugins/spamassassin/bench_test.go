package spamassassin_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
	"github.com/sluice-mta/sluice/transaction"
)

// BenchmarkScan1KiB is one data_post scan of a 1 KiB ham message by the
// real spamd on loopback: spamd's own time plus the plugin's.
func BenchmarkScan1KiB(b *testing.B) {
	needSpamd(b)
	p := hookstest.Build(b, "spamassassin", `address = "`+spamd.addr+`"`).(hooks.DataPost)
	msg := "Subject: bench\r\n\r\n" + strings.Repeat("a clean line of text for the scanner to read.\r\n", 1024/48)
	scannertest.BenchDataPost(b, p, msg, func(tx *transaction.Transaction) { tx.Header.Del("X-Spam-Status") })
}
