package input_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/sluice-mta/sluice/server/input"
)

// srcModes are the ways the client's bytes reach a Buffer: all at once,
// one byte per read, half of what fits per read, and with the last bytes
// coming together with io.EOF.
var srcModes = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"whole", func(r io.Reader) io.Reader { return r }},
	{"onebyte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"dataerr", iotest.DataErrReader},
}

// readSizes are the sizes of the buffers the message readers are read
// with: 0 is io.ReadAll's growing buffer.
var readSizes = []int{0, 1, 2, 3, 7}

// readBy reads r to its end with buffers of size bytes (io.ReadAll for 0),
// as io.ReadAll does: io.EOF is the end, not an error. A reader that keeps
// returning nothing gets io.ErrNoProgress.
func readBy(r io.Reader, size int) ([]byte, error) {
	if size == 0 {
		return io.ReadAll(r)
	}
	var out []byte
	p := make([]byte, size)
	for empty := 0; empty < 100; {
		n, err := r.Read(p)
		if n > size {
			return out, fmt.Errorf("Read returned %d bytes into a buffer of %d", n, size)
		}
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			empty++
		} else {
			empty = 0
		}
	}
	return out, io.ErrNoProgress
}

// source is the input.Source the server's conn is, over a Buffer: More
// waits by peeking, and the end of the stream inside a message is
// io.ErrUnexpectedEOF.
type source struct {
	t  *testing.T
	in *input.Buffer
}

func (s source) Bytes() []byte { return s.in.Bytes() }

func (s source) More(have int) error {
	_, err := s.in.Peek(have + 1)
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (s source) Consume(n int) {
	if n < 0 || n > s.in.Buffered() {
		s.t.Errorf("Consume(%d) with %d bytes buffered", n, s.in.Buffered())
		n = max(0, min(n, s.in.Buffered()))
	}
	s.in.Discard(n)
}

// rest returns what is left to read from in: buffered and not yet read
// from its Src.
func rest(in *input.Buffer) (string, error) {
	var b strings.Builder
	for {
		line, err := in.ReadSlice('\n')
		b.Write(line)
		if err == io.EOF {
			return b.String(), nil
		}
		if err != nil && err != bufio.ErrBufferFull {
			return b.String(), err
		}
	}
}

// script is a Src that returns one result per Read, then io.EOF.
type script []result

type result struct {
	data string
	err  error
}

func (s *script) Read(p []byte) (int, error) {
	if len(*s) == 0 {
		return 0, io.EOF
	}
	r := (*s)[0]
	*s = (*s)[1:]
	if len(p) < len(r.data) {
		panic("script: Read into a buffer too small")
	}
	return copy(p, r.data), r.err
}

var errBoom = errors.New("boom")

type sliceResult struct {
	line string
	err  error
}

func TestBufferReadSlice(t *testing.T) {
	long := strings.Repeat("x", input.Size+10)
	cases := []struct {
		name string
		src  string
		want []sliceResult // up to the first error but bufio.ErrBufferFull
	}{
		{"lines", "HELO a\r\nMAIL FROM:<>\r\nQUIT\r\n", []sliceResult{
			{"HELO a\r\n", nil}, {"MAIL FROM:<>\r\n", nil}, {"QUIT\r\n", nil}, {"", io.EOF}}},
		{"unterminated last line", "NOOP\r\nQUI", []sliceResult{
			{"NOOP\r\n", nil}, {"QUI", io.EOF}}},
		{"empty", "", []sliceResult{{"", io.EOF}}},
		{"line of exactly Size", strings.Repeat("y", input.Size-1) + "\n", []sliceResult{
			{strings.Repeat("y", input.Size-1) + "\n", nil}, {"", io.EOF}}},
		{"line longer than Size", long + "\r\nNOOP\r\n", []sliceResult{
			{long[:input.Size], bufio.ErrBufferFull}, {long[input.Size:] + "\r\n", nil}, {"NOOP\r\n", nil}, {"", io.EOF}}},
		{"Size bytes then the delimiter", long[:input.Size] + "\n", []sliceResult{
			{long[:input.Size], bufio.ErrBufferFull}, {"\n", nil}, {"", io.EOF}}},
		{"line across the end of the buffer", strings.Repeat("a", 4000) + "\n" + strings.Repeat("b", 300) + "\n", []sliceResult{
			{strings.Repeat("a", 4000) + "\n", nil}, {strings.Repeat("b", 300) + "\n", nil}, {"", io.EOF}}},
	}
	for _, tc := range cases {
		for _, mode := range srcModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				in := &input.Buffer{Src: mode.wrap(strings.NewReader(tc.src))}
				var got []sliceResult
				for len(got) <= len(tc.want) {
					line, err := in.ReadSlice('\n')
					got = append(got, sliceResult{string(line), err})
					if err != nil && err != bufio.ErrBufferFull {
						break
					}
				}
				if len(got) != len(tc.want) {
					t.Fatalf("got %d results %v, want %v", len(got), got, tc.want)
				}
				for i := range got {
					if got[i] != tc.want[i] {
						t.Errorf("ReadSlice #%d = %q, %v; want %q, %v", i, got[i].line, got[i].err, tc.want[i].line, tc.want[i].err)
					}
				}
			})
		}
	}
}

