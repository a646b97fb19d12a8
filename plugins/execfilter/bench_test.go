package execfilter_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// BenchmarkCat1KiB runs /bin/cat as a rewriting filter on a 1 KiB
// message: the cost of starting a program per message, and of taking its
// output as the new message.
func BenchmarkCat1KiB(b *testing.B) {
	p := hookstest.Build(b, "execfilter", `command = ["/bin/cat"]`+"\nrewrite = true").(hooks.DataPost)
	msg := "Subject: bench\r\n\r\n" + strings.Repeat("a line of text for the filter to copy back out.\r\n", 1024/50)
	scannertest.BenchDataPost(b, p, msg, nil)
}
