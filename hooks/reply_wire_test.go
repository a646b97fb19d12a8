package hooks_test

import (
	"testing"

	"github.com/sluice-mta/sluice/hooks"
)

func TestAppendWireIsStringWithCRLF(t *testing.T) {
	for _, rep := range []hooks.Reply{
		{Code: 250, Enhanced: [3]int{2, 0, 0}, Msg: "Ok: queued as X"},
		{Code: 354, Msg: "End data with <CR><LF>.<CR><LF>"},
		{Code: 221},
		{Code: 550, Enhanced: [3]int{5, 7, 1}},
		{Code: 421, Enhanced: [3]int{4, 10, 12}, Msg: "a\tb"},
	} {
		if got, want := string(rep.AppendWire([]byte("x"))), "x"+rep.String()+"\r\n"; got != want {
			t.Errorf("AppendWire(%+v) = %q, want %q", rep, got, want)
		}
	}
}

// A Msg of several lines is a multi-line reply: every line gets the code
// and the enhanced code, "-" on all lines but the last.
func TestAppendWireMultiLine(t *testing.T) {
	rep := hooks.Reply{Code: 250, Msg: "mx.example.test\nPIPELINING\nSIZE 1000"}
	if got, want := string(rep.AppendWire(nil)), "250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"; got != want {
		t.Errorf("AppendWire = %q, want %q", got, want)
	}
	rep = hooks.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "first\nsecond"}
	if got, want := string(rep.AppendWire(nil)), "550-5.7.1 first\r\n550 5.7.1 second\r\n"; got != want {
		t.Errorf("AppendWire = %q, want %q", got, want)
	}
}
