package rspamd_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// The package's tests share one real rspamd (Debian's rspamd), started by
// scannertest on loopback with a private configuration: its own
// directories, no Redis, and its DNS pointed at a loopback server that
// answers NXDOMAIN to everything.
var daemon struct {
	url string
	err error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-rspamd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, err := scannertest.StartRspamd(dir)
	if err != nil {
		daemon.err = err
	} else {
		daemon.url = "http://" + d.Addr
	}
	code := m.Run()
	if d != nil {
		d.Stop()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func needRspamd(t testing.TB) {
	t.Helper()
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
}
