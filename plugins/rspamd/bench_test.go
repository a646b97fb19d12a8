package rspamd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

func bench(b *testing.B, url, msg string) {
	p := hookstest.Build(b, "rspamd", `url = "`+url+`"`+"\nstatus_header = \"\"").(hooks.DataPost)
	scannertest.BenchDataPost(b, p, msg, nil)
}

// BenchmarkProtocol1KiB is the plugin's own cost per 1 KiB message: the
// HTTP exchange with a stand-in that answers "no action" at once.
func BenchmarkProtocol1KiB(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"action":"no action","score":0.5,"required_score":15,"symbols":{"MIME_GOOD":{"score":-0.1}}}`)
	}))
	defer srv.Close()
	bench(b, srv.URL, "Subject: bench\r\nFrom: a@example.org\r\n\r\n"+strings.Repeat("a line of text for the scanner to read.\r\n", 1024/41))
}

// BenchmarkRspamdHam is one scan of the tests' ham message by the real
// rspamd: rspamd's own time plus the plugin's.
func BenchmarkRspamdHam(b *testing.B) {
	needRspamd(b)
	bench(b, daemon.url, ham)
}
