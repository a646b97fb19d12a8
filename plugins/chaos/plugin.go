// Package chaos is a fault injector for testing how Sluice handles broken
// plugins, as qpsmtpd's random_error plugin is: at the hooks its settings
// name, it panics, returns an error, hangs until the hook's deadline, or
// sleeps past it, always or at random. It never belongs in a production
// chain.
//
// Every fault must end in a temporary failure for the client (4xx; 421 and
// close at connect) and a log line naming the plugin, while the server goes
// on serving: the end-to-end tests (t/hardening_test.go) and soak runs use
// chaos to prove it.
package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("chaos", New) }

// Settings are the keys of a [plugins.chaos] table. Each list names hooks
// (as in `smtpd plugins`); a hook may be in one list only.
type Settings struct {
	// Panic lists the hooks where the plugin panics.
	Panic []string `toml:"panic"`
	// Fail lists the hooks where the plugin returns an error, which the
	// chain turns into DenySoft. Only hooks with a reply may fail.
	Fail []string `toml:"fail"`
	// Hang lists the hooks where the plugin blocks until its context is
	// cancelled by the hook's deadline (hook_timeout).
	Hang []string `toml:"hang"`
	// Sleep lists the hooks where the plugin sleeps for Delay without
	// looking at its context, as a plugin that ignores its deadline does.
	Sleep []string `toml:"sleep"`
	// Delay is how long a Sleep fault lasts. Default "1s".
	Delay string `toml:"delay"`
	// Probability is the chance that a listed fault happens at each call,
	// above 0 and at most 1. Default 1: always.
	Probability float64 `toml:"probability"`
}

type fault int

const (
	faultPanic fault = iota + 1
	faultFail
	faultHang
	faultSleep
)

// Hooks are the hooks chaos can break. auth is left out on purpose: a
// plugin at the auth hook turns AUTH on for its listener.
var Hooks = []hooks.Hook{
	hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo, hooks.HookMailPre, hooks.HookMail,
	hooks.HookRcptPre, hooks.HookRcpt, hooks.HookRcptOK, hooks.HookData, hooks.HookDataHeadersEnd,
	hooks.HookReceivedLine, hooks.HookDataPost, hooks.HookQueuePre, hooks.HookQueue,
	hooks.HookQueuePost, hooks.HookReset, hooks.HookDisconnect, hooks.HookVrfy,
	hooks.HookNoop, hooks.HookHelp, hooks.HookQuit, hooks.HookUnrecognized,
}

// silent are the hooks whose result nobody reads: they cannot fail.
var silent = []hooks.Hook{hooks.HookRcptOK, hooks.HookQueuePost, hooks.HookReset, hooks.HookDisconnect}

// Plugin is a configured chaos instance; read-only after New.
type Plugin struct {
	faults      map[hooks.Hook]fault
	delay       time.Duration
	probability float64
}

var (
	_ hooks.Connect        = (*Plugin)(nil)
	_ hooks.Helo           = (*Plugin)(nil)
	_ hooks.Ehlo           = (*Plugin)(nil)
	_ hooks.MailPre        = (*Plugin)(nil)
	_ hooks.Mail           = (*Plugin)(nil)
	_ hooks.RcptPre        = (*Plugin)(nil)
	_ hooks.Rcpt           = (*Plugin)(nil)
	_ hooks.RcptOK         = (*Plugin)(nil)
	_ hooks.Data           = (*Plugin)(nil)
	_ hooks.DataHeadersEnd = (*Plugin)(nil)
	_ hooks.ReceivedLine   = (*Plugin)(nil)
	_ hooks.DataPost       = (*Plugin)(nil)
	_ hooks.QueuePre       = (*Plugin)(nil)
	_ hooks.Queue          = (*Plugin)(nil)
	_ hooks.QueuePost      = (*Plugin)(nil)
	_ hooks.Reset          = (*Plugin)(nil)
	_ hooks.Disconnect     = (*Plugin)(nil)
	_ hooks.Vrfy           = (*Plugin)(nil)
	_ hooks.Noop           = (*Plugin)(nil)
	_ hooks.Help           = (*Plugin)(nil)
	_ hooks.Quit           = (*Plugin)(nil)
	_ hooks.Unrecognized   = (*Plugin)(nil)
)

