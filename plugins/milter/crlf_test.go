package milter

import (
	"io"
	"testing"
)

// A replaced body comes in chunks, which may split a CRLF: each chunk's LF
// gets a CR unless one is before it, in this chunk or at the end of the
// last.
func TestLFToCRLFAcrossChunks(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\nb\n"}, "a\r\nb\r\n"},
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n"},
		{[]string{"a\r", "\nb\n"}, "a\r\nb\r\n"},
		{[]string{"a\n", "\nb"}, "a\r\n\r\nb"},
		{[]string{"a\r", "", "\n"}, "a\r\n"}, // an empty chunk changes nothing
	} {
		var body crlfChunks
		for _, c := range tc.chunks {
			body.add([]byte(c))
		}
		got, err := io.ReadAll(io.MultiReader(body.readers...))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%q: %q; want %q", tc.chunks, got, tc.want)
		}
	}
}
