// Package external runs a plugin written in any language: a long-lived
// child process that speaks a line protocol of JSON objects on its
// standard input and output (one request and one response per hook call).
// The protocol is in docs/plugins.md ("Plugins in any language"); the
// examples folder has a Python and a shell plugin. It plays the part of
// qpsmtpd's and Haraka's plugins in Perl and JavaScript for a Go program.
package external

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("external", New) }

// Settings are the keys of a [plugins.NAME] table with use = "external".
type Settings struct {
	// Command is the program and its arguments, run as they are (no shell:
	// write ["sh", "-c", "..."] for one). The program is looked up in
	// $PATH, or taken as a path when it has a slash (from Dir when it is
	// relative and Dir is set). Required.
	Command []string `toml:"command"`
	// Dir is the program's working directory. Default: smtpd's.
	Dir string `toml:"dir"`
	// Env are variables added to smtpd's environment for the program.
	Env map[string]string `toml:"env"`
	// Timeout bounds one call: past it (or past the hook's deadline, when
	// that comes first) the call fails and the program is killed and
	// restarted. Default "5s".
	Timeout config.Duration `toml:"timeout"`
	// StartTimeout bounds the start: from running the program to its
	// handshake. Default "10s".
	StartTimeout config.Duration `toml:"start_timeout"`
	// OnFailure is what a failed call means (no answer in time, the
	// program down, a reply that breaks the protocol): "defer" (default:
	// the hook's local error, 451 4.3.0 at most hooks) or "decline" (the
	// plugin is skipped, as if it had no opinion; logged at ERROR).
	OnFailure string `toml:"on_failure"`
	// MaxBody is the largest message sent whole (base64) at data_post and
	// queue_pre; 0 (the default) sends none.
	MaxBody config.Bytes `toml:"max_body"`
	// RestartBackoff is the wait before the first restart after the program
	// exited or was killed; it doubles with each restart that fails again,
	// up to RestartBackoffMax, and starts over once a call succeeds.
	// Default "100ms".
	RestartBackoff config.Duration `toml:"restart_backoff"`
	// RestartBackoffMax caps the wait between restarts. Default "30s".
	RestartBackoffMax config.Duration `toml:"restart_backoff_max"`
}

// The settings' defaults.
const (
	DefaultTimeout           = 5 * time.Second
	DefaultStartTimeout      = 10 * time.Second
	DefaultRestartBackoff    = 100 * time.Millisecond
	DefaultRestartBackoffMax = 30 * time.Second
)

// stopGrace is how long Close waits after closing the program's input,
// and after SIGTERM, before the next step.
const stopGrace = 2 * time.Second

// Plugin is an external instance: one program, started by New, restarted
// when it dies. It is safe for concurrent use.
type Plugin struct {
	argv      []string
	dir       string
	env       []string
	timeout   time.Duration
	start0    time.Duration
	declines  bool // on_failure = "decline"
	maxBody   int64
	backoff0  time.Duration
	backoffMx time.Duration
	hello     []byte
	grace     time.Duration // Close's wait between steps

	// Set by the first handshake, read-only after New.
	declared   [32]bool // by hooks.Hook
	concurrent bool

	name atomic.Pointer[string]
	log  atomic.Pointer[slog.Logger]
	ids  atomic.Uint64

	turn chan struct{} // held by the one call under way, unless the program is concurrent

	mu       sync.Mutex
	proc     *process // nil while down
	retryAt  time.Time
	backoff  time.Duration
	lastErr  error         // why it is down
	starting chan struct{} // closed when the start under way ends; nil when none is
	closed   bool
}

