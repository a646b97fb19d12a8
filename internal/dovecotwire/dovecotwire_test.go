package dovecotwire

import (
	"bufio"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.test": "alice@example.test",
		"a\tb":               "a\x01tb",
		"a\x01b\x00c\r\n":    "a\x011b\x010c\x01r\x01n",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestReadLineBounded(t *testing.T) {
	r := bufio.NewReaderSize(strings.NewReader("USER\t1\talice\nnext\n"), 16)
	if line, err := ReadLine(r); line != "USER\t1\talice" || err != nil {
		t.Fatalf("ReadLine = %q, %v", line, err)
	}
	long := bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", MaxLine+1)+"\n"), 4096)
	if _, err := ReadLine(long); err == nil {
		t.Fatal("a line past MaxLine was read")
	}
}