// A read error that comes with bytes is reported after those bytes, not
// instead of them, and once: the reads after it go on from the Src.
func TestBufferReadErrorAfterBytes(t *testing.T) {
	cases := []struct {
		name string
		src  script
		want []sliceResult
	}{
		{"error with a whole line", script{{"abc\r\n", errBoom}}, []sliceResult{
			{"abc\r\n", nil}, {"", errBoom}, {"", io.EOF}}},
		{"error with a line and a part", script{{"abc\r\nde", errBoom}}, []sliceResult{
			{"abc\r\n", nil}, {"de", errBoom}, {"", io.EOF}}},
		{"error with the end of a line", script{{"ab", nil}, {"c\r\nd", errBoom}}, []sliceResult{
			{"abc\r\n", nil}, {"d", errBoom}, {"", io.EOF}}},
		{"error with no bytes", script{{"abc\r\n", nil}, {"", errBoom}}, []sliceResult{
			{"abc\r\n", nil}, {"", errBoom}, {"", io.EOF}}},
		{"bytes after the error", script{{"abc\r\n", errBoom}, {"more\r\n", nil}}, []sliceResult{
			{"abc\r\n", nil}, {"", errBoom}, {"more\r\n", nil}, {"", io.EOF}}},
		{"bytes after an error with no bytes", script{{"", errBoom}, {"more\r\n", nil}}, []sliceResult{
			{"", errBoom}, {"more\r\n", nil}, {"", io.EOF}}},
		{"two lines and an error", script{{"a\r\nb\r\nc", errBoom}, {"d\r\n", nil}}, []sliceResult{
			{"a\r\n", nil}, {"b\r\n", nil}, {"c", errBoom}, {"d\r\n", nil}, {"", io.EOF}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src
			in := &input.Buffer{Src: &src}
			for i, w := range tc.want {
				line, err := in.ReadSlice('\n')
				if string(line) != w.line || err != w.err {
					t.Fatalf("ReadSlice #%d = %q, %v; want %q, %v", i, line, err, w.line, w.err)
				}
			}
		})
	}

	// Peek too: the bytes first, then the error.
	in := &input.Buffer{Src: &script{{"abc", errBoom}}}
	if b, err := in.Peek(3); string(b) != "abc" || err != nil {
		t.Errorf("Peek(3) = %q, %v; want \"abc\", nil", b, err)
	}
	if b, err := in.Peek(4); string(b) != "abc" || err != errBoom {
		t.Errorf("Peek(4) = %q, %v; want \"abc\", %v", b, err, errBoom)
	}
	if b, err := in.Peek(4); string(b) != "abc" || err != io.EOF {
		t.Errorf("Peek(4) again = %q, %v; want \"abc\", io.EOF", b, err)
	}
}

// A Src that keeps returning nothing is io.ErrNoProgress after a few
// tries (bufio's 100), not a hang.
func TestBufferNoProgress(t *testing.T) {
	calls := 0
	in := &input.Buffer{Src: readerFunc(func([]byte) (int, error) { calls++; return 0, nil })}
	if line, err := in.ReadSlice('\n'); len(line) != 0 || err != io.ErrNoProgress {
		t.Errorf("ReadSlice = %q, %v; want \"\", io.ErrNoProgress", line, err)
	}
	if calls > 1000 {
		t.Errorf("Src read %d times before giving up", calls)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestBufferPeek(t *testing.T) {
	long := strings.Repeat("x", 4000) + "\n" + strings.Repeat("y", 500)
	big := strings.Repeat("z", 2*input.Size)
	cases := []struct {
		name    string
		src     string
		skip    int // a line of skip bytes read with ReadSlice first
		n       int
		want    string
		wantErr error
	}{
		{"some", "abcdef", 0, 3, "abc", nil},
		{"all", "abcdef", 0, 6, "abcdef", nil},
		{"short at the end", "abc", 0, 5, "abc", io.EOF},
		{"nothing at all", "", 0, 1, "", io.EOF},
		{"Size", big, 0, input.Size, big[:input.Size], nil},
		{"after a long line", long, 4001, 500, strings.Repeat("y", 500), nil},
		{"after a long line, short", long, 4001, 501, strings.Repeat("y", 500), io.EOF},
	}
	for _, tc := range cases {
		for _, mode := range srcModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				in := &input.Buffer{Src: mode.wrap(strings.NewReader(tc.src))}
				if tc.skip > 0 {
					if line, err := in.ReadSlice('\n'); len(line) != tc.skip || err != nil {
						t.Fatalf("ReadSlice = %d bytes, %v; want %d, nil", len(line), err, tc.skip)
					}
				}
				got, err := in.Peek(tc.n)
				if string(got) != tc.want || err != tc.wantErr {
					t.Fatalf("Peek(%d) = %q, %v; want %q, %v", tc.n, trunc(got), err, trunc([]byte(tc.want)), tc.wantErr)
				}
				if tc.wantErr == nil && in.Buffered() < tc.n || tc.wantErr != nil && in.Buffered() != len(tc.want) {
					t.Errorf("Buffered() = %d after Peek(%d) gave %d bytes, %v", in.Buffered(), tc.n, len(tc.want), tc.wantErr)
				}
				// Peek consumes nothing.
				all, err := rest(in)
				if want := tc.src[tc.skip:]; all != want || err != nil {
					t.Errorf("after Peek the rest is %q, %v; want %q", trunc([]byte(all)), err, trunc([]byte(want)))
				}
			})
		}
	}
}

// Peek of more than the buffer holds is bufio.ErrBufferFull at once, with
// what is buffered, and consumes nothing.
func TestBufferPeekMoreThanSize(t *testing.T) {
	for _, mode := range srcModes {
		t.Run(mode.name, func(t *testing.T) {
			in := &input.Buffer{Src: mode.wrap(strings.NewReader("abcdef\r\n"))}
			got, err := in.Peek(input.Size + 1)
			if len(got) != 0 || err != bufio.ErrBufferFull {
				t.Fatalf("Peek(Size+1) on an empty buffer = %q, %v; want \"\", bufio.ErrBufferFull", got, err)
			}
			if _, err := in.Peek(2); err != nil {
				t.Fatal(err)
			}
			got, err = in.Peek(input.Size + 1)
			if !bytes.Equal(got, in.Bytes()) || !bytes.HasPrefix(got, []byte("ab")) || err != bufio.ErrBufferFull {
				t.Fatalf("Peek(Size+1) = %q, %v; want what is buffered (%q), bufio.ErrBufferFull", got, err, in.Bytes())
			}
			if all, err := rest(in); all != "abcdef\r\n" || err != nil {
				t.Errorf("then the rest is %q, %v; want \"abcdef\\r\\n\"", all, err)
			}
		})
	}
}

