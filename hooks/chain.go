package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

// DefaultTimeout bounds one hook's run through the whole chain.
const DefaultTimeout = 30 * time.Second

// DefaultQueueTimeout bounds the queue hook's run.
const DefaultQueueTimeout = 10 * time.Minute

// Instance is one configured plugin: its instance name (the config key) and
// the value its constructor returned.
type Instance struct {
	Name   string
	Plugin any
	// ObserveOnly is the instance's `enforce = false`: its refusals (any
	// Deny code, and its failures) do not refuse. The chain logs a "plugin
	// would refuse" line with the reply the client would have had, adds
	// the Decision to NoteWouldRefuse and goes on as if the plugin had
	// declined. Its OK and Done stand.
	ObserveOnly bool
}

// Options tune a Chain.
type Options struct {
	// Timeout bounds each hook's run through the chain; the plugins' ctx
	// carries it. Zero means DefaultTimeout.
	Timeout time.Duration
	// QueueTimeout bounds the queue hook, which hands the whole message to
	// a queue (RFC 5321 4.5.3.2.6 gives the client 10 minutes for the reply
	// to the final dot). Zero means DefaultQueueTimeout.
	QueueTimeout time.Duration
	// Logger receives plugin errors, panics and timeouts. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Meter, when set, is told the time of every plugin call and of every
	// hook's whole run (monitor.Recorder is one). Nil costs nothing.
	Meter Meter
}

// Meter times a chain's hooks and plugins. NewChain asks it once per
// hook, and per plugin at each hook it implements, for the function that
// records their durations; the calls then cost a clock reading and that
// function. A reload's new chain asks the same Meter again, so the
// figures go on across reloads.
type Meter interface {
	// Timer returns the recorder of plugin's calls at hook, or with
	// plugin "" of the hook's whole runs (every plugin it called).
	Timer(hook, plugin string) func(time.Duration)
}

// entry is one plugin at one hook.
type entry struct {
	name        string
	p           any // implements the hook's interface
	observeOnly bool
	timer       func(time.Duration) // the Meter's, nil without one
}

// Chain is a listener's ordered plugin list, split per hook when it is
// built. Plugins run in config order until one returns something other than
// Declined. A Chain is immutable and safe for concurrent use; a reload builds
// a new one.
type Chain struct {
	timeout      time.Duration
	queueTimeout time.Duration
	log          *slog.Logger

	plugins [hookCount][]entry             // per hook, the plugins that implement it, in config order
	timers  [hookCount]func(time.Duration) // per hook, the Meter's for its whole run; nil without one
	closers []entry                        // the plugins that implement io.Closer
	names   []string
	maxSize int64
	dsn     bool
}

// NewChain builds a chain from plugin instances in execution order. A plugin
// that implements no hook is an error.
func NewChain(instances []Instance, opts Options) (*Chain, error) {
	ch := &Chain{timeout: opts.Timeout, log: opts.Logger}
	if ch.timeout <= 0 {
		ch.timeout = DefaultTimeout
	}
	ch.queueTimeout = opts.QueueTimeout
	if ch.queueTimeout <= 0 {
		ch.queueTimeout = DefaultQueueTimeout
	}
	if ch.log == nil {
		ch.log = slog.Default()
	}
	dsn := true
	for _, in := range instances {
		p, n := in.Plugin, in.Name
		hs := HooksOf(p)
		if len(hs) == 0 {
			return nil, fmt.Errorf("plugin %q (%T) implements no hook", n, p)
		}
		for _, h := range hs {
			ch.plugins[h] = append(ch.plugins[h], entry{name: n, p: p, observeOnly: in.ObserveOnly})
		}
		if _, ok := p.(io.Closer); ok {
			ch.closers = append(ch.closers, entry{name: n, p: p})
		}
		if l, ok := p.(SizeLimiter); ok {
			if m := l.MaxMessageBytes(); m > 0 && (ch.maxSize == 0 || m < ch.maxSize) {
				ch.maxSize = m
			}
		}
		if nm, ok := p.(InstanceNamer); ok {
			nm.SetInstanceName(n)
		}
		if implements[Queue](p) {
			d, ok := p.(DSNCarrier)
			dsn = dsn && ok && d.CarriesDSN()
		}
		ch.names = append(ch.names, n)
	}
	if opts.Meter != nil {
		for h := range Hook(hookCount) {
			list := ch.plugins[h]
			if len(list) == 0 {
				continue
			}
			ch.timers[h] = opts.Meter.Timer(h.String(), "")
			for i := range list {
				list[i].timer = opts.Meter.Timer(h.String(), list[i].name)
			}
		}
	}
	ch.dsn = dsn && ch.HasQueue()
	return ch, nil
}

