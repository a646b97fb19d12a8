package queue

import (
	"bufio"
	"bytes"
	"testing"
)

func TestRemoteID(t *testing.T) {
	for text, want := range map[string]string{
		"2.0.0 Ok: queued as 4Xyz12AbC":        "4Xyz12AbC",
		"Ok: queued as 4dZ3Kx0Qm9z7":           "4dZ3Kx0Qm9z7",
		"2.0.0 OK id=1abc queued as <ABC123>":  "ABC123",
		"2.0.0 Message queued as 12345.":       "12345",
		"2.0.0 OK: queued":                     "",
		"2.6.0 <x@y> Queued mail for delivery": "",
	} {
		if got := remoteID(text); got != want {
			t.Errorf("remoteID(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestLFWriter(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\r\nb\r\n"}, "a\nb\n"},
		{[]string{"a\r", "\nb\r", "\n"}, "a\nb\n"},
		{[]string{"lone\rcr\r\n"}, "lone\rcr\n"},
		{[]string{"ends with cr\r"}, "ends with cr\r"},
		{[]string{"cr\r", "x"}, "cr\rx"},
		{[]string{"\r\r\n"}, "\r\n"},
		{[]string{"lf only\n"}, "lf only\n"},
	} {
		var b bytes.Buffer
		w := &lfWriter{w: bufio.NewWriter(&b)}
		for _, c := range tc.chunks {
			if n, err := w.Write([]byte(c)); n != len(c) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", c, n, err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.chunks, b.String(), tc.want)
		}
	}
}