// New builds a chaos instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Delay: "1s", Probability: 1}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{faults: map[hooks.Hook]fault{}, probability: s.Probability}
	for _, l := range []struct {
		key   string
		hooks []string
		f     fault
	}{{"panic", s.Panic, faultPanic}, {"fail", s.Fail, faultFail}, {"hang", s.Hang, faultHang}, {"sleep", s.Sleep, faultSleep}} {
		for _, name := range l.hooks {
			h, ok := hooks.ParseHook(name)
			if !ok || !slices.Contains(Hooks, h) {
				return nil, fmt.Errorf("%s: unknown hook %q: want one of %s", l.key, name, hookNames())
			}
			if _, dup := p.faults[h]; dup {
				return nil, fmt.Errorf("%s: hook %q is already in another list: one fault per hook", l.key, name)
			}
			if l.f == faultFail && slices.Contains(silent, h) {
				return nil, fmt.Errorf("fail: hook %q has no reply to fail: use panic, hang or sleep", name)
			}
			p.faults[h] = l.f
		}
	}
	d, err := time.ParseDuration(s.Delay)
	if err != nil || d < 0 {
		return nil, fmt.Errorf("delay = %q: want a duration such as \"1s\"", s.Delay)
	}
	p.delay = d
	if !(s.Probability > 0 && s.Probability <= 1) {
		return nil, fmt.Errorf("probability = %v: want a number above 0 and at most 1", s.Probability)
	}
	return p, nil
}

// hookNames lists Hooks by name, for error messages.
func hookNames() string {
	names := make([]string, len(Hooks))
	for i, h := range Hooks {
		names[i] = h.String()
	}
	return strings.Join(names, ", ")
}

// fire injects the fault configured for hook, if any, and otherwise
// declines.
func (p *Plugin) fire(ctx context.Context, hook hooks.Hook) hooks.Result {
	f, ok := p.faults[hook]
	if !ok || p.probability < 1 && rand.Float64() >= p.probability {
		return hooks.Result{}
	}
	switch f {
	case faultPanic:
		panic("chaos: injected panic at " + hook.String())
	case faultFail:
		return hooks.Result{Err: fmt.Errorf("chaos: injected error at %s", hook)}
	case faultHang:
		<-ctx.Done()
	case faultSleep:
		time.Sleep(p.delay)
	}
	return hooks.Result{}
}

func (p *Plugin) Connect(ctx context.Context, _ *connection.Connection) hooks.Result {
	return p.fire(ctx, hooks.HookConnect)
}

func (p *Plugin) Helo(ctx context.Context, _ *connection.Connection, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookHelo)
}

func (p *Plugin) Ehlo(ctx context.Context, _ *connection.Connection, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookEhlo)
}

func (p *Plugin) MailPre(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ *string) hooks.Result {
	return p.fire(ctx, hooks.HookMailPre)
}

func (p *Plugin) Mail(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookMail)
}

func (p *Plugin) RcptPre(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ *string) hooks.Result {
	return p.fire(ctx, hooks.HookRcptPre)
}

func (p *Plugin) Rcpt(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookRcpt)
}

func (p *Plugin) RcptOK(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) {
	p.fire(ctx, hooks.HookRcptOK)
}

func (p *Plugin) Data(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) hooks.Result {
	return p.fire(ctx, hooks.HookData)
}

func (p *Plugin) DataHeadersEnd(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) hooks.Result {
	return p.fire(ctx, hooks.HookDataHeadersEnd)
}

func (p *Plugin) ReceivedLine(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ *string) hooks.Result {
	return p.fire(ctx, hooks.HookReceivedLine)
}

func (p *Plugin) DataPost(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) hooks.Result {
	return p.fire(ctx, hooks.HookDataPost)
}

func (p *Plugin) QueuePre(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) hooks.Result {
	return p.fire(ctx, hooks.HookQueuePre)
}

// Queue declines unless a fault fires, so the queue plugin after chaos
// takes the message: list chaos before it to make the queue fail at random.
func (p *Plugin) Queue(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) hooks.Result {
	return p.fire(ctx, hooks.HookQueue)
}

func (p *Plugin) QueuePost(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) {
	p.fire(ctx, hooks.HookQueuePost)
}

func (p *Plugin) Reset(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction) {
	p.fire(ctx, hooks.HookReset)
}

func (p *Plugin) Disconnect(ctx context.Context, _ *connection.Connection) {
	p.fire(ctx, hooks.HookDisconnect)
}

func (p *Plugin) Vrfy(ctx context.Context, _ *connection.Connection, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookVrfy)
}

func (p *Plugin) Noop(ctx context.Context, _ *connection.Connection) hooks.Result {
	return p.fire(ctx, hooks.HookNoop)
}

func (p *Plugin) Help(ctx context.Context, _ *connection.Connection, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookHelp)
}

func (p *Plugin) Quit(ctx context.Context, _ *connection.Connection) hooks.Result {
	return p.fire(ctx, hooks.HookQuit)
}

func (p *Plugin) Unrecognized(ctx context.Context, _ *connection.Connection, _, _ string) hooks.Result {
	return p.fire(ctx, hooks.HookUnrecognized)
}
