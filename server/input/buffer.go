package input

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"sync"
	"syscall"
)

// Buffer is a connection's read buffer. It does bufio.Reader's job for the
// few calls the protocol loop makes (Peek, ReadSlice, Discard), and one
// thing bufio.Reader cannot: it can be filled by a read(2) that the poller
// runs (ReadFD), so that waiting for the client's next command and reading
// it is one system call, not a peek to learn that input came and then a
// read.
//
// It holds a pooled buffer only while it has bytes or a read is under
// way: a connection waiting for its client holds none, so 10,000 idle
// connections cost no 40 MB of buffers.
type Buffer struct {
	// Src is where the buffer reads from, but in ReadFD.
	Src  io.Reader
	buf  *[Size]byte // nil while the connection holds no buffer
	r, w int         // buf[r:w] is what was read and not yet consumed
	err  error       // a read error that came with bytes, reported on the next fill
}

// Size is the buffer's size: it bounds a command line's memory and keeps
// 10,000 idle connections cheap; message data streams through it in
// pieces.
const Size = 4 << 10

var inputBuffers = sync.Pool{New: func() any { return new([Size]byte) }}

// take makes sure the input holds a buffer.
func (in *Buffer) take() {
	if in.buf == nil {
		in.buf = inputBuffers.Get().(*[Size]byte)
		in.r, in.w = 0, 0
	}
}

// Release gives the buffer back to the pool when it holds nothing.
func (in *Buffer) Release() {
	if in.buf != nil && in.r == in.w {
		inputBuffers.Put(in.buf)
		in.buf = nil
	}
}

// Drop forgets what is buffered, and a read error kept with it, and gives
// the buffer back.
func (in *Buffer) Drop() {
	in.r, in.w, in.err = 0, 0, nil
	in.Release()
}

// Buffered returns how many bytes are buffered.
func (in *Buffer) Buffered() int { return in.w - in.r }

// Bytes returns what is buffered, without consuming it.
func (in *Buffer) Bytes() []byte {
	if in.buf == nil {
		return nil
	}
	return in.buf[in.r:in.w]
}

// Discard consumes n buffered bytes (at most Buffered()).
func (in *Buffer) Discard(n int) { in.r += n }

// room takes a buffer if the input holds none, moves what is buffered to
// its front, and returns the free space after it.
func (in *Buffer) room() []byte {
	in.take()
	if in.r > 0 {
		in.w = copy(in.buf[:], in.buf[in.r:in.w])
		in.r = 0
	}
	return in.buf[in.w:]
}

// fill reads once from Src after what is buffered, moving it to the
// front first. It returns bufio.ErrBufferFull when there is no room.
func (in *Buffer) fill() error {
	if in.err != nil {
		err := in.err
		in.err = nil
		return err
	}
	free := in.room()
	if len(free) == 0 {
		return bufio.ErrBufferFull
	}
	for range 100 { // as bufio: a reader that keeps returning nothing is broken
		n, err := in.Src.Read(free)
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

// Peek returns the next n bytes without consuming them, reading as needed;
// with fewer, the error says why.
func (in *Buffer) Peek(n int) ([]byte, error) {
	if n > Size {
		return in.Bytes(), bufio.ErrBufferFull
	}
	for in.Buffered() < n {
		if err := in.fill(); err != nil {
			return in.Bytes(), err
		}
	}
	if n == 0 {
		return nil, nil // and no buffer taken for it
	}
	return in.buf[in.r : in.r+n], nil
}

// ReadSlice reads up to and including the first delim, as
// bufio.Reader.ReadSlice: the slice is valid until the next read, and
// bufio.ErrBufferFull means the buffer filled first.
func (in *Buffer) ReadSlice(delim byte) ([]byte, error) {
	seen := 0 // bytes after r already searched
	for {
		if in.buf != nil {
			if i := bytes.IndexByte(in.buf[in.r+seen:in.w], delim); i >= 0 {
				line := in.buf[in.r : in.r+seen+i+1]
				in.r += seen + i + 1
				return line, nil
			}
		}
		seen = in.Buffered()
		if seen == Size {
			line := in.buf[in.r:in.w]
			in.r = in.w
			return line, bufio.ErrBufferFull
		}
		if err := in.fill(); err != nil {
			line := in.Bytes()
			in.r = in.w
			return line, err
		}
	}
}

// ReadFD is the poller's read: one read(2) on the socket fd into the free
// room. It reports false when there was nothing to read yet (the buffer
// goes back to the pool meanwhile when empty, and the poller waits for
// input); otherwise true, with the bytes buffered or the end of stream or
// error kept for the next fill.
func (in *Buffer) ReadFD(fd uintptr) bool {
	free := in.room()
	if len(free) == 0 {
		return true
	}
	for {
		n, err := syscall.Read(int(fd), free)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			in.Release()
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
