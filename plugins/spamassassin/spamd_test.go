package spamassassin_test

import (
	"os"
	"testing"

	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// The package's tests share one real spamd (Debian's spamd), started by
// scannertest on loopback with Bayes and every network test off.
var spamd struct {
	addr string
	err  error
}

func TestMain(m *testing.M) {
	d, err := scannertest.StartSpamd()
	if err != nil {
		spamd.err = err
	} else {
		spamd.addr = d.Addr
	}
	code := m.Run()
	if d != nil {
		d.Stop()
	}
	os.Exit(code)
}

func needSpamd(t testing.TB) {
	t.Helper()
	if spamd.err != nil {
		t.Fatal(spamd.err)
	}
}
