package server

import (
	"testing"

	"github.com/sluice-mta/sluice/hooks"
)

func TestAppendReplyIsStringWithCRLF(t *testing.T) {
	for _, rep := range []hooks.Reply{
		{Code: 250, Enhanced: [3]int{2, 0, 0}, Msg: "Ok: queued as X"},
		{Code: 354, Msg: "End data with <CR><LF>.<CR><LF>"},
		{Code: 221},
		{Code: 550, Enhanced: [3]int{5, 7, 1}},
		{Code: 421, Enhanced: [3]int{4, 10, 12}, Msg: "a\tb"},
	} {
		if got, want := string(appendReply([]byte("x"), rep)), "x"+rep.String()+"\r\n"; got != want {
			t.Errorf("appendReply(%+v) = %q, want %q", rep, got, want)
		}
	}
}