// The hooks the plugin implements; each declines at once unless the
// program declared it. Not auth, not queue: see forwarded.
var (
	_ hooks.Connect        = (*Plugin)(nil)
	_ hooks.Helo           = (*Plugin)(nil)
	_ hooks.Ehlo           = (*Plugin)(nil)
	_ hooks.Mail           = (*Plugin)(nil)
	_ hooks.Rcpt           = (*Plugin)(nil)
	_ hooks.RcptOK         = (*Plugin)(nil)
	_ hooks.Data           = (*Plugin)(nil)
	_ hooks.DataHeadersEnd = (*Plugin)(nil)
	_ hooks.DataPost       = (*Plugin)(nil)
	_ hooks.QueuePre       = (*Plugin)(nil)
	_ hooks.Reset          = (*Plugin)(nil)
	_ hooks.Disconnect     = (*Plugin)(nil)
	_ hooks.Vrfy           = (*Plugin)(nil)
	_ hooks.Noop           = (*Plugin)(nil)
	_ hooks.Help           = (*Plugin)(nil)
	_ hooks.Quit           = (*Plugin)(nil)
	_ hooks.Unrecognized   = (*Plugin)(nil)
	_ hooks.InstanceNamer  = (*Plugin)(nil)
)

// New checks the settings, starts the program and reads its handshake: a
// program that cannot be found, does not start or declares a hook the
// plugin cannot forward is a configuration error.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{
		Timeout:           config.Duration{Duration: DefaultTimeout},
		StartTimeout:      config.Duration{Duration: DefaultStartTimeout},
		OnFailure:         "defer",
		RestartBackoff:    config.Duration{Duration: DefaultRestartBackoff},
		RestartBackoffMax: config.Duration{Duration: DefaultRestartBackoffMax},
	}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, errors.New(`command: required: the program and its arguments, such as ["python3", "/etc/sluice/blocklist.py"]`)
	}
	argv := slices.Clone(s.Command)
	if s.Dir != "" {
		info, err := os.Stat(s.Dir)
		if err != nil {
			return nil, fmt.Errorf("dir: %w", err)
		}
		if !info.IsDir() {
			return nil, fmt.Errorf("dir: %q is not a directory", s.Dir)
		}
	}
	prog := argv[0]
	if s.Dir != "" && strings.Contains(prog, "/") && !filepath.IsAbs(prog) {
		prog = filepath.Join(s.Dir, prog) // the child runs in dir
	}
	prog, err := exec.LookPath(prog)
	if err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	argv[0] = prog
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"timeout", s.Timeout.Duration}, {"start_timeout", s.StartTimeout.Duration},
		{"restart_backoff", s.RestartBackoff.Duration}, {"restart_backoff_max", s.RestartBackoffMax.Duration},
	} {
		if d.v <= 0 {
			return nil, fmt.Errorf("%s: %v: want a positive duration like \"5s\"", d.name, d.v)
		}
	}
	if s.RestartBackoffMax.Duration < s.RestartBackoff.Duration {
		return nil, fmt.Errorf("restart_backoff_max: %v is less than restart_backoff (%v)", s.RestartBackoffMax.Duration, s.RestartBackoff.Duration)
	}
	if s.MaxBody < 0 {
		return nil, fmt.Errorf("max_body: %d: want 0 (no message) or a size", s.MaxBody)
	}
	switch s.OnFailure {
	case "defer", "decline":
	default:
		return nil, fmt.Errorf("on_failure = %q: want \"defer\" or \"decline\"", s.OnFailure)
	}
	env := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("env: %q is not a variable name", k)
		}
		env = append(env, k+"="+s.Env[k])
	}
	p := &Plugin{
		argv: argv, dir: s.Dir, env: env,
		timeout: s.Timeout.Duration, start0: s.StartTimeout.Duration,
		declines: s.OnFailure == "decline", maxBody: int64(s.MaxBody),
		backoff0: s.RestartBackoff.Duration, backoffMx: s.RestartBackoffMax.Duration,
		backoff: s.RestartBackoff.Duration, grace: stopGrace,
		turn: make(chan struct{}, 1),
	}
	names := make([]string, len(forwarded))
	for i, h := range forwarded {
		names[i] = h.String()
	}
	p.hello, _ = json.Marshal(hello{Sluice: Version, Hooks: names, Timeout: p.timeout.Milliseconds(), MaxBody: p.maxBody})
	p.hello = append(p.hello, '\n')

	pr, h, err := p.start()
	if err != nil {
		return nil, fmt.Errorf("command %q: %w", s.Command, err)
	}
	if err := p.declare(h); err != nil {
		pr.stop(stopGrace)
		return nil, fmt.Errorf("command %q: handshake: %w", s.Command, err)
	}
	p.proc = pr
	return p, nil
}