// Plugins returns the instance names in execution order.
func (ch *Chain) Plugins() []string { return ch.names }

// MaxMessageBytes returns the smallest size cap of the chain's
// SizeLimiter plugins, or 0 when none caps it.
func (ch *Chain) MaxMessageBytes() int64 { return ch.maxSize }

// Deadlines returns the time the chain gives each hook's plugins, and the
// queue hook's.
func (ch *Chain) Deadlines() (hook, queue time.Duration) { return ch.timeout, ch.queueTimeout }

// HasQueue reports whether some plugin takes messages at the queue hook.
func (ch *Chain) HasQueue() bool { return len(ch.plugins[HookQueue]) > 0 }

// CarriesDSN reports whether the chain has a queue plugin and every queue
// plugin is a DSNCarrier that answered true when the chain was built: only
// then may the server offer DSN (RFC 3461).
func (ch *Chain) CarriesDSN() bool { return ch.dsn }

// Close runs the io.Closer of every plugin that has one, once the chain is
// no longer used (after a reload or at shutdown).
func (ch *Chain) Close() error {
	var errs []error
	for _, e := range ch.closers {
		if err := e.p.(io.Closer).Close(); err != nil {
			errs = append(errs, fmt.Errorf("plugin %s: close: %w", e.name, err))
		}
	}
	return errors.Join(errs...)
}

// run calls each plugin of the hook in order until one does not decline,
// under the chain's deadline, and tells the observers. It returns the
// deciding plugin's Decision, or a Decision with a Declined result when all
// declined.
func (ch *Chain) run(ctx context.Context, hook Hook, c *connection.Connection, tx *transaction.Transaction, call func(context.Context, any) Result) Decision {
	list := ch.plugins[hook]
	if len(list) == 0 {
		return Decision{Hook: hook}
	}
	hc := newHookContext(ctx, ch.deadline(hook))
	defer hc.end()
	m := ch.meter(hook)
	for _, e := range list {
		r := ch.callOne(hc, hook, c, e, call)
		m.plugin(e)
		if r.Code == Declined {
			continue
		}
		d := Decision{Hook: hook, Plugin: e.name, Result: r}
		if e.observeOnly && r.Code.Rejects() {
			ch.wouldRefuse(c, tx, d)
			continue
		}
		m.end()
		// The observers get their own deadline: the deciding plugin may
		// have spent this hook's (a timeout is a DenySoft to report).
		ch.observe(ctx, c, d)
		return d
	}
	m.end()
	return Decision{Hook: hook}
}

// hookMeter times one run of a hook and its plugins for the chain's
// Meter; without one it does nothing, and reads no clock.
type hookMeter struct {
	timer       func(time.Duration) // the hook's; nil: no Meter
	start, last time.Time
}

func (ch *Chain) meter(hook Hook) hookMeter {
	t := ch.timers[hook]
	if t == nil {
		return hookMeter{}
	}
	now := time.Now()
	return hookMeter{timer: t, start: now, last: now}
}

// plugin records the time e took since the last plugin (or the start).
func (m *hookMeter) plugin(e entry) {
	if m.timer == nil {
		return
	}
	now := time.Now()
	e.timer(now.Sub(m.last))
	m.last = now
}

// end records the hook's run, up to the last plugin's end.
func (m *hookMeter) end() {
	if m.timer != nil {
		m.timer(m.last.Sub(m.start))
	}
}

