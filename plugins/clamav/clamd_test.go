package clamav_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// The package's tests share one real clamd (Debian's clamav-daemon),
// started by scannertest with a private configuration and a database
// that finds EICAR.
var clamd struct {
	socket string
	tcp    string
	err    error
}

// eicar is the EICAR anti-virus test file.
const eicar = scannertest.EICAR

// streamMax is the StreamMaxLength the test gives clamd.
const streamMax = 64 << 10

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-clamd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, err := scannertest.StartClamd(dir, streamMax)
	if err != nil {
		clamd.err = err
	} else {
		clamd.socket, clamd.tcp = d.Socket, d.Addr
	}
	code := m.Run()
	if d != nil {
		d.Stop()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// needClamd fails the test when clamd did not start.
func needClamd(t testing.TB) {
	t.Helper()
	if clamd.err != nil {
		t.Fatal(clamd.err)
	}
}