// declare records the hooks and the mode of the first handshake.
func (p *Plugin) declare(h *handshake) (err error) {
	p.declared, err = hookSet(h)
	p.concurrent = h.Concurrent
	return err
}

// hookSet returns the hooks a handshake declares, by hooks.Hook.
func hookSet(h *handshake) (set [32]bool, err error) {
	if len(h.Hooks) == 0 {
		return set, errors.New(`it declares no hook: answer the hello with {"hooks": ["rcpt", ...]}`)
	}
	for _, name := range h.Hooks {
		hk, ok := hooks.ParseHook(name)
		if !ok || !slices.Contains(forwarded, hk) {
			return set, fmt.Errorf("hook %q: the external plugin forwards only %v", name, forwarded)
		}
		set[hk] = true
	}
	return set, nil
}

// SetInstanceName is told the instance name by the chain: the program's
// notes are named after it.
func (p *Plugin) SetInstanceName(name string) { p.name.Store(&name) }

func (p *Plugin) instance() string {
	if n := p.name.Load(); n != nil {
		return *n
	}
	return "external"
}

func (p *Plugin) logger() *slog.Logger {
	if l := p.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// Close ends the program: its input closed, then SIGTERM, then SIGKILL,
// two seconds apart. Calls after Close fail.
func (p *Plugin) Close() error {
	p.mu.Lock()
	p.closed = true
	starting := p.starting
	p.mu.Unlock()
	if starting != nil {
		<-starting // the start sees closed and stops what it started
	}
	p.mu.Lock()
	pr := p.proc
	p.proc = nil
	p.mu.Unlock()
	if pr != nil {
		pr.stop(p.grace)
	}
	return nil
}

// running returns the running process. When the program is down and its
// back-off has passed, it starts it again in the background, under
// start_timeout rather than the call's deadline (an interpreter may take
// longer to start than a call may last), and waits for it until the
// call's deadline.
func (p *Plugin) running(ctx context.Context, deadline time.Time) (*process, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for waited := false; ; waited = true {
		if p.closed {
			return nil, errStopped
		}
		if pr := p.proc; pr != nil {
			select {
			case <-pr.dead:
				p.downLocked(pr, pr.reason())
			default:
				return pr, nil
			}
		}
		if p.starting == nil {
			if waited {
				return nil, fmt.Errorf("the program did not start: %w", p.lastErr)
			}
			if wait := time.Until(p.retryAt); wait > 0 {
				return nil, fmt.Errorf("the program is down (%v); next start in %v", p.lastErr, wait.Round(time.Millisecond))
			}
			p.starting = make(chan struct{})
			go p.restart(p.starting)
		}
		starting := p.starting
		p.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-starting:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		p.mu.Lock()
		if p.proc == nil && p.starting == starting {
			return nil, errors.New("the program is starting again and did not answer the hello in time for this call")
		}
	}
}

// restart starts the program again and closes done.
func (p *Plugin) restart(done chan struct{}) {
	pr, h, err := p.start()
	p.mu.Lock()
	defer func() {
		p.starting = nil
		p.mu.Unlock()
		close(done)
	}()
	switch {
	case err != nil:
		p.logger().Error("external program did not start", "plugin", p.instance(), "err", err.Error())
		p.backOffLocked(err)
	case p.closed:
		pr.stop(p.grace)
	default:
		if !p.sameHooks(h) {
			p.logger().Warn("external program declares other hooks than at start: the first declaration stays until a reload",
				"plugin", p.instance(), "hooks", h.Hooks)
		}
		p.proc = pr
	}
}

// sameHooks reports whether a later handshake declares what the first did.
func (p *Plugin) sameHooks(h *handshake) bool {
	set, err := hookSet(h)
	return err == nil && set == p.declared && h.Concurrent == p.concurrent
}

// down kills pr, if it is still the running process, and schedules the
// next start after the back-off.
func (p *Plugin) down(pr *process, why error) {
	p.mu.Lock()
	p.downLocked(pr, why)
	p.mu.Unlock()
}

func (p *Plugin) downLocked(pr *process, why error) {
	pr.kill(why)
	if p.proc != pr {
		return
	}
	p.proc = nil
	p.backOffLocked(why)
}

// backOffLocked records why the program is down and puts its next start
// off by the back-off, which doubles for the next time.
func (p *Plugin) backOffLocked(why error) {
	p.lastErr = why
	p.retryAt = time.Now().Add(p.backoff)
	p.backoff = min(2*p.backoff, p.backoffMx)
}

// succeeded starts the back-off over.
func (p *Plugin) succeeded() {
	p.mu.Lock()
	p.backoff = p.backoff0
	p.mu.Unlock()
}

// call forwards one hook call to the program and returns its result, or
// the failure action.
func (p *Plugin) call(ctx context.Context, hook hooks.Hook, c *connection.Connection, tx *transaction.Transaction, kv ...string) hooks.Result {
	if !p.declared[hook] {
		return hooks.Result{}
	}
	r, err := p.roundTrip(ctx, hook, c, tx, kv)
	if err == nil {
		return r
	}
	err = fmt.Errorf("external plugin %s (%s): %s hook: %w", p.instance(), p.argv[0], hook, err)
	if p.declines {
		p.logger().Error("external plugin failed: declining (on_failure = \"decline\")", "plugin", p.instance(), "hook", hook.String(), "err", err.Error())
		return hooks.Result{}
	}
	return hooks.Fail(err)
}

// notify is call for the hooks whose result does not count: a failure is
// only logged.
func (p *Plugin) notify(ctx context.Context, hook hooks.Hook, c *connection.Connection, tx *transaction.Transaction, kv ...string) {
	if !p.declared[hook] {
		return
	}
	if _, err := p.roundTrip(ctx, hook, c, tx, kv); err != nil {
		p.logger().Error("external plugin failed", "plugin", p.instance(), "hook", hook.String(), "err", err.Error())
	}
}

func (p *Plugin) roundTrip(ctx context.Context, hook hooks.Hook, c *connection.Connection, tx *transaction.Transaction, kv []string) (hooks.Result, error) {
	if !p.concurrent {
		// Wait for the call under way no longer than the hook may last.
		select {
		case p.turn <- struct{}{}:
			defer func() { <-p.turn }()
		case <-ctx.Done():
			return hooks.Result{}, fmt.Errorf("the hook's deadline passed while the program was busy with another call (%w)", ctx.Err())
		}
	}
	deadline, hookFirst := time.Now().Add(p.timeout), false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, hookFirst = d, true
	}
	pr, err := p.running(ctx, deadline)
	if err != nil {
		return hooks.Result{}, err
	}
	if ctx.Err() != nil || !time.Now().Before(deadline) {
		// Waiting for a start used it all: the program is not to blame.
		return hooks.Result{}, errors.New("no time left to send the request")
	}

	req := request{ID: p.ids.Add(1), Hook: hook.String(), Connection: connectionInfo(c), Args: args(kv...)}
	if tx != nil {
		if req.Transaction, err = transactionInfo(hook, tx, p.maxBody); err != nil {
			return hooks.Result{}, err
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&req); err != nil { // one line: Encode ends it with \n
		return hooks.Result{}, fmt.Errorf("encoding the request: %w", err)
	}

	ch := make(chan *response, 1)
	if err := pr.register(req.ID, ch); err != nil {
		p.down(pr, err)
		return hooks.Result{}, err
	}
	if err := pr.write(buf.Bytes(), deadline); err != nil {
		pr.unregister(req.ID)
		err = fmt.Errorf("sending the request: %w", err)
		p.down(pr, err)
		return hooks.Result{}, err
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	var resp *response
	select {
	case resp = <-ch:
	case <-pr.dead:
		select {
		case resp = <-ch: // it answered, then died
		default:
			pr.unregister(req.ID)
			err := fmt.Errorf("the program died: %w", pr.reason())
			p.down(pr, err)
			return hooks.Result{}, err
		}
	case <-t.C:
		pr.unregister(req.ID)
		err := fmt.Errorf("no answer within the timeout (%v): killed, it restarts", p.timeout)
		if hookFirst {
			err = errors.New("no answer before the hook's deadline: killed, it restarts")
		}
		p.down(pr, err)
		return hooks.Result{}, err
	case <-ctx.Done():
		pr.unregister(req.ID)
		err := fmt.Errorf("the hook's deadline passed before the answer (%w): killed, it restarts", ctx.Err())
		p.down(pr, err)
		return hooks.Result{}, err
	}

	res, err := resp.result()
	if err != nil {
		return hooks.Result{}, err
	}
	if tx != nil {
		err = setNotes(&tx.Notes, p.instance(), resp.Notes)
	} else {
		err = setNotes(&c.Notes, p.instance(), resp.Notes)
	}
	if err == nil {
		err = setNotes(&c.Notes, p.instance(), resp.ConnectionNotes)
	}
	if err != nil {
		return hooks.Result{}, err
	}
	p.succeeded()
	return res, nil
}

// Connect forwards the connect hook.
func (p *Plugin) Connect(ctx context.Context, c *connection.Connection) hooks.Result {
	return p.call(ctx, hooks.HookConnect, c, nil)
}

// Helo forwards the helo hook.
func (p *Plugin) Helo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.call(ctx, hooks.HookHelo, c, nil, "host", host)
}

// Ehlo forwards the ehlo hook.
func (p *Plugin) Ehlo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.call(ctx, hooks.HookEhlo, c, nil, "host", host)
}