// deadline is how long hook may take through the chain.
func (ch *Chain) deadline(hook Hook) time.Duration {
	if hook == HookQueue {
		return ch.queueTimeout
	}
	return ch.timeout
}

// runAll calls every plugin of the hook, for hooks whose results do not
// count (rcpt_ok, queue_post, reset_transaction, disconnect, the observers).
func (ch *Chain) runAll(ctx context.Context, hook Hook, c *connection.Connection, call func(context.Context, any)) {
	list := ch.plugins[hook]
	if len(list) == 0 {
		return
	}
	hc := newHookContext(ctx, ch.deadline(hook))
	defer hc.end()
	m := ch.meter(hook)
	for _, e := range list {
		ch.callOne(hc, hook, c, e, func(ctx context.Context, p any) Result {
			call(ctx, p)
			return Result{}
		})
		m.plugin(e)
	}
	m.end()
}

// callOne runs one plugin and fails closed: a panic, an error with a
// non-rejecting code, a code that is not one of the constants or a blown
// deadline becomes DenySoft, logged at ERROR with the plugin's name (and
// the stack for a panic). A rejection that carries an Err is logged too:
// at ERROR when it is a failure (Fail: a DenySoft with no words of its
// own), at WARN when it is a policy that explains itself.
func (ch *Chain) callOne(ctx *hookContext, hook Hook, c *connection.Connection, e entry, call func(context.Context, any) Result) (r Result) {
	defer func() {
		if v := recover(); v != nil {
			ch.logAt(slog.LevelError, c, hook, e.name, "plugin panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			r = Result{Code: DenySoft, Err: fmt.Errorf("plugin %s panicked in %s: %v", e.name, hook, v)}
		}
	}()
	r = call(ctx, e.p)
	if r.Code < Declined || r.Code > Done {
		err := fmt.Errorf("plugin %s: %s hook: invalid code %v", e.name, hook, r.Code)
		ch.logAt(slog.LevelError, c, hook, e.name, "plugin returned an invalid code", withDetail(r, "err", err.Error())...)
		return Result{Code: DenySoft, Err: err}
	}
	if err := ctx.expired(); err != nil && !r.Code.Rejects() {
		ch.logAt(slog.LevelError, c, hook, e.name, "plugin outlived its deadline", withDetail(r, "timeout", ch.deadline(hook).String())...)
		return Result{Code: DenySoft, Err: fmt.Errorf("plugin %s: %s hook: %w", e.name, hook, err)}
	}
	switch {
	case r.Err == nil:
	case !r.Code.Rejects():
		ch.logAt(slog.LevelError, c, hook, e.name, "plugin error", withDetail(r, "code", r.Code.String(), "err", r.Err.Error())...)
		return Result{Code: DenySoft, Err: r.Err, Detail: r.Detail}
	case r.failed():
		ch.logAt(slog.LevelError, c, hook, e.name, "plugin error", withDetail(r, "code", r.Code.String(), "err", r.Err.Error())...)
	default:
		// A refusal that explains itself (a downstream said "user unknown",
		// a greylist): worth a line, not an alarm.
		ch.logAt(slog.LevelWarn, c, hook, e.name, "plugin refused", withDetail(r, "code", r.Code.String(), "err", r.Err.Error())...)
	}
	return r
}

// withDetail appends r.Detail to log arguments when there is one.
func withDetail(r Result, args ...any) []any {
	if r.Detail != "" {
		args = append(args, "detail", r.Detail)
	}
	return args
}

func (ch *Chain) logAt(level slog.Level, c *connection.Connection, hook Hook, plugin, msg string, args ...any) {
	attrs := []any{"hook", hook.String(), "plugin", plugin}
	if c != nil {
		attrs = append(attrs, "conn", c.ID, "remote", c.Remote.String())
	}
	ch.log.Log(context.Background(), level, msg, append(attrs, args...)...)
}

// NoteWouldRefuse lists, in order, the refusals of the plugins running
// with `enforce = false` (Instance.ObserveOnly) that the chain did not
// apply: a transaction note for those at the transaction's hooks, a
// connection note for those at connect, helo, ehlo, auth and the other
// hooks outside a transaction.
var NoteWouldRefuse = notes.NewKey[[]Decision]("chain.would_refuse")

// wouldRefuse logs and notes the refusal d of an observe-only plugin.
func (ch *Chain) wouldRefuse(c *connection.Connection, tx *transaction.Transaction, d Decision) {
	args := []any{"code", d.Result.Code.String(), "reply", ReplyFor(d.Hook, d.Result).String()}
	if d.Result.Err != nil {
		args = append(args, "err", d.Result.Err.Error())
	}
	ch.logAt(slog.LevelWarn, c, d.Hook, d.Plugin, "plugin would refuse (enforce = false)", withDetail(d.Result, args...)...)
	var n *notes.Notes
	switch {
	case tx != nil:
		n = &tx.Notes
	case c != nil:
		n = &c.Notes
	default:
		return
	}
	list, _ := NoteWouldRefuse.Lookup(n)
	NoteWouldRefuse.Set(n, append(list, d))
}

func (ch *Chain) observe(ctx context.Context, c *connection.Connection, d Decision) {
	switch {
	case d.Result.Code.Rejects():
		ch.runAll(ctx, HookDeny, c, func(ctx context.Context, p any) { p.(DenyObserver).Denied(ctx, c, d) })
	case d.Result.Code == OK:
		ch.runAll(ctx, HookOK, c, func(ctx context.Context, p any) { p.(OKObserver).Accepted(ctx, c, d) })
	}
}

// Connect runs the connect hook.
func (ch *Chain) Connect(ctx context.Context, c *connection.Connection) Decision {
	return ch.run(ctx, HookConnect, c, nil, func(ctx context.Context, p any) Result { return p.(Connect).Connect(ctx, c) })
}

// Helo runs the helo hook.
func (ch *Chain) Helo(ctx context.Context, c *connection.Connection, host string) Decision {
	return ch.run(ctx, HookHelo, c, nil, func(ctx context.Context, p any) Result { return p.(Helo).Helo(ctx, c, host) })
}

// Ehlo runs the ehlo hook.
func (ch *Chain) Ehlo(ctx context.Context, c *connection.Connection, host string) Decision {
	return ch.run(ctx, HookEhlo, c, nil, func(ctx context.Context, p any) Result { return p.(Ehlo).Ehlo(ctx, c, host) })
}

// Auth runs the auth hook.
func (ch *Chain) Auth(ctx context.Context, c *connection.Connection, mech, user, password string) Decision {
	return ch.run(ctx, HookAuth, c, nil, func(ctx context.Context, p any) Result { return p.(Auth).Auth(ctx, c, mech, user, password) })
}

// HasAuth reports whether some plugin checks credentials at the auth hook.
func (ch *Chain) HasAuth() bool { return len(ch.plugins[HookAuth]) > 0 }

// MailPre runs the mail_pre hook; plugins may rewrite *from.
func (ch *Chain) MailPre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from *string) Decision {
	return ch.run(ctx, HookMailPre, c, tx, func(ctx context.Context, p any) Result { return p.(MailPre).MailPre(ctx, c, tx, from) })
}

