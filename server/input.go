package server

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"sync"
	"syscall"
)

// input is a connection's read buffer. It does bufio.Reader's job for the
// few calls the loop makes (peek, readSlice, discard), and one thing
// bufio.Reader cannot: it can be filled by a read(2) that the poller runs
// (readFD), so that waiting for the client's next command and reading it
// is one system call, not a peek to learn that input came and then a read.
//
// It holds a pooled buffer only while it has bytes or a read is under
// way: a connection waiting for its client holds none, so 10,000 idle
// connections cost no 40 MB of buffers.
type input struct {
	buf  *[readBufferSize]byte // nil while the connection holds no buffer
	r, w int                   // buf[r:w] is what was read and not yet consumed
	src  io.Reader             // where fill reads from
	err  error                 // a read error that came with bytes, reported on the next fill
}

var inputBuffers = sync.Pool{New: func() any { return new([readBufferSize]byte) }}

// take makes sure the input holds a buffer.
func (in *input) take() {
	if in.buf == nil {
		in.buf = inputBuffers.Get().(*[readBufferSize]byte)
		in.r, in.w = 0, 0
	}
}

// release gives the buffer back to the pool when it holds nothing.
func (in *input) release() {
	if in.buf != nil && in.r == in.w {
		inputBuffers.Put(in.buf)
		in.buf = nil
	}
}

// drop forgets what is buffered and gives the buffer back.
func (in *input) drop() {
	in.r, in.w = 0, 0
	in.release()
}

func (in *input) buffered() int { return in.w - in.r }

// bytes returns what is buffered, without consuming it.
func (in *input) bytes() []byte {
	if in.buf == nil {
		return nil
	}
	return in.buf[in.r:in.w]
}

// discard consumes n buffered bytes (at most buffered()).
func (in *input) discard(n int) { in.r += n }

// fill reads once from src after what is buffered, moving it to the
// front first. It returns bufio.ErrBufferFull when there is no room.
func (in *input) fill() error {
	if in.err != nil {
		err := in.err
		in.err = nil
		return err
	}
	in.take()
	if in.r > 0 {
		in.w = copy(in.buf[:], in.buf[in.r:in.w])
		in.r = 0
	}
	if in.w == len(in.buf) {
		return bufio.ErrBufferFull
	}
	for range 100 { // as bufio: a reader that keeps returning nothing is broken
		n, err := in.src.Read(in.buf[in.w:])
		in.w += n
		if n > 0 {
			in.err = err
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// peek returns the next n bytes without consuming them, reading as needed;
// with fewer, the error says why.
func (in *input) peek(n int) ([]byte, error) {
	if n > readBufferSize {
		return in.bytes(), bufio.ErrBufferFull
	}
	for in.buffered() < n {
		if err := in.fill(); err != nil {
			return in.bytes(), err
		}
	}
	return in.buf[in.r : in.r+n], nil
}

// readSlice reads up to and including the first delim, as
// bufio.Reader.ReadSlice: the slice is valid until the next read, and
// bufio.ErrBufferFull means the buffer filled first.
func (in *input) readSlice(delim byte) ([]byte, error) {
	seen := 0 // bytes after r already searched
	for {
		if in.buf != nil {
			if i := bytes.IndexByte(in.buf[in.r+seen:in.w], delim); i >= 0 {
				line := in.buf[in.r : in.r+seen+i+1]
				in.r += seen + i + 1
				return line, nil
			}
		}
		seen = in.buffered()
		if seen == readBufferSize {
			line := in.buf[in.r:in.w]
			in.r = in.w
			return line, bufio.ErrBufferFull
		}
		if err := in.fill(); err != nil {
			line := in.bytes()
			in.r = in.w
			return line, err
		}
	}
}

// readFD is the poller's read: one read(2) on the socket fd into the free
// room. It reports false when there was nothing to read yet (the buffer
// goes back to the pool meanwhile when empty, and the poller waits for
// input); otherwise true, with the bytes buffered or the end of stream or
// error kept for the next fill.
func (in *input) readFD(fd uintptr) bool {
	in.take()
	if in.r > 0 {
		in.w = copy(in.buf[:], in.buf[in.r:in.w])
		in.r = 0
	}
	if in.w == len(in.buf) {
		return true
	}
	for {
		n, err := syscall.Read(int(fd), in.buf[in.w:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			in.release()
			return false
		case err != nil:
			in.err = os.NewSyscallError("read", err)
		case n == 0:
			in.err = io.EOF
		default:
			in.w += n
		}
		return true
	}
}
