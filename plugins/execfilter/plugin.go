// Package execfilter runs a program on every message, as IndiMail's
// filters and qmail's QMAILQUEUE wrappers (qmail-qfilter) do: the message
// on the program's standard input, the envelope in its environment, its
// exit code as the verdict and, when it rewrites, its standard output as
// the new message.
package execfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/scanner"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("execfilter", New) }

// Settings are the keys of a [plugins.execfilter] table.
type Settings struct {
	// Command is the program and its arguments, run without a shell:
	// ["/usr/local/bin/myfilter", "-v"]. Write ["/bin/sh", "-c", "..."]
	// for a shell. Required.
	Command []string `toml:"command"`
	// Rewrite takes the program's standard output, when it exits 0, as
	// the new message (header and body). Default false: the output is
	// ignored and the message goes on unchanged.
	Rewrite bool `toml:"rewrite"`
	// Timeout bounds the program's run; past it the program and its
	// children are killed. Default "60s".
	Timeout config.Duration `toml:"timeout"`
	// MaxOutput bounds what a rewriting program may write. Default
	// "50MB".
	MaxOutput config.Bytes `toml:"max_output"`
	// Path is the PATH the program gets. Default "/usr/bin:/bin".
	Path string `toml:"path"`
	// Env sets more environment variables, by name.
	Env map[string]string `toml:"env"`
	// Failure is what a failed run (a timeout, an unknown exit code, a
	// program that cannot start) does: "defer" (the default) or "accept"
	// (deliver unchanged with "X-Filter: <instance> failed").
	Failure string `toml:"failure"`
	// SkipAuthenticated and SkipRelay skip mail from authenticated users
	// and relay clients. Default false.
	SkipAuthenticated bool `toml:"skip_authenticated"`
	SkipRelay         bool `toml:"skip_relay"`
}

// The exit codes, with their meaning in IndiMail's and qmail-qfilter's
// filters.
const (
	ExitAccept = 0 // deliver (the rewritten message with rewrite)
	// ExitDiscard accepts and drops the message: qmail-qfilter's "drop
	// the message". (IndiMail's spawn-filter also reads 2 as a blackhole;
	// Sluice does not, because a shell exits 2 on a syntax error, and a
	// broken filter must not drop mail: it is a failed run.)
	ExitDiscard     = 99
	ExitReject      = 100 // refuse permanently (qmail's hard error)
	ExitRejectAlt   = 31  // the same, qmail-queue's "permanently rejects"
	ExitTempfail    = 111 // refuse temporarily (qmail's soft error)
	ExitTempfailAlt = 71  // the same, qmail-queue's "temporarily refuses"
)

// NoteExit (transaction) is the program's exit code.
var NoteExit = notes.NewKey[int]("execfilter.exit")

// Plugin is an execfilter instance. It is read-only after New and safe
// for concurrent use.
type Plugin struct {
	name      string
	command   []string
	rewrite   bool
	timeout   time.Duration
	maxOutput int64
	env       []string
	failure   scanner.Failure
	skipAuth  bool
	skipRelay bool
}

var (
	_ hooks.DataPost      = (*Plugin)(nil)
	_ hooks.InstanceNamer = (*Plugin)(nil)
)

// New builds an execfilter instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Timeout: config.Duration{Duration: time.Minute}, MaxOutput: 50 << 20, Path: "/usr/bin:/bin"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, errors.New(`command is required: the program and its arguments, such as ["/usr/local/bin/myfilter"]`)
	}
	if _, err := exec.LookPath(s.Command[0]); err != nil || !strings.HasPrefix(s.Command[0], "/") {
		return nil, fmt.Errorf("command = %q: %q must be an absolute path to an executable program", s.Command, s.Command[0])
	}
	p := &Plugin{name: "execfilter", command: s.Command, rewrite: s.Rewrite, timeout: s.Timeout.Duration,
		maxOutput: int64(s.MaxOutput), skipAuth: s.SkipAuthenticated, skipRelay: s.SkipRelay, env: []string{"PATH=" + s.Path}}
	if p.timeout <= 0 {
		return nil, fmt.Errorf("timeout = %s: want a positive duration such as \"60s\"", p.timeout)
	}
	if p.maxOutput <= 0 {
		return nil, fmt.Errorf("max_output = %d: want a positive size such as \"50MB\"", p.maxOutput)
	}
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("env: %q = %q is not a valid environment variable", k, v)
		}
		p.env = append(p.env, k+"="+v)
	}
	var err error
	if p.failure, err = scanner.ParseFailure("failure", s.Failure); err != nil {
		return nil, err
	}
	return p, nil
}

