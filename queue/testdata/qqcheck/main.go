// Command qqcheck is a strict qmail-queue(8) protocol checker for tests.
// It reads the whole message from fd 0, then the envelope from fd 1, and
// checks the envelope strictly: "F" sender NUL, one or more "T" recipient
// NUL, a final NUL, then end of file, with no CR, LF or NUL inside an
// address. It writes what it received to the files named by
// QQCHECK_MESSAGE and QQCHECK_ENVELOPE, then:
//
//   - exits 91 when the envelope is bad;
//   - hangs forever when QQCHECK_HANG=1 (before reading anything);
//   - kills itself with SIGKILL when QQCHECK_SIGNAL=1;
//   - writes QQCHECK_FD6 to fd 6 and QQCHECK_STDERR to stderr when set;
//   - exits QQCHECK_EXIT (default 0).
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if os.Getenv("QQCHECK_HANG") == "1" {
		for {
			time.Sleep(time.Hour)
		}
	}
	msg, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(54, "read the message from fd 0: %v", err)
	}
	env, err := io.ReadAll(os.NewFile(1, "envelope"))
	if err != nil {
		fail(54, "read the envelope from fd 1: %v", err)
	}
	save("QQCHECK_MESSAGE", msg)
	save("QQCHECK_ENVELOPE", env)
	if err := checkEnvelope(env); err != nil {
		fail(91, "bad envelope %q: %v", env, err)
	}
	if s := os.Getenv("QQCHECK_FD6"); s != "" {
		os.NewFile(6, "custom").WriteString(s)
	}
	if s := os.Getenv("QQCHECK_STDERR"); s != "" {
		os.Stderr.WriteString(s)
	}
	if os.Getenv("QQCHECK_SIGNAL") == "1" {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	code := 0
	if s := os.Getenv("QQCHECK_EXIT"); s != "" {
		if code, err = strconv.Atoi(s); err != nil {
			fail(81, "QQCHECK_EXIT=%q: %v", s, err)
		}
	}
	os.Exit(code)
}

// checkEnvelope validates the envelope's grammar.
func checkEnvelope(env []byte) error {
	rest, err := field(env, 'F')
	if err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	n := 0
	for len(rest) > 0 && rest[0] == 'T' {
		if rest, err = field(rest, 'T'); err != nil {
			return fmt.Errorf("recipient %d: %w", n+1, err)
		}
		n++
	}
	switch {
	case n == 0:
		return fmt.Errorf("no recipient")
	case len(rest) == 0:
		return fmt.Errorf("missing the final NUL")
	case rest[0] != 0:
		return fmt.Errorf("unexpected byte %q where a recipient or the final NUL belongs", rest[0])
	case len(rest) > 1:
		return fmt.Errorf("%d bytes after the final NUL", len(rest)-1)
	}
	return nil
}

// field reads one record: the tag, an address without CR or LF, then NUL.
func field(b []byte, tag byte) ([]byte, error) {
	if len(b) == 0 || b[0] != tag {
		return nil, fmt.Errorf("want %q", tag)
	}
	end := bytes.IndexByte(b, 0)
	if end < 0 {
		return nil, fmt.Errorf("no terminating NUL")
	}
	if bytes.ContainsAny(b[1:end], "\r\n") {
		return nil, fmt.Errorf("CR or LF in address %q", b[1:end])
	}
	return b[end+1:], nil
}

func save(env string, data []byte) {
	if path := os.Getenv(env); path != "" {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			fail(53, "write %s: %v", path, err)
		}
	}
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "qqcheck: "+format+"\n", args...)
	os.Exit(code)
}