// Peek(0) is nothing and no error, as bufio's, also before the buffer
// holds anything.
func TestBufferPeekZero(t *testing.T) {
	in := &input.Buffer{Src: strings.NewReader("abc")}
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("Peek(0) on an empty buffer panicked: %v", p)
		}
	}()
	if b, err := in.Peek(0); len(b) != 0 || err != nil {
		t.Fatalf("Peek(0) = %q, %v; want \"\", nil", b, err)
	}
}

func TestBufferDropRelease(t *testing.T) {
	cases := []struct {
		name string
		do   func(in *input.Buffer)
		// what is buffered after do, and whether the buffer went back
		// (Bytes() == nil)
		buffered string
		released bool
	}{
		{"Drop with bytes buffered", func(in *input.Buffer) { in.Peek(3); in.Drop() }, "", true},
		{"Drop after a line", func(in *input.Buffer) { in.ReadSlice('\n'); in.Drop() }, "", true},
		{"Drop with nothing", func(in *input.Buffer) { in.Drop() }, "", true},
		{"Release with bytes buffered keeps them", func(in *input.Buffer) { in.Peek(9); in.Release() }, "NOOP\r\nQUI", false},
		{"Release after all was read", func(in *input.Buffer) { in.Peek(9); in.Discard(9); in.Release() }, "", true},
		{"Release after lines", func(in *input.Buffer) { in.ReadSlice('\n'); in.ReadSlice('\n'); in.Release() }, "", true},
		{"Discard", func(in *input.Buffer) { in.Peek(9); in.Discard(4) }, "\r\nQUI", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := &input.Buffer{Src: strings.NewReader("NOOP\r\nQUI")}
			tc.do(in)
			if got := string(in.Bytes()); got != tc.buffered || in.Buffered() != len(tc.buffered) {
				t.Errorf("Bytes() = %q, Buffered() = %d; want %q", got, in.Buffered(), tc.buffered)
			}
			if released := in.Bytes() == nil; released != tc.released {
				t.Errorf("buffer released = %v, want %v", released, tc.released)
			}
			// The buffer still works afterwards.
			in.Src = strings.NewReader("RSET\r\n")
			if all, err := rest(in); all != tc.buffered+"RSET\r\n" || err != nil {
				t.Errorf("then the rest is %q, %v; want %q", all, err, tc.buffered+"RSET\r\n")
			}
		})
	}
}

// ReadFD on a real non-blocking socket: false with nothing to read (and
// no buffer held), true with the bytes once written, io.EOF once the peer
// closed.
func TestBufferReadFD(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skip("socketpair:", err)
	}
	ours, peer := fds[0], fds[1]
	defer syscall.Close(ours)
	peerOpen := true
	defer func() {
		if peerOpen {
			syscall.Close(peer)
		}
	}()
	if err := syscall.SetNonblock(ours, true); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		t.Helper()
		if n, err := syscall.Write(peer, []byte(s)); n != len(s) || err != nil {
			t.Fatalf("write %q: %d, %v", s, n, err)
		}
	}
	// The Src must not be read from: ReadFD is the only reader here.
	in := &input.Buffer{Src: iotest.ErrReader(errors.New("Src read"))}
	fd := uintptr(ours)

	if in.ReadFD(fd) {
		t.Fatal("ReadFD = true with nothing to read")
	}
	if in.Buffered() != 0 || in.Bytes() != nil {
		t.Fatalf("after ReadFD with nothing to read: %d bytes buffered, Bytes() = %q (want nil: no buffer held)", in.Buffered(), in.Bytes())
	}

	write("EHLO a\r\nNO")
	if !in.ReadFD(fd) {
		t.Fatal("ReadFD = false with bytes to read")
	}
	if got := string(in.Bytes()); got != "EHLO a\r\nNO" {
		t.Fatalf("after ReadFD Bytes() = %q, want %q", got, "EHLO a\r\nNO")
	}
	if line, err := in.ReadSlice('\n'); string(line) != "EHLO a\r\n" || err != nil {
		t.Fatalf("ReadSlice = %q, %v", line, err)
	}
	if in.ReadFD(fd) {
		t.Fatal("ReadFD = true with nothing more to read")
	}
	if got := string(in.Bytes()); got != "NO" {
		t.Fatalf("ReadFD with nothing to read lost the buffered bytes: Bytes() = %q, want \"NO\"", got)
	}

	// More after what is buffered, moved to the front of the buffer.
	write("OP\r\nQUIT\r\n")
	if !in.ReadFD(fd) {
		t.Fatal("ReadFD = false with bytes to read")
	}
	for _, want := range []string{"NOOP\r\n", "QUIT\r\n"} {
		if line, err := in.ReadSlice('\n'); string(line) != want || err != nil {
			t.Fatalf("ReadSlice = %q, %v; want %q", line, err, want)
		}
	}
	if in.ReadFD(fd) {
		t.Fatal("ReadFD = true with nothing more to read")
	}
	if in.Bytes() != nil {
		t.Fatal("ReadFD with nothing to read held on to an empty buffer")
	}

	// The peer's last bytes, then its end of stream.
	write("QU")
	syscall.Close(peer)
	peerOpen = false
	for i := 0; i < 2; i++ {
		if !in.ReadFD(fd) {
			t.Fatalf("ReadFD #%d = false after the peer wrote and closed", i)
		}
	}
	if line, err := in.ReadSlice('\n'); string(line) != "QU" || err != io.EOF {
		t.Fatalf("ReadSlice after the peer closed = %q, %v; want \"QU\", io.EOF", line, err)
	}
}

