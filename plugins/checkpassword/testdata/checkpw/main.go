// Command checkpw is a checkpassword program for the plugin's tests. It
// reads "user\0password\0timestamp\0" from fd 3, strictly, and:
//
//   - exits 111 when CHECKPW_TEMPFAIL=1 is in its environment;
//   - hangs when the user is "hang";
//   - exits 1 for any credentials but alice / s3cret;
//   - for alice / s3cret runs its arguments as a program, as qmail's
//     checkpassword does, and exits 2 when it has none.
//
// Input that breaks the interface (not three NUL-terminated fields, a
// timestamp more than 60 s away, the password in argv or the environment)
// exits 100, so the test sees a temporary failure and the reason on stderr.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "checkpw: "+format+"\n", args...)
	os.Exit(100)
}

func main() {
	fd3 := os.NewFile(3, "fd3")
	if fd3 == nil {
		fail("no fd 3")
	}
	in, err := io.ReadAll(io.LimitReader(fd3, 4096))
	if err != nil {
		fail("read fd 3: %v", err)
	}
	if !bytes.HasSuffix(in, []byte{0}) {
		fail("input does not end with NUL")
	}
	f := strings.Split(string(in[:len(in)-1]), "\x00")
	if len(f) != 3 {
		fail("want 3 NUL-terminated fields, have %d", len(f))
	}
	user, password, stamp := f[0], f[1], f[2]
	ts, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		fail("timestamp %q is not a number", stamp)
	}
	if d := time.Since(time.Unix(ts, 0)); d > time.Minute || d < -time.Minute {
		fail("timestamp %d is %v away from now", ts, d)
	}
	if password != "" {
		for _, s := range append(os.Args, os.Environ()...) {
			if strings.Contains(s, password) {
				fail("the password is in argv or the environment")
			}
		}
	}
	if want := os.Getenv("CHECKPW_WANT_REMOTEIP"); want != "" && os.Getenv("TCPREMOTEIP") != want {
		fail("TCPREMOTEIP=%q, want %q", os.Getenv("TCPREMOTEIP"), want)
	}
	if os.Getenv("CHECKPW_TEMPFAIL") == "1" {
		fmt.Fprintf(os.Stderr, "checkpw: temporary failure for %s (password %s)\n", user, password)
		os.Exit(111)
	}
	if user == "hang" {
		time.Sleep(time.Hour)
	}
	if user != "alice" || password != "s3cret" {
		os.Exit(1)
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "checkpw: usage: checkpw prog [args...]")
		os.Exit(2)
	}
	prog, err := exec.LookPath(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	fail("exec %s: %v", prog, syscall.Exec(prog, os.Args[1:], os.Environ()))
}