// Mail forwards the mail hook.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	return p.call(ctx, hooks.HookMail, c, tx, "sender", from)
}

// Rcpt forwards the rcpt hook.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	return p.call(ctx, hooks.HookRcpt, c, tx, "recipient", rcpt)
}

// RcptOK forwards the rcpt_ok hook.
func (p *Plugin) RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) {
	p.notify(ctx, hooks.HookRcptOK, c, tx, "recipient", rcpt)
}

// Data forwards the data hook.
func (p *Plugin) Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return p.call(ctx, hooks.HookData, c, tx)
}

// DataHeadersEnd forwards the data_headers_end hook, with the header.
func (p *Plugin) DataHeadersEnd(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return p.call(ctx, hooks.HookDataHeadersEnd, c, tx)
}

// DataPost forwards the data_post hook, with the header, the size and,
// up to max_body, the message.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return p.call(ctx, hooks.HookDataPost, c, tx)
}

// QueuePre forwards the queue_pre hook, as data_post.
func (p *Plugin) QueuePre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return p.call(ctx, hooks.HookQueuePre, c, tx)
}

// Reset forwards the reset_transaction hook.
func (p *Plugin) Reset(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) {
	p.notify(ctx, hooks.HookReset, c, tx)
}

// Disconnect forwards the disconnect hook.
func (p *Plugin) Disconnect(ctx context.Context, c *connection.Connection) {
	p.notify(ctx, hooks.HookDisconnect, c, nil)
}

// Vrfy forwards the vrfy hook.
func (p *Plugin) Vrfy(ctx context.Context, c *connection.Connection, addr string) hooks.Result {
	return p.call(ctx, hooks.HookVrfy, c, nil, "address", addr)
}

// Noop forwards the noop hook.
func (p *Plugin) Noop(ctx context.Context, c *connection.Connection) hooks.Result {
	return p.call(ctx, hooks.HookNoop, c, nil)
}

// Help forwards the help hook.
func (p *Plugin) Help(ctx context.Context, c *connection.Connection, topic string) hooks.Result {
	return p.call(ctx, hooks.HookHelp, c, nil, "topic", topic)
}

// Quit forwards the quit hook.
func (p *Plugin) Quit(ctx context.Context, c *connection.Connection) hooks.Result {
	return p.call(ctx, hooks.HookQuit, c, nil)
}

// Unrecognized forwards the unrecognized_command hook.
func (p *Plugin) Unrecognized(ctx context.Context, c *connection.Connection, cmd, arg string) hooks.Result {
	return p.call(ctx, hooks.HookUnrecognized, c, nil, "command", cmd, "argument", arg)
}