// A read(2) error is kept for the next fill, as the read's error: here
// read on a directory, EISDIR.
func TestBufferReadFDError(t *testing.T) {
	fd, err := syscall.Open(t.TempDir(), syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	in := &input.Buffer{Src: iotest.ErrReader(errors.New("Src read"))}
	if !in.ReadFD(uintptr(fd)) {
		t.Fatal("ReadFD = false after a read error")
	}
	if in.Buffered() != 0 {
		t.Skip("read(2) on a directory gave bytes here")
	}
	_, err = in.ReadSlice('\n')
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "read" || !errors.Is(err, syscall.EISDIR) {
		t.Fatalf("ReadSlice after a failed read(2) = %v; want read: %v", err, syscall.EISDIR)
	}
}

// With a full buffer ReadFD reads nothing and reports true: what is
// buffered is the poller's input.
func TestBufferReadFDFull(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skip("socketpair:", err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	full := strings.Repeat("f", input.Size)
	in := &input.Buffer{Src: strings.NewReader(full)}
	if _, err := in.Peek(input.Size); err != nil {
		t.Fatal(err)
	}
	syscall.Write(fds[1], []byte("more"))
	if !in.ReadFD(uintptr(fds[0])) {
		t.Fatal("ReadFD = false with a full buffer")
	}
	if got := string(in.Bytes()); got != full {
		t.Fatalf("ReadFD changed a full buffer: %d bytes", len(got))
	}
	in.Discard(10)
	if !in.ReadFD(uintptr(fds[0])) {
		t.Fatal("ReadFD = false with bytes to read")
	}
	if got, want := string(in.Bytes()), full[10:]+"more"; got != want {
		t.Fatalf("after ReadFD %d bytes buffered ending %q; want %d ending \"more\"", len(got), got[len(got)-4:], len(want))
	}
}

type dotCase struct {
	name      string
	in        string
	normalize bool
	want      string
	wantErr   error
	rest      string // left for the next command, when no error
}

var dotCases = []dotCase{
	// reject (and both policies alike: only CRLF in the message)
	{name: "unstuffing", in: "a\r\n..b\r\n.\r\n", want: "a\r\n.b\r\n"},
	{name: "end leaves the next command", in: "a\r\n.\r\nQUIT\r\n", want: "a\r\n", rest: "QUIT\r\n"},
	{name: "end leaves pipelined commands", in: "a\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<b@c>\r\n", want: "a\r\n", rest: "MAIL FROM:<>\r\nRCPT TO:<b@c>\r\n"},
	{name: "empty message", in: ".\r\nQUIT\r\n", want: "", rest: "QUIT\r\n"},
	{name: "empty lines", in: "\r\n\r\n.\r\n", want: "\r\n\r\n"},
	{name: "dots in lines", in: "a.\r\n .\r\n.x\r\n..\r\n...\r\n.\r\n", want: "a.\r\n .\r\nx\r\n.\r\n..\r\n"},
	{name: "dot CRLF dot CRLF", in: "..\r\n.\r\n.\r\n", want: ".\r\n", rest: ".\r\n"},
	{name: "long line", in: strings.Repeat("l", 3*input.Size) + "\r\n.\r\n", want: strings.Repeat("l", 3*input.Size) + "\r\n"},
	{name: "many lines", in: strings.Repeat("line\r\n..\r\n", 1000) + ".\r\n", want: strings.Repeat("line\r\n.\r\n", 1000)},
	{name: "reject bare LF", in: "a\nb\r\n.\r\n", want: "a", wantErr: input.ErrBareNewline},
	{name: "reject bare CR", in: "a\rb\r\n.\r\n", want: "a\r", wantErr: input.ErrBareNewline},
	{name: "reject bare LF at the start", in: "\n.\r\n", wantErr: input.ErrBareNewline},
	{name: "reject bare CR before CRLF", in: "a\r\r\n.\r\n", want: "a\r", wantErr: input.ErrBareNewline},
	{name: "end of stream after a CR", in: "a\r\nb\r", want: "a\r\nb\r", wantErr: io.ErrUnexpectedEOF},
	{name: "reject bare LF before the dot", in: "a\n.\r\n", want: "a", wantErr: input.ErrBareNewline},
	{name: "reject dot ended by bare LF", in: "a\r\n.\nb\r\n.\r\n", want: "a\r\n", wantErr: input.ErrBareNewline},
	{name: "reject dot ended by bare CR", in: "a\r\n.\rb\r\n.\r\n", want: "a\r\n\r", wantErr: input.ErrBareNewline},
	{name: "reject bare LF after a long line", in: strings.Repeat("l", 2*input.Size) + "\n.\r\n", want: strings.Repeat("l", 2*input.Size), wantErr: input.ErrBareNewline},
	{name: "end of stream mid-line", in: "a\r\nb", want: "a\r\nb", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream after a line", in: "a\r\n", want: "a\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream at the dot", in: "a\r\n.", want: "a\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream at dot CR", in: "a\r\n.\r", want: "a\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream at once", in: "", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream at a CR", in: "a\r", want: "a\r", wantErr: io.ErrUnexpectedEOF},

	// normalize
	{name: "normalize", normalize: true, in: "a\nb\rc\r\n.\r\n", want: "a\r\nb\r\nc\r\n"},
	{name: "normalize unstuffing", normalize: true, in: "a\r\n..b\r\n.\r\nQUIT\r\n", want: "a\r\n.b\r\n", rest: "QUIT\r\n"},
	{name: "normalize CR CRLF", normalize: true, in: "a\r\r\n.\r\n", want: "a\r\n\r\n"},
	{name: "normalize LF LF", normalize: true, in: "\n\n\r\n.\r\n", want: "\r\n\r\n\r\n"},
	{name: "normalize dot after LF LF is not the end", normalize: true, in: "\n\n.\r\n", want: "\r\n\r\n.\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "normalize CR CR", normalize: true, in: "\r\r.\r\n", want: "\r\n\r\n.\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "normalize LF CR", normalize: true, in: "a\n\rb\r\n.\r\n", want: "a\r\n\r\nb\r\n"},
	{name: "normalize dot ended by bare LF is kept", normalize: true, in: "a\r\n.\nb\r\n.\r\n", want: "a\r\n.\r\nb\r\n"},
	{name: "normalize dot ended by bare CR is kept", normalize: true, in: "a\r\n.\rb\r\n.\r\n", want: "a\r\n.\r\nb\r\n"},
	{name: "normalize dot bare LF is not the end", normalize: true, in: "a\r\n.\n.\r\n.\r\n", want: "a\r\n.\r\n.\r\n"},
	{name: "normalize dot bare CR is not the end", normalize: true, in: "a\r\n.\r.\r\n", want: "a\r\n.\r\n.\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "normalize dot bare CR LF", normalize: true, in: "a\r\n.\r\r\n.\r\n", want: "a\r\n.\r\n\r\n"},
	{name: "normalize dot after bare LF is not the end", normalize: true, in: "a\n.\r\nb\r\n.\r\n", want: "a\r\n.\r\nb\r\n"},
	{name: "normalize dot after bare CR is not the end", normalize: true, in: "a\r.\r\nb\r\n.\r\n", want: "a\r\n.\r\nb\r\n"},
	{name: "normalize dot after bare LF is not unstuffed", normalize: true, in: "a\n..b\r\n.\r\n", want: "a\r\n..b\r\n"},
	{name: "normalize message of a bare LF", normalize: true, in: "\n\r\n.\r\n", want: "\r\n\r\n"},
	{name: "normalize long lines", normalize: true, in: strings.Repeat("l", 2*input.Size) + "\n" + strings.Repeat("m", 2*input.Size) + "\r\r\n.\r\n", want: strings.Repeat("l", 2*input.Size) + "\r\n" + strings.Repeat("m", 2*input.Size) + "\r\n\r\n"},
	{name: "normalize many", normalize: true, in: strings.Repeat("x\ny\rz\r\n..\n\r\n", 500) + ".\r\n", want: strings.Repeat("x\r\ny\r\nz\r\n.\r\n\r\n", 500)},
	{name: "normalize end of stream", normalize: true, in: "a\nb", want: "a\r\nb", wantErr: io.ErrUnexpectedEOF},
	{name: "normalize end of stream after CR", normalize: true, in: "a\r", want: "a\r\n", wantErr: io.ErrUnexpectedEOF},
	{name: "normalize end of stream at the dot", normalize: true, in: "a\r\n.\r", want: "a\r\n", wantErr: io.ErrUnexpectedEOF},
}

func TestDot(t *testing.T) {
	for _, tc := range dotCases {
		for _, mode := range srcModes {
			for _, size := range readSizes {
				t.Run(fmt.Sprintf("%s/%s/read%d", tc.name, mode.name, size), func(t *testing.T) {
					in := &input.Buffer{Src: mode.wrap(strings.NewReader(tc.in))}
					var d input.Dot
					d.Reset(source{t, in}, tc.normalize)
					if d.Done() {
						t.Fatal("Done() before reading")
					}
					got, err := readBy(&d, size)
					if !errors.Is(err, tc.wantErr) || err != nil && tc.wantErr == nil {
						t.Fatalf("read %q, error %v; want error %v", trunc(got), err, tc.wantErr)
					}
					if tc.wantErr != nil {
						if !strings.HasPrefix(tc.want, string(got)) {
							t.Errorf("read %q before the error, want a part of %q", trunc(got), trunc([]byte(tc.want)))
						}
						if d.Done() {
							t.Error("Done() after an error")
						}
						return
					}
					if string(got) != tc.want {
						t.Errorf("read\n%q\nwant\n%q", trunc(got), trunc([]byte(tc.want)))
					}
					if !d.Done() {
						t.Error("Done() = false after the final dot")
					}
					if n, err := d.Read(make([]byte, 10)); n != 0 || err != io.EOF {
						t.Errorf("Read after the end = %d, %v; want 0, io.EOF", n, err)
					}
					if r, err := rest(in); r != tc.rest || err != nil {
						t.Errorf("after the message the buffer holds %q, %v; want %q", r, err, tc.rest)
					}
				})
			}
		}
	}
}

// Done reports the final dot as soon as it was read: with the last bytes
// of the message, before the io.EOF.
func TestDotDone(t *testing.T) {
	for _, normalize := range []bool{false, true} {
		in := &input.Buffer{Src: strings.NewReader("ab\r\n.\r\n")}
		var d input.Dot
		d.Reset(source{t, in}, normalize)
		p := make([]byte, 64)
		first := 2 // "ab": reject reads a line's bytes, normalize needs room for a CRLF
		if normalize {
			first = 3
		}
		n, err := d.Read(p[:first])
		if string(p[:n]) != "ab" || err != nil || d.Done() {
			t.Fatalf("normalize=%v: Read = %q, %v, Done() = %v; want \"ab\", nil, false", normalize, p[:n], err, d.Done())
		}
		n, err = d.Read(p)
		if string(p[:n]) != "\r\n" || err != nil || !d.Done() {
			t.Fatalf("normalize=%v: Read = %q, %v, Done() = %v; want \"\\r\\n\", nil, true", normalize, p[:n], err, d.Done())
		}
		d.Reset(source{t, in}, normalize)
		if d.Done() {
			t.Fatalf("normalize=%v: Done() after Reset", normalize)
		}
	}
}

// One Dot reads message after message from the same buffer, its state
// (a pending CR, the start of a line) reset in between.
func TestDotReset(t *testing.T) {
	for _, normalize := range []bool{false, true} {
		for _, mode := range srcModes {
			t.Run(fmt.Sprintf("normalize=%v/%s", normalize, mode.name), func(t *testing.T) {
				in := &input.Buffer{Src: mode.wrap(strings.NewReader("one\r\n.\r\n.two\r\n.\r\n\r\n.\r\nQUIT\r\n"))}
				var d input.Dot
				for _, want := range []string{"one\r\n", "two\r\n", "\r\n"} {
					d.Reset(source{t, in}, normalize)
					got, err := io.ReadAll(&d)
					if string(got) != want || err != nil {
						t.Fatalf("read %q, %v; want %q", got, err, want)
					}
				}
				if r, _ := rest(in); r != "QUIT\r\n" {
					t.Fatalf("rest %q, want \"QUIT\\r\\n\"", r)
				}
			})
		}
	}
}

// Drain reads the rest of the message after the reader stopped early,
// up to and including the final dot and no further.
func TestDotDrain(t *testing.T) {
	cases := []struct {
		name      string
		in        string
		normalize bool
		first     int // bytes read before Drain
		wantErr   error
		rest      string
	}{
		{"at once", "a\r\n..b\r\n" + strings.Repeat("x", 3*input.Size) + "\r\n.\r\nQUIT\r\n", false, 0, nil, "QUIT\r\n"},
		{"after a part", "a\r\n..b\r\n" + strings.Repeat("x", 3*input.Size) + "\r\n.\r\nQUIT\r\n", false, 5, nil, "QUIT\r\n"},
		{"normalize", "a\n.\r\nb\r.\r\n.\r\nQUIT\r\n", true, 2, nil, "QUIT\r\n"},
		{"after the end", "a\r\n.\r\nQUIT\r\n", false, 100, nil, "QUIT\r\n"},
		// The reader stopped right before the final dot, as the server's
		// does when the client sent the dot in a write of its own (Drain
		// then read it alone and returned its io.EOF).
		{"final dot on its own", "a\r\n.\r\nQUIT\r\n", false, 3, nil, "QUIT\r\n"},
		{"normalize final dot on its own", "a\r\n.\r\nQUIT\r\n", true, 3, nil, "QUIT\r\n"},
		{"bare LF", "a\r\nb\nc\r\n.\r\n", false, 0, input.ErrBareNewline, ""},
		{"end of stream", "a\r\nb\r\n", false, 0, io.ErrUnexpectedEOF, ""},
		{"normalize end of stream", "a\r\nb\n.\r\n", true, 0, io.ErrUnexpectedEOF, ""},
	}
	for _, tc := range cases {
		for _, mode := range srcModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				in := &input.Buffer{Src: mode.wrap(strings.NewReader(tc.in))}
				var d input.Dot
				d.Reset(source{t, in}, tc.normalize)
				if tc.first > 0 {
					if _, err := d.Read(make([]byte, tc.first)); err != nil {
						t.Fatal(err)
					}
				}
				err := d.Drain()
				if err != tc.wantErr {
					t.Fatalf("Drain() = %v, want %v", err, tc.wantErr)
				}
				if err != nil {
					return
				}
				if !d.Done() {
					t.Error("Done() = false after Drain")
				}
				if r, err := rest(in); r != tc.rest || err != nil {
					t.Errorf("after Drain the buffer holds %q, %v; want %q", r, err, tc.rest)
				}
			})
		}
	}
}