// Mail runs the mail hook.
func (ch *Chain) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) Decision {
	return ch.run(ctx, HookMail, c, tx, func(ctx context.Context, p any) Result { return p.(Mail).Mail(ctx, c, tx, from) })
}

// RcptPre runs the rcpt_pre hook; plugins may rewrite *rcpt.
func (ch *Chain) RcptPre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt *string) Decision {
	return ch.run(ctx, HookRcptPre, c, tx, func(ctx context.Context, p any) Result { return p.(RcptPre).RcptPre(ctx, c, tx, rcpt) })
}

// Rcpt runs the rcpt hook.
func (ch *Chain) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) Decision {
	return ch.run(ctx, HookRcpt, c, tx, func(ctx context.Context, p any) Result { return p.(Rcpt).Rcpt(ctx, c, tx, rcpt) })
}

// RcptOK runs every rcpt_ok plugin: the server calls it once rcpt accepted
// the recipient (OK or Done) and added it to tx.Recipients.
func (ch *Chain) RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) {
	ch.runAll(ctx, HookRcptOK, c, func(ctx context.Context, p any) { p.(RcptOK).RcptOK(ctx, c, tx, rcpt) })
}

// Data runs the data hook.
func (ch *Chain) Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Decision {
	return ch.run(ctx, HookData, c, tx, func(ctx context.Context, p any) Result { return p.(Data).Data(ctx, c, tx) })
}