// SetInstanceName learns the instance name, for the logs and the header.
func (p *Plugin) SetInstanceName(name string) { p.name = name }

// environ is the program's environment: PATH, env, and the envelope.
func (p *Plugin) environ(c *connection.Connection, tx *transaction.Transaction) []string {
	env := append([]string(nil), p.env...)
	add := func(k, v string) { env = append(env, k+"="+strings.ReplaceAll(v, "\x00", "")) }
	add("SENDER", tx.Sender)
	add("RECIPIENTS", strings.Join(tx.Recipients, "\n"))
	add("QUEUE_ID", tx.ID)
	add("HELO", c.Helo)
	add("TCPREMOTEIP", c.Remote.Addr().Unmap().String())
	add("TCPREMOTEPORT", fmt.Sprint(c.Remote.Port()))
	add("TCPLOCALIP", c.Local.Addr().Unmap().String())
	add("TCPLOCALPORT", fmt.Sprint(c.Local.Port()))
	if c.RemoteHost != "" {
		add("TCPREMOTEHOST", c.RemoteHost)
	}
	if c.AuthUser != "" {
		add("AUTH_USER", c.AuthUser)
	}
	return env
}

// DataPost runs the program on the message.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if (p.skipAuth && c.AuthUser != "") || (p.skipRelay && c.Relay) {
		return hooks.Result{}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.command[0], p.command[1:]...)
	cmd.Env = p.environ(c, tx)
	cmd.Dir = "/"
	// Its own process group, so that a timeout kills the children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	cmd.Stdin = tx.Message()
	var stderr bytes.Buffer
	cmd.Stderr = &limitWriter{w: &stderr, n: 4096}
	var out *transaction.Spool
	var over bool
	if p.rewrite {
		out = tx.Scratch()
		defer out.Close()
		cmd.Stdout = &limitWriter{w: out, n: p.maxOutput, over: &over}
	}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return p.fail(tx, fmt.Errorf("%s: killed after %s", p.command[0], p.timeout))
	case err != nil && !errors.As(err, &exit):
		return p.fail(tx, fmt.Errorf("run %s: %w", p.command[0], err))
	}
	code := cmd.ProcessState.ExitCode()
	NoteExit.Set(&tx.Notes, code)
	text := firstLine(stderr.String())
	switch code {
	case ExitAccept:
		if !p.rewrite {
			return hooks.Result{}
		}
		if over {
			return p.fail(tx, fmt.Errorf("%s wrote more than max_output (%d bytes)", p.command[0], p.maxOutput))
		}
		if out.Size() == 0 {
			return p.fail(tx, fmt.Errorf("%s exited 0 with rewrite = true but wrote nothing", p.command[0]))
		}
		if err := tx.ReplaceMessage(out.Reader(), transaction.HeaderLimits{}); err != nil {
			return p.fail(tx, fmt.Errorf("take %s's output as the message: %w", p.command[0], err))
		}
		return hooks.Result{}
	case ExitDiscard:
		return hooks.Result{Code: hooks.Done, Detail: fmt.Sprintf("discarded by %s (exit %d)", p.command[0], code)}
	case ExitReject, ExitRejectAlt:
		if text == "" {
			text = "Message refused by a content filter"
		}
		return hooks.Result{Code: hooks.Deny, ReplyCode: 554, Enhanced: [3]int{5, 7, 1}, Msg: text,
			Detail: fmt.Sprintf("%s exited %d", p.command[0], code)}
	case ExitTempfail, ExitTempfailAlt:
		if text == "" {
			text = "Message deferred by a content filter; try again later"
		}
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1}, Msg: text,
			Detail: fmt.Sprintf("%s exited %d", p.command[0], code)}
	}
	return p.fail(tx, fmt.Errorf("%s exited %d, which has no meaning here (0 accept, 99 discard, 100 or 31 refuse, 111 or 71 defer): %s", p.command[0], code, text))
}

func (p *Plugin) fail(tx *transaction.Transaction, err error) hooks.Result {
	return p.failure.Result(tx, p.name, "X-Filter", p.name+" failed", err)
}

// firstLine is the first line of a program's error output, printable
// ASCII only, for the reply.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// limitWriter writes at most n bytes to w, then discards the rest (and
// sets *over), so that a program that writes too much does not block.
type limitWriter struct {
	w    io.Writer
	n    int64
	over *bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		if l.over != nil {
			*l.over = true
		}
		if l.n > 0 {
			l.w.Write(p[:l.n])
		}
		l.n = 0
		return len(p), nil
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}