// An error from the connection other than its end is the reader's.
func TestDotReadError(t *testing.T) {
	for _, normalize := range []bool{false, true} {
		in := &input.Buffer{Src: &script{{"a\r\nb", errBoom}}}
		var d input.Dot
		d.Reset(source{t, in}, normalize)
		got, err := io.ReadAll(&d)
		if string(got) != "a\r\nb" || err != errBoom {
			t.Errorf("normalize=%v: read %q, %v; want \"a\\r\\nb\", %v", normalize, got, err, errBoom)
		}
	}
}

// step is one chunk of a BDAT sequence: the first as NewChunks gets it,
// the next ones as the next callback returns them.
type step struct {
	size int64
	last bool
	err  error
}

type chunksCase struct {
	name      string
	data      string // the chunks' bytes and what follows them
	steps     []step
	normalize bool
	want      string
	wantErr   error
	rest      string // what follows the chunks, when no error
}

var chunksCases = []chunksCase{
	{name: "one chunk", data: "ab\r\nQUIT\r\n", steps: []step{{4, true, nil}}, want: "ab\r\n", rest: "QUIT\r\n"},
	{name: "two chunks", data: "ab\r\ncd\r\nQUIT\r\n", steps: []step{{4, false, nil}, {4, true, nil}}, want: "ab\r\ncd\r\n", rest: "QUIT\r\n"},
	{name: "empty first chunk", data: "a", steps: []step{{0, false, nil}, {1, true, nil}}, want: "a\r\n"},
	{name: "three chunks mid-line", data: "Subject: x\r\n\r\nbody\r\nQUIT\r\n", steps: []step{{5, false, nil}, {10, false, nil}, {5, true, nil}}, want: "Subject: x\r\n\r\nbody\r\n", rest: "QUIT\r\n"},
	{name: "dots are data", data: ".\r\n..\r\n", steps: []step{{7, true, nil}}, want: ".\r\n..\r\n"},
	{name: "no CRLF at the end", data: "abc", steps: []step{{3, true, nil}}, want: "abc\r\n"},
	{name: "no CRLF at the end of two chunks", data: "ab\r\ncdQUIT\r\n", steps: []step{{4, false, nil}, {2, true, nil}}, want: "ab\r\ncd\r\n", rest: "QUIT\r\n"},
	{name: "BDAT 0 LAST after data", data: "ab\r\nQUIT\r\n", steps: []step{{4, false, nil}, {0, true, nil}}, want: "ab\r\n", rest: "QUIT\r\n"},
	{name: "BDAT 0 LAST after data without CRLF", data: "ab", steps: []step{{2, false, nil}, {0, true, nil}}, want: "ab\r\n"},
	{name: "BDAT 0 LAST only", data: "QUIT\r\n", steps: []step{{0, true, nil}}, want: "", rest: "QUIT\r\n"},
	{name: "BDAT 0 then BDAT 0 LAST", data: "", steps: []step{{0, false, nil}, {0, true, nil}}, want: ""},
	{name: "empty chunks between", data: "ab\r\n", steps: []step{{0, false, nil}, {2, false, nil}, {0, false, nil}, {2, true, nil}}, want: "ab\r\n"},
	{name: "long chunks", data: strings.Repeat("0123456789abcd\r\n", 1000), steps: []step{{10000, false, nil}, {6000, true, nil}}, want: strings.Repeat("0123456789abcd\r\n", 1000)},
	{name: "error from next", data: "ab\r\ncd\r\n", steps: []step{{4, false, nil}, {0, false, errBoom}}, want: "ab\r\n", wantErr: errBoom},
	{name: "error from next after an empty chunk", data: "", steps: []step{{0, false, nil}, {0, false, errBoom}}, want: "", wantErr: errBoom},
	{name: "end of stream mid-chunk", data: "ab\r\nc", steps: []step{{10, true, nil}}, want: "ab\r\nc", wantErr: io.ErrUnexpectedEOF},
	{name: "end of stream in the second chunk", data: "ab\r\nc", steps: []step{{4, false, nil}, {10, true, nil}}, want: "ab\r\nc", wantErr: io.ErrUnexpectedEOF},

	// bare line ends, under reject
	{name: "reject bare LF", data: "a\nb\r\n", steps: []step{{5, true, nil}}, want: "a", wantErr: input.ErrBareNewline},
	{name: "reject bare CR", data: "a\rb\r\n", steps: []step{{5, true, nil}}, want: "a\r", wantErr: input.ErrBareNewline},
	{name: "reject CR at the end of the message", data: "ab\r", steps: []step{{3, true, nil}}, want: "ab\r", wantErr: input.ErrBareNewline},
	{name: "reject CR at the end before BDAT 0 LAST", data: "ab\r", steps: []step{{3, false, nil}, {0, true, nil}}, want: "ab\r", wantErr: input.ErrBareNewline},
	{name: "CRLF across chunks", data: "a\r\nb\r\n", steps: []step{{2, false, nil}, {4, true, nil}}, want: "a\r\nb\r\n"},
	{name: "CRLF across chunks and an empty one", data: "a\r\nb\r\n", steps: []step{{2, false, nil}, {0, false, nil}, {4, true, nil}}, want: "a\r\nb\r\n"},
	{name: "CRLF across the last chunk", data: "a\r\n", steps: []step{{2, false, nil}, {1, true, nil}}, want: "a\r\n"},
	{name: "reject CR ending a chunk, no LF after", data: "a\rb\r\n", steps: []step{{2, false, nil}, {3, true, nil}}, want: "a\r", wantErr: input.ErrBareNewline},
	{name: "reject LF starting a chunk", data: "a\nb\r\n", steps: []step{{1, false, nil}, {4, true, nil}}, want: "a", wantErr: input.ErrBareNewline},

	// normalize
	{name: "normalize", normalize: true, data: "a\nb\rc\r\nd", steps: []step{{8, true, nil}}, want: "a\r\nb\r\nc\r\nd\r\n"},
	{name: "normalize CR at the end", normalize: true, data: "ab\rQUIT\r\n", steps: []step{{3, true, nil}}, want: "ab\r\n", rest: "QUIT\r\n"},
	{name: "normalize LF at the end", normalize: true, data: "ab\n", steps: []step{{3, true, nil}}, want: "ab\r\n"},
	{name: "normalize a CR only", normalize: true, data: "\r", steps: []step{{1, true, nil}}, want: "\r\n"},
	{name: "normalize CR CRLF at the end", normalize: true, data: "a\r\r\n", steps: []step{{4, true, nil}}, want: "a\r\n\r\n"},
	{name: "normalize CR before BDAT 0 LAST", normalize: true, data: "ab\r", steps: []step{{3, false, nil}, {0, true, nil}}, want: "ab\r\n"},
	{name: "normalize CRLF across chunks", normalize: true, data: "a\r\nb\r\n", steps: []step{{2, false, nil}, {4, true, nil}}, want: "a\r\nb\r\n"},
	{name: "normalize CRLF across an empty chunk", normalize: true, data: "a\r\nb", steps: []step{{2, false, nil}, {0, false, nil}, {2, true, nil}}, want: "a\r\nb\r\n"},
	{name: "normalize CR ending a chunk, no LF after", normalize: true, data: "a\rb\r\n", steps: []step{{2, false, nil}, {3, true, nil}}, want: "a\r\nb\r\n"},
	{name: "normalize CR ending a chunk, CR after", normalize: true, data: "a\r\rb", steps: []step{{2, false, nil}, {2, true, nil}}, want: "a\r\n\r\nb\r\n"},
	{name: "normalize LF starting a chunk", normalize: true, data: "a\nb", steps: []step{{1, false, nil}, {2, true, nil}}, want: "a\r\nb\r\n"},
	{name: "normalize long", normalize: true, data: strings.Repeat("x\ny\rz\r\n", 2000), steps: []step{{7*714 + 4, false, nil}, {14000 - 7*714 - 4, true, nil}}, want: strings.Repeat("x\r\ny\r\nz\r\n", 2000)},
}