// DataHeadersEnd runs the data_headers_end hook.
func (ch *Chain) DataHeadersEnd(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Decision {
	return ch.run(ctx, HookDataHeadersEnd, c, tx, func(ctx context.Context, p any) Result { return p.(DataHeadersEnd).DataHeadersEnd(ctx, c, tx) })
}

// ReceivedLine runs the received_line hook; plugins may replace *line.
func (ch *Chain) ReceivedLine(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, line *string) Decision {
	return ch.run(ctx, HookReceivedLine, c, tx, func(ctx context.Context, p any) Result {
		return p.(ReceivedLine).ReceivedLine(ctx, c, tx, line)
	})
}

// DataPost runs the data_post hook.
func (ch *Chain) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Decision {
	return ch.run(ctx, HookDataPost, c, tx, func(ctx context.Context, p any) Result { return p.(DataPost).DataPost(ctx, c, tx) })
}

// QueuePre runs the queue_pre hook.
func (ch *Chain) QueuePre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Decision {
	return ch.run(ctx, HookQueuePre, c, tx, func(ctx context.Context, p any) Result { return p.(QueuePre).QueuePre(ctx, c, tx) })
}

// Queue runs the queue hook.
func (ch *Chain) Queue(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Decision {
	return ch.run(ctx, HookQueue, c, tx, func(ctx context.Context, p any) Result { return p.(Queue).Queue(ctx, c, tx) })
}

// QueuePost runs every queue_post plugin.
func (ch *Chain) QueuePost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) {
	ch.runAll(ctx, HookQueuePost, c, func(ctx context.Context, p any) { p.(QueuePost).QueuePost(ctx, c, tx) })
}

// Reset runs every reset_transaction plugin.
func (ch *Chain) Reset(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) {
	ch.runAll(ctx, HookReset, c, func(ctx context.Context, p any) { p.(Reset).Reset(ctx, c, tx) })
}

// Disconnect runs every disconnect plugin.
func (ch *Chain) Disconnect(ctx context.Context, c *connection.Connection) {
	ch.runAll(ctx, HookDisconnect, c, func(ctx context.Context, p any) { p.(Disconnect).Disconnect(ctx, c) })
}

// Vrfy runs the vrfy hook.
func (ch *Chain) Vrfy(ctx context.Context, c *connection.Connection, addr string) Decision {
	return ch.run(ctx, HookVrfy, c, nil, func(ctx context.Context, p any) Result { return p.(Vrfy).Vrfy(ctx, c, addr) })
}

// Noop runs the noop hook.
func (ch *Chain) Noop(ctx context.Context, c *connection.Connection) Decision {
	return ch.run(ctx, HookNoop, c, nil, func(ctx context.Context, p any) Result { return p.(Noop).Noop(ctx, c) })
}

// Help runs the help hook.
func (ch *Chain) Help(ctx context.Context, c *connection.Connection, topic string) Decision {
	return ch.run(ctx, HookHelp, c, nil, func(ctx context.Context, p any) Result { return p.(Help).Help(ctx, c, topic) })
}

// Quit runs the quit hook.
func (ch *Chain) Quit(ctx context.Context, c *connection.Connection) Decision {
	return ch.run(ctx, HookQuit, c, nil, func(ctx context.Context, p any) Result { return p.(Quit).Quit(ctx, c) })
}

// Unrecognized runs the unrecognized_command hook.
func (ch *Chain) Unrecognized(ctx context.Context, c *connection.Connection, cmd, arg string) Decision {
	return ch.run(ctx, HookUnrecognized, c, nil, func(ctx context.Context, p any) Result {
		return p.(Unrecognized).Unrecognized(ctx, c, cmd, arg)
	})
}

// hookContext is the context one run of a hook's plugins gets: the
// caller's context (the connection's) bounded by the hook's deadline, and
// cancelled for good when the hook returns. It does the work of
// context.WithTimeout lazily, because most plugins never look at their
// context: the deadline is checked against the clock when asked (Err, and
// the chain after each plugin), and a timer and a Done channel exist only
// once some plugin calls Done. Each run gets a new one (one small
// allocation), so a context a plugin kept past its hook stays done: Err
// keeps its error and Done stays closed.
type hookContext struct {
	parent   context.Context
	deadline time.Time // the hook's deadline, with its monotonic reading

	mu         sync.Mutex
	err        error         // nil until cancelled or found past the deadline
	done       chan struct{} // made by the first Done call; closed with err
	timer      *time.Timer   // closes done at the deadline
	stopParent func() bool   // stops the watch on the parent
}

// newHookContext returns the context for one run of a hook's plugins.
func newHookContext(parent context.Context, timeout time.Duration) *hookContext {
	return &hookContext{parent: parent, deadline: time.Now().Add(timeout)}
}

// end cancels the context: the hook has returned.
func (hc *hookContext) end() { hc.cancel(context.Canceled) }

func (hc *hookContext) cancel(err error) {
	hc.mu.Lock()
	hc.cancelLocked(err)
	hc.mu.Unlock()
}

// cancelLocked records the first error, closes done with it and stops
// what would close done.
func (hc *hookContext) cancelLocked(err error) {
	if hc.err != nil {
		return
	}
	hc.err = err
	if hc.done != nil {
		close(hc.done)
		if hc.timer != nil {
			hc.timer.Stop()
		}
		if hc.stopParent != nil {
			hc.stopParent()
		}
	}
}

// Deadline returns the hook's deadline, or the parent's when it is earlier.
func (hc *hookContext) Deadline() (time.Time, bool) {
	if pd, ok := hc.parent.Deadline(); ok && pd.Before(hc.deadline) {
		return pd, true
	}
	return hc.deadline, true
}

// Done returns a channel closed when the hook's deadline passes, the parent
// is done or the hook returns; the first call starts the timer.
func (hc *hookContext) Done() <-chan struct{} {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.done != nil {
		return hc.done
	}
	hc.done = make(chan struct{})
	left := time.Until(hc.deadline)
	if hc.err == nil && left <= 0 {
		hc.err = context.DeadlineExceeded
	}
	if hc.err != nil {
		close(hc.done)
		return hc.done
	}
	hc.timer = time.AfterFunc(left, func() { hc.cancel(context.DeadlineExceeded) })
	if parent := hc.parent; parent.Done() != nil {
		hc.stopParent = context.AfterFunc(parent, func() { hc.cancel(parent.Err()) })
	}
	return hc.done
}

// Err returns nil while the hook runs within its deadline and the parent
// is not done; DeadlineExceeded past the deadline; the parent's error once
// it is done; Canceled once the hook has returned. Once non-nil, it stays.
func (hc *hookContext) Err() error {
	hc.mu.Lock()
	if hc.err == nil {
		if time.Until(hc.deadline) <= 0 { // the monotonic clock alone: cheaper than time.Now

			hc.cancelLocked(context.DeadlineExceeded)
		} else if err := hc.parent.Err(); err != nil {
			hc.cancelLocked(err)
		}
	}
	err := hc.err
	hc.mu.Unlock()
	return err
}

// expired is Err for the chain's check after each plugin, while the hook
// runs: the deadline or the parent's end, without the lock (nothing else
// cancels a running hook's context).
func (hc *hookContext) expired() error {
	if time.Until(hc.deadline) <= 0 {
		return context.DeadlineExceeded
	}
	return hc.parent.Err()
}

// Value returns the parent's value for key.
func (hc *hookContext) Value(key any) any { return hc.parent.Value(key) }

var _ context.Context = (*hookContext)(nil)
