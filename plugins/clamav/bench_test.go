package clamav_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// BenchmarkScan1KiB is one data_post scan of a clean 1 KiB message by the
// real clamd, over its unix socket: clamd's own time plus the plugin's.
func BenchmarkScan1KiB(b *testing.B) {
	needClamd(b)
	p := hookstest.Build(b, "clamav", `address = "unix:`+clamd.socket+`"`+"\nheader = \"\"").(hooks.DataPost)
	msg := "Subject: bench\r\n\r\n" + strings.Repeat("a clean line of text for the scanner to read.\r\n", 1024/48)
	scannertest.BenchDataPost(b, p, msg, nil)
}