func TestChunks(t *testing.T) {
	for _, tc := range chunksCases {
		for _, mode := range srcModes {
			for _, size := range readSizes {
				t.Run(fmt.Sprintf("%s/%s/read%d", tc.name, mode.name, size), func(t *testing.T) {
					in := &input.Buffer{Src: mode.wrap(strings.NewReader(tc.data))}
					calls := 0
					next := func(int64) (int64, bool, error) {
						calls++
						if calls >= len(tc.steps) {
							t.Fatalf("next called %d times, after the last chunk", calls)
						}
						s := tc.steps[calls]
						return s.size, s.last, s.err
					}
					first := tc.steps[0]
					r := input.NewChunks(source{t, in}, first.size, first.last, tc.normalize, next)
					got, err := readBy(r, size)
					if err != tc.wantErr {
						t.Fatalf("read %q, error %v; want %q, %v", trunc(got), err, trunc([]byte(tc.want)), tc.wantErr)
					}
					if tc.wantErr != nil {
						if !strings.HasPrefix(tc.want, string(got)) {
							t.Errorf("read %q before the error, want a part of %q", trunc(got), trunc([]byte(tc.want)))
						}
						if tc.wantErr == errBoom && (string(got) != tc.want || calls != len(tc.steps)-1) {
							t.Errorf("read %q with next called %d times, want %q and %d", got, calls, tc.want, len(tc.steps)-1)
						}
						return
					}
					if string(got) != tc.want {
						t.Errorf("read\n%q\nwant\n%q", trunc(got), trunc([]byte(tc.want)))
					}
					if calls != len(tc.steps)-1 {
						t.Errorf("next called %d times, want %d", calls, len(tc.steps)-1)
					}
					if r.Left() != 0 || !r.Last() {
						t.Errorf("at the end Left() = %d, Last() = %v; want 0, true", r.Left(), r.Last())
					}
					if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
						t.Errorf("Read after the end = %d, %v; want 0, io.EOF", n, err)
					}
					if r, err := rest(in); r != tc.rest || err != nil {
						t.Errorf("after the message the buffer holds %q, %v; want %q", r, err, tc.rest)
					}
				})
			}
		}
	}
}

