// Package checkpassword checks AUTH credentials with an external program
// that speaks the checkpassword interface of qmail (D. J. Bernstein's
// checkpassword, vpopmail's vchkpw, checkpassword-pam, ...). It is
// qpsmtpd's auth_checkpassword.
//
// The program runs with the configured args and reads
// "user\0password\0timestamp\0" from file descriptor 3; the password never
// appears in its arguments or environment. Its exit status decides: 0
// accepts, 1 refuses the credentials, 111 (or anything else, a crash, a
// timeout, a program that cannot start) is a temporary failure.
//
// A checkpassword program runs its own arguments as a program once the
// password is right ("checkpassword prog args..." runs prog); with
// args = ["/bin/true"] the exit status is then true's: 0.
package checkpassword

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
)

func init() { hooks.Register("checkpassword", New) }

// Settings are the keys of a [plugins.checkpassword] table.
type Settings struct {
	// Program is the checkpassword program: a path, or a name looked up in
	// $PATH when the plugin is built. Required.
	Program string `toml:"program"`
	// Args are the program's arguments; checkpassword programs run them as
	// a program after a successful check, so ["/bin/true"] is usual.
	Args []string `toml:"args"`
	// Timeout bounds one run of the program; it is killed past it.
	// Default "10s".
	Timeout config.Duration `toml:"timeout"`
}

// DefaultTimeout is the timeout setting's default.
const DefaultTimeout = 10 * time.Second

// The exit statuses of the checkpassword interface.
const (
	exitOK        = 0
	exitBad       = 1
	exitMisuse    = 2
	exitTemporary = 111
)

// stderrMax bounds what is kept of the program's standard error for the log.
const stderrMax = 1024

// Plugin is a checkpassword instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	program string
	args    []string
	timeout time.Duration
}

var _ hooks.Auth = (*Plugin)(nil)

// New builds a checkpassword instance from its settings; the program must
// exist and be executable.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Timeout: config.Duration{Duration: DefaultTimeout}}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.Program == "" {
		return nil, errors.New("program: required: the checkpassword program, as in qmail's `checkpassword /bin/true`")
	}
	prog, err := exec.LookPath(s.Program)
	if err != nil {
		return nil, fmt.Errorf("program: %w", err)
	}
	if prog, err = filepath.Abs(prog); err != nil {
		return nil, fmt.Errorf("program: %w", err)
	}
	if info, err := os.Stat(prog); err != nil || !info.Mode().IsRegular() {
		return nil, fmt.Errorf("program: %s is not a regular file", prog)
	}
	if s.Timeout.Duration <= 0 {
		return nil, fmt.Errorf("timeout: %v: want a positive duration like \"10s\"", s.Timeout.Duration)
	}
	return &Plugin{program: prog, args: s.Args, timeout: s.Timeout.Duration}, nil
}

// Auth runs the program with the credentials on its fd 3.
func (p *Plugin) Auth(ctx context.Context, c *connection.Connection, _, user, password string) hooks.Result {
	// The fields are NUL-terminated: a NUL inside one would shift them.
	if user == "" || strings.ContainsRune(user, 0) || strings.ContainsRune(password, 0) {
		return hooks.Result{Code: hooks.Deny}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	r, w, err := os.Pipe()
	if err != nil {
		return hooks.Fail(fmt.Errorf("checkpassword: pipe: %w", err))
	}
	defer w.Close() // closed early below; this covers the error paths
	cmd := exec.CommandContext(ctx, p.program, p.args...)
	cmd.ExtraFiles = []*os.File{r} // the child's fd 3
	cmd.Env = append(os.Environ(), connEnv(c)...)
	stderr := &limitedBuffer{max: stderrMax}
	cmd.Stderr = stderr
	// Its own process group, so that a timeout kills a wrapper script's
	// children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err = cmd.Start()
	r.Close() // the child has its copy
	if err != nil {
		return hooks.Fail(fmt.Errorf("checkpassword: start %s: %w", p.program, err))
	}

	// A pipe holds 64 KiB and SMTP lines are shorter: the write does not
	// block on a program that reads nothing, but the deadline covers it.
	if d, ok := ctx.Deadline(); ok {
		w.SetWriteDeadline(d)
	}
	_, werr := w.Write([]byte(user + "\x00" + password + "\x00" + strconv.FormatInt(time.Now().Unix(), 10) + "\x00"))
	w.Close()
	err = cmd.Wait()
	code := cmd.ProcessState.ExitCode()

	why := func(format string, args ...any) hooks.Result {
		msg := fmt.Sprintf(format, args...)
		out := stderr.String()
		if password != "" {
			out = strings.ReplaceAll(out, password, "[password]")
		}
		if out = strings.TrimSpace(out); out != "" {
			msg += "; its stderr: " + strconv.Quote(out)
		}
		return hooks.Fail(fmt.Errorf("checkpassword: %s %s", p.program, msg))
	}
	switch {
	case code < 0 && ctx.Err() != nil:
		return why("killed: no answer within the timeout (%v) or the hook's deadline", p.timeout)
	case code < 0:
		return why("died: %v", err)
	case code == exitOK && werr != nil:
		// It exited 0 without reading the credentials: fail closed.
		return why("exited 0 without reading the credentials on fd 3 (%v)", werr)
	case code == exitOK:
		return hooks.Accept("")
	case code == exitBad:
		return hooks.Result{Code: hooks.Deny}
	case code == exitTemporary:
		return why("exit status 111: temporary failure")
	case code == exitMisuse:
		return why("exit status 2: the program was misused (check program and args)")
	default:
		return why("exit status %d: neither 0 (accept), 1 (refuse) nor 111 (temporary)", code)
	}
}

// connEnv describes the client as ucspi-tcp's tcpserver does for qmail,
// for programs that log or decide by address (vchkpw reads TCPREMOTEIP).
func connEnv(c *connection.Connection) []string {
	if c == nil {
		return nil
	}
	var env []string
	if c.Remote.IsValid() {
		env = append(env, "PROTO=TCP", "TCPREMOTEIP="+c.RemoteIP().String(), "TCPREMOTEPORT="+strconv.Itoa(int(c.Remote.Port())))
	}
	if c.Local.IsValid() {
		env = append(env, "TCPLOCALIP="+c.Local.Addr().Unmap().String(), "TCPLOCALPORT="+strconv.Itoa(int(c.Local.Port())))
	}
	return env
}

// limitedBuffer keeps the first max bytes written to it and drops the rest.
type limitedBuffer struct {
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string { return b.buf.String() }