// Left and Last report the chunk being read: what the server skips after
// an early reply, and whether more chunks follow.
func TestChunksLeftLast(t *testing.T) {
	in := &input.Buffer{Src: strings.NewReader("abcdefgQUIT\r\n")}
	calls := 0
	r := input.NewChunks(source{t, in}, 5, false, false, func(int64) (int64, bool, error) {
		calls++
		return 2, true, nil
	})
	check := func(what string, left int64, last bool) {
		t.Helper()
		if r.Left() != left || r.Last() != last {
			t.Fatalf("%s: Left() = %d, Last() = %v; want %d, %v", what, r.Left(), r.Last(), left, last)
		}
	}
	check("before reading", 5, false)
	p := make([]byte, 64)
	if n, err := r.Read(p[:2]); string(p[:n]) != "ab" || err != nil {
		t.Fatalf("Read = %q, %v; want \"ab\"", p[:n], err)
	}
	check("after 2 bytes", 3, false)
	if n, err := r.Read(p); string(p[:n]) != "cde" || err != nil {
		t.Fatalf("Read = %q, %v; want \"cde\"", p[:n], err)
	}
	check("after the first chunk", 0, false)
	if calls != 0 {
		t.Fatalf("next called %d times before the first chunk's bytes were used up", calls)
	}
	if n, err := r.Read(p[:1]); string(p[:n]) != "f" || err != nil {
		t.Fatalf("Read = %q, %v; want \"f\"", p[:n], err)
	}
	check("in the second chunk", 1, true)
	if n, err := r.Read(p); string(p[:n]) != "g" || err != nil {
		t.Fatalf("Read = %q, %v; want \"g\"", p[:n], err)
	}
	check("after the second chunk", 0, true)
	if n, err := r.Read(p); string(p[:n]) != "\r\n" || err != nil {
		t.Fatalf("Read = %q, %v; want the CRLF the message lacked", p[:n], err)
	}
	if n, err := r.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("Read = %q, %v; want io.EOF", p[:n], err)
	}
	if calls != 1 {
		t.Fatalf("next called %d times, want 1", calls)
	}
	if rest, _ := rest(in); rest != "QUIT\r\n" {
		t.Fatalf("after the message the buffer holds %q", rest)
	}
}

func trunc(b []byte) string {
	if len(b) <= 200 {
		return string(b)
	}
	return fmt.Sprintf("%s...(%d bytes)...%s", b[:80], len(b)-160, b[len(b)-80:])
}

// next is asked once: after its error every Read repeats it, since in the
// server next reads the client's next command off the wire.
func TestChunksNextErrorSticks(t *testing.T) {
	in := &input.Buffer{Src: strings.NewReader("abQUIT\r\n")}
	interrupted := errors.New("interrupted")
	calls := 0
	r := input.NewChunks(source{t, in}, 2, false, false, func(int64) (int64, bool, error) {
		calls++
		return 0, false, interrupted
	})
	p := make([]byte, 8)
	if n, err := r.Read(p); string(p[:n]) != "ab" || err != nil {
		t.Fatalf("Read = %q, %v; want \"ab\"", p[:n], err)
	}
	for range 3 {
		if n, err := r.Read(p); n != 0 || !errors.Is(err, interrupted) {
			t.Fatalf("Read = %d, %v; want next's error", n, err)
		}
	}
	if calls != 1 {
		t.Fatalf("next called %d times, want once", calls)
	}
}
