package hooks_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/internal/logbuf"
	"github.com/sluice-mta/sluice/transaction"
)

// calls records which plugins ran, in order.
type calls struct {
	mu    sync.Mutex
	names []string
}

func (c *calls) add(name string) {
	c.mu.Lock()
	c.names = append(c.names, name)
	c.mu.Unlock()
}

func (c *calls) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.names)
}

// rcptPlugin answers the rcpt hook with fn's result and records the call.
type rcptPlugin struct {
	name string
	log  *calls
	fn   func(ctx context.Context) hooks.Result
}

func (p *rcptPlugin) Rcpt(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	if p.log != nil {
		p.log.add(p.name)
	}
	return p.fn(ctx)
}

func answer(r hooks.Result) func(context.Context) hooks.Result {
	return func(context.Context) hooks.Result { return r }
}

func rcpt(name string, log *calls, r hooks.Result) hooks.Instance {
	return hooks.Instance{Name: name, Plugin: &rcptPlugin{name: name, log: log, fn: answer(r)}}
}

func newConn() *connection.Connection {
	return connection.New("test", "mx.example.test",
		netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:40000"))
}

func newChain(t testing.TB, opts hooks.Options, instances ...hooks.Instance) *hooks.Chain {
	t.Helper()
	ch, err := hooks.NewChain(instances, opts)
	if err != nil {
		t.Fatalf("NewChain: %v", err)
	}
	return ch
}

// bufLogger returns a logger writing text records to the returned buffer.
func bufLogger() (*slog.Logger, *logbuf.Buffer) {
	var b logbuf.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

func runRcpt(ch *hooks.Chain) hooks.Decision {
	return ch.Rcpt(context.Background(), newConn(), transaction.New("", 0), "bob@example.test")
}

func TestDispatchOrderFirstNonDeclinedWins(t *testing.T) {
	var log calls
	ch := newChain(t, hooks.Options{},
		rcpt("first", &log, hooks.Result{}),
		rcpt("second", &log, hooks.Reject("no such user")),
		rcpt("third", &log, hooks.Accept("")),
	)
	d := runRcpt(ch)
	if got := log.get(); !slices.Equal(got, []string{"first", "second"}) {
		t.Fatalf("plugins called = %v, want [first second] (config order, stop at the first decision)", got)
	}
	if d.Plugin != "second" || d.Hook != hooks.HookRcpt || d.Result.Code != hooks.Deny {
		t.Fatalf("decision = %+v, want second's Deny at rcpt", d)
	}
	if rep := hooks.ReplyFor(d.Hook, d.Result); rep.String() != "550 5.7.1 no such user" {
		t.Fatalf("reply = %q", rep)
	}
	if got := ch.Plugins(); !slices.Equal(got, []string{"first", "second", "third"}) {
		t.Fatalf("Plugins() = %v", got)
	}
}

func TestDispatchOrderIsConfigOrder(t *testing.T) {
	// The same plugins in the other order: the other one decides.
	var log calls
	ch := newChain(t, hooks.Options{},
		rcpt("third", &log, hooks.Accept("")),
		rcpt("second", &log, hooks.Reject("no such user")),
	)
	d := runRcpt(ch)
	if d.Plugin != "third" || d.Result.Code != hooks.OK {
		t.Fatalf("decision = %+v, want third's OK", d)
	}
	if got := log.get(); !slices.Equal(got, []string{"third"}) {
		t.Fatalf("plugins called = %v, want [third]", got)
	}
}

func TestAllDeclinedDefaults(t *testing.T) {
	var log calls
	ch := newChain(t, hooks.Options{}, rcpt("a", &log, hooks.Result{}), rcpt("b", &log, hooks.Result{}))
	d := runRcpt(ch)
	if got := log.get(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("plugins called = %v, want every one", got)
	}
	if d.Result.Code != hooks.Declined || d.Plugin != "" || d.Hook != hooks.HookRcpt {
		t.Fatalf("decision = %+v, want Declined at rcpt with no plugin", d)
	}
	if rep := hooks.ReplyFor(d.Hook, d.Result); rep.String() != "450 4.7.1 No plugin decided if relaying is allowed" {
		t.Fatalf("rcpt default = %q", rep)
	}
	// A hook nobody implements declines too.
	if d := ch.Queue(context.Background(), newConn(), transaction.New("", 0)); d.Result.Code != hooks.Declined || d.Hook != hooks.HookQueue {
		t.Fatalf("queue with no plugin = %+v", d)
	}
	if ch.HasQueue() || ch.HasAuth() {
		t.Fatal("HasQueue or HasAuth with no such plugin")
	}
	if all := newChain(t, hooks.Options{}, hooks.Instance{Name: "all", Plugin: &everyHook{}}); !all.HasQueue() || !all.HasAuth() {
		t.Fatal("HasQueue or HasAuth false with a plugin for it")
	}
}

func TestPanicFailsClosed(t *testing.T) {
	logger, buf := bufLogger()
	var log calls
	ch := newChain(t, hooks.Options{Logger: logger},
		hooks.Instance{Name: "boom", Plugin: &rcptPlugin{name: "boom", log: &log, fn: func(context.Context) hooks.Result {
			var m map[string]int
			//lint:ignore SA5000 the runtime's panic is what this test wants
			m["x"] = 1 // nil map write
			return hooks.Result{}
		}}},
		rcpt("after", &log, hooks.Accept("")),
	)
	d := runRcpt(ch)
	if d.Result.Code != hooks.DenySoft || d.Plugin != "boom" {
		t.Fatalf("decision = %+v, want boom's DenySoft", d)
	}
	if d.Result.Err == nil || !strings.Contains(d.Result.Err.Error(), "boom") {
		t.Fatalf("Err = %v, want it to name the plugin", d.Result.Err)
	}
	if got := log.get(); !slices.Equal(got, []string{"boom"}) {
		t.Fatalf("plugins called = %v: the one after a panic must not run", got)
	}
	out := buf.String()
	for _, want := range []string{"panicked", "plugin=boom", "hook=rcpt", "assignment to entry in nil map"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	rep := hooks.ReplyFor(d.Hook, d.Result)
	if rep.String() != "451 4.3.0 Local error in processing; try again later" || strings.Contains(rep.Msg, "nil map") {
		t.Fatalf("reply = %q: want 451 4.3.0 and no internal detail", rep)
	}
}

func TestErrFailsClosed(t *testing.T) {
	secret := errors.New("dial tcp 10.0.0.7:53: connection refused")
	for _, code := range []hooks.Code{hooks.Declined, hooks.OK, hooks.Done} {
		t.Run(code.String(), func(t *testing.T) {
			logger, buf := bufLogger()
			var log calls
			ch := newChain(t, hooks.Options{Logger: logger},
				rcpt("flaky", &log, hooks.Result{Code: code, Err: secret}),
				rcpt("after", &log, hooks.Accept("")),
			)
			d := runRcpt(ch)
			if d.Result.Code != hooks.DenySoft || d.Plugin != "flaky" {
				t.Fatalf("decision = %+v, want flaky's DenySoft", d)
			}
			if got := log.get(); !slices.Equal(got, []string{"flaky"}) {
				t.Fatalf("plugins called = %v", got)
			}
			if !errors.Is(d.Result.Err, secret) {
				t.Fatalf("Err = %v, want the plugin's error", d.Result.Err)
			}
			if out := buf.String(); !strings.Contains(out, "plugin=flaky") || !strings.Contains(out, "connection refused") {
				t.Fatalf("log %q lacks the plugin or its error", out)
			}
			if rep := hooks.ReplyFor(d.Hook, d.Result); rep.String() != "451 4.3.0 Local error in processing; try again later" {
				t.Fatalf("reply = %q: the error's text must not reach the client", rep)
			}
		})
	}
	// A rejecting code keeps its code and message; Err is only logged.
	logger, buf := bufLogger()
	ch := newChain(t, hooks.Options{Logger: logger}, rcpt("x", nil, hooks.Result{Code: hooks.Deny, Msg: "listed", Err: secret}))
	d := runRcpt(ch)
	if rep := hooks.ReplyFor(d.Hook, d.Result); rep.String() != "550 5.7.1 listed" {
		t.Fatalf("Deny with Err: reply = %q", rep)
	}
	if !strings.Contains(buf.String(), "connection refused") {
		t.Fatal("Deny with Err: the error was not logged")
	}
}

func TestFailHelper(t *testing.T) {
	ch := newChain(t, hooks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		rcpt("x", nil, hooks.Fail(errors.New("db down"))))
	d := runRcpt(ch)
	if rep := hooks.ReplyFor(d.Hook, d.Result); rep.String() != "451 4.3.0 Local error in processing; try again later" {
		t.Fatalf("Fail: reply = %q", rep)
	}
}

func TestInvalidCodeFailsClosed(t *testing.T) {
	// A code outside the constants would otherwise fall through to the
	// hook's default, which accepts at mail.
	logger, buf := bufLogger()
	mailer := mailFunc(func() hooks.Result { return hooks.Result{Code: hooks.Code(42)} })
	ch := newChain(t, hooks.Options{Logger: logger}, hooks.Instance{Name: "odd", Plugin: mailer})
	d := ch.Mail(context.Background(), newConn(), transaction.New("", 0), "a@example.org")
	if d.Result.Code != hooks.DenySoft {
		t.Fatalf("Code(42) at mail = %+v, want DenySoft", d)
	}
	if rep := hooks.ReplyFor(d.Hook, d.Result); rep.Code != 451 {
		t.Fatalf("reply = %q, want 451", rep)
	}
	if !strings.Contains(buf.String(), "plugin=odd") {
		t.Fatalf("log %q does not name the plugin", buf.String())
	}
}

type mailFunc func() hooks.Result

func (f mailFunc) Mail(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return f()
}

func TestDeadlineFailsClosed(t *testing.T) {
	logger, buf := bufLogger()
	var log calls
	obs := &observer{}
	ch := newChain(t, hooks.Options{Timeout: 20 * time.Millisecond, Logger: logger},
		hooks.Instance{Name: "slow", Plugin: &rcptPlugin{name: "slow", log: &log, fn: func(ctx context.Context) hooks.Result {
			<-ctx.Done()
			return hooks.Result{} // declines, too late
		}}},
		rcpt("after", &log, hooks.Accept("")),
		hooks.Instance{Name: "obs", Plugin: obs},
	)
	start := time.Now()
	d := runRcpt(ch)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("the chain waited %v: the deadline was not applied", elapsed)
	}
	if d.Result.Code != hooks.DenySoft || d.Plugin != "slow" {
		t.Fatalf("decision = %+v, want slow's DenySoft", d)
	}
	if !errors.Is(d.Result.Err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", d.Result.Err)
	}
	if got := log.get(); !slices.Equal(got, []string{"slow"}) {
		t.Fatalf("plugins called = %v", got)
	}
	if out := buf.String(); !strings.Contains(out, "deadline") || !strings.Contains(out, "plugin=slow") {
		t.Fatalf("log %q lacks the timeout or the plugin", out)
	}
	// The deny observer hears of it with a live context of its own, and is
	// not blamed for the slow plugin's timeout.
	got := obs.get()
	if len(got) != 1 || got[0].kind != "deny" || got[0].d.Plugin != "slow" {
		t.Fatalf("observer saw %+v, want one deny by slow", got)
	}
	if got[0].ctxErr != nil {
		t.Fatalf("observer's ctx was already done (%v)", got[0].ctxErr)
	}
	if strings.Contains(buf.String(), "plugin=obs") {
		t.Fatalf("the observer was logged as failing: %s", buf.String())
	}
}

// observer records what the deny and ok observers are told.
type observer struct {
	mu   sync.Mutex
	seen []observed
}

type observed struct {
	kind   string
	d      hooks.Decision
	ctxErr error
}

func (o *observer) Denied(ctx context.Context, _ *connection.Connection, d hooks.Decision) {
	o.mu.Lock()
	o.seen = append(o.seen, observed{"deny", d, ctx.Err()})
	o.mu.Unlock()
}

func (o *observer) Accepted(ctx context.Context, _ *connection.Connection, d hooks.Decision) {
	o.mu.Lock()
	o.seen = append(o.seen, observed{"ok", d, ctx.Err()})
	o.mu.Unlock()
}

func (o *observer) get() []observed {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.seen)
}

func TestObservers(t *testing.T) {
	obs := &observer{}
	var mailCode hooks.Code
	ch := newChain(t, hooks.Options{},
		hooks.Instance{Name: "obs", Plugin: obs},
		hooks.Instance{Name: "policy", Plugin: mailFunc(func() hooks.Result { return hooks.Result{Code: mailCode, Msg: "m"} })},
	)
	ctx, c, tx := context.Background(), newConn(), transaction.New("", 0)
	for _, code := range []hooks.Code{hooks.Declined, hooks.OK, hooks.Deny, hooks.DenySoft, hooks.DenyDisconnect, hooks.DenySoftDisconnect, hooks.Done} {
		mailCode = code
		ch.Mail(ctx, c, tx, "a@example.org")
	}
	got := obs.get()
	want := []struct {
		kind string
		code hooks.Code
	}{{"ok", hooks.OK}, {"deny", hooks.Deny}, {"deny", hooks.DenySoft}, {"deny", hooks.DenyDisconnect}, {"deny", hooks.DenySoftDisconnect}}
	if len(got) != len(want) {
		t.Fatalf("observer saw %d decisions (%+v), want %d: Declined and Done are not reported", len(got), got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.kind != w.kind || g.d.Result.Code != w.code || g.d.Plugin != "policy" || g.d.Hook != hooks.HookMail || g.d.Result.Msg != "m" {
			t.Errorf("observed[%d] = %s %+v, want %s by policy at mail with %v", i, g.kind, g.d, w.kind, w.code)
		}
	}
}

func TestObserverPanicDoesNotChangeTheOutcome(t *testing.T) {
	logger, buf := bufLogger()
	ch := newChain(t, hooks.Options{Logger: logger},
		hooks.Instance{Name: "badobs", Plugin: panicObserver{}},
		rcpt("policy", nil, hooks.Reject("no")),
	)
	d := runRcpt(ch)
	if d.Result.Code != hooks.Deny || d.Plugin != "policy" {
		t.Fatalf("decision = %+v, want policy's Deny", d)
	}
	if !strings.Contains(buf.String(), "plugin=badobs") {
		t.Fatalf("the observer's panic was not logged: %s", buf.String())
	}
}

type panicObserver struct{}

func (panicObserver) Denied(context.Context, *connection.Connection, hooks.Decision) { panic("oops") }

func TestNewChainRejectsAPluginWithNoHook(t *testing.T) {
	_, err := hooks.NewChain([]hooks.Instance{rcpt("ok", nil, hooks.Result{}), {Name: "lazy", Plugin: &struct{ X int }{}}}, hooks.Options{})
	if err == nil || !strings.Contains(err.Error(), `"lazy"`) || !strings.Contains(err.Error(), "no hook") {
		t.Fatalf("NewChain error = %v, want one naming lazy", err)
	}
	// io.Closer and SizeLimiter alone are not hooks.
	_, err = hooks.NewChain([]hooks.Instance{{Name: "closer", Plugin: &closer{}}}, hooks.Options{})
	if err == nil {
		t.Fatal("a plugin that only closes was accepted")
	}
}

type closer struct {
	name   string
	closed *[]string
	err    error
}

func (c *closer) Close() error {
	if c.closed != nil {
		*c.closed = append(*c.closed, c.name)
	}
	return c.err
}

type closingRcpt struct {
	rcptPlugin
	closer
}

type sizeRcpt struct {
	rcptPlugin
	max int64
}

func (s *sizeRcpt) MaxMessageBytes() int64 { return s.max }

func TestMaxMessageBytesIsTheSmallest(t *testing.T) {
	decline := rcptPlugin{fn: answer(hooks.Result{})}
	for _, tc := range []struct {
		caps []int64
		want int64
	}{
		{nil, 0},
		{[]int64{0}, 0},
		{[]int64{5000, 1000, 3000}, 1000},
		{[]int64{0, 2000, 0}, 2000},
		{[]int64{1000, 0, 2000}, 1000},
	} {
		var ins []hooks.Instance
		for i, m := range tc.caps {
			ins = append(ins, hooks.Instance{Name: string(rune('a' + i)), Plugin: &sizeRcpt{decline, m}})
		}
		ins = append(ins, hooks.Instance{Name: "plain", Plugin: &rcptPlugin{fn: answer(hooks.Result{})}})
		if got := newChain(t, hooks.Options{}, ins...).MaxMessageBytes(); got != tc.want {
			t.Errorf("caps %v: MaxMessageBytes = %d, want %d", tc.caps, got, tc.want)
		}
	}
}

func TestCloseRunsClosers(t *testing.T) {
	var closed []string
	decline := rcptPlugin{fn: answer(hooks.Result{})}
	ch := newChain(t, hooks.Options{},
		hooks.Instance{Name: "a", Plugin: &closingRcpt{decline, closer{name: "a", closed: &closed}}},
		hooks.Instance{Name: "plain", Plugin: &rcptPlugin{fn: answer(hooks.Result{})}},
		hooks.Instance{Name: "b", Plugin: &closingRcpt{decline, closer{name: "b", closed: &closed, err: errors.New("flush failed")}}},
		hooks.Instance{Name: "c", Plugin: &closingRcpt{decline, closer{name: "c", closed: &closed}}},
	)
	err := ch.Close()
	if !slices.Equal(closed, []string{"a", "b", "c"}) {
		t.Fatalf("closed = %v, want [a b c]: every Closer, in order, despite b's error", closed)
	}
	if err == nil || !strings.Contains(err.Error(), "plugin b") || !strings.Contains(err.Error(), "flush failed") {
		t.Fatalf("Close error = %v, want b's error with its name", err)
	}
}

// everyHook implements every hook and records which ran and what it got.
type everyHook struct {
	calls
	result hooks.Result
}

func (p *everyHook) rec(name string) hooks.Result { p.add(name); return p.result }

func (p *everyHook) Connect(context.Context, *connection.Connection) hooks.Result {
	return p.rec(hooks.HookConnect.String())
}
func (p *everyHook) Helo(_ context.Context, _ *connection.Connection, h string) hooks.Result {
	return p.rec(hooks.HookHelo.String() + " " + h)
}
func (p *everyHook) Ehlo(_ context.Context, _ *connection.Connection, h string) hooks.Result {
	return p.rec(hooks.HookEhlo.String() + " " + h)
}
func (p *everyHook) Auth(_ context.Context, _ *connection.Connection, mech, user, _ string) hooks.Result {
	return p.rec(hooks.HookAuth.String() + " " + mech + " " + user)
}
func (p *everyHook) MailPre(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, from *string) hooks.Result {
	*from = "rewritten@example.org"
	return p.rec(hooks.HookMailPre.String())
}
func (p *everyHook) Mail(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, from string) hooks.Result {
	return p.rec(hooks.HookMail.String() + " " + from)
}
func (p *everyHook) RcptPre(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, to *string) hooks.Result {
	*to = "rewritten@example.test"
	return p.rec(hooks.HookRcptPre.String())
}
func (p *everyHook) Rcpt(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, to string) hooks.Result {
	return p.rec(hooks.HookRcpt.String() + " " + to)
}
func (p *everyHook) RcptOK(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, to string) {
	p.rec(hooks.HookRcptOK.String() + " " + to)
}
func (p *everyHook) Data(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return p.rec(hooks.HookData.String())
}
func (p *everyHook) DataHeadersEnd(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return p.rec(hooks.HookDataHeadersEnd.String())
}
func (p *everyHook) ReceivedLine(_ context.Context, _ *connection.Connection, _ *transaction.Transaction, line *string) hooks.Result {
	*line = "custom"
	return p.rec(hooks.HookReceivedLine.String())
}
func (p *everyHook) DataPost(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return p.rec(hooks.HookDataPost.String())
}
func (p *everyHook) QueuePre(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return p.rec(hooks.HookQueuePre.String())
}
func (p *everyHook) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return p.rec(hooks.HookQueue.String())
}
func (p *everyHook) QueuePost(context.Context, *connection.Connection, *transaction.Transaction) {
	p.rec(hooks.HookQueuePost.String())
}
func (p *everyHook) Reset(context.Context, *connection.Connection, *transaction.Transaction) {
	p.rec(hooks.HookReset.String())
}
func (p *everyHook) Disconnect(context.Context, *connection.Connection) {
	p.rec(hooks.HookDisconnect.String())
}
func (p *everyHook) Vrfy(_ context.Context, _ *connection.Connection, a string) hooks.Result {
	return p.rec(hooks.HookVrfy.String() + " " + a)
}
func (p *everyHook) Noop(context.Context, *connection.Connection) hooks.Result {
	return p.rec(hooks.HookNoop.String())
}
func (p *everyHook) Help(_ context.Context, _ *connection.Connection, topic string) hooks.Result {
	return p.rec(hooks.HookHelp.String() + " " + topic)
}
func (p *everyHook) Quit(context.Context, *connection.Connection) hooks.Result {
	return p.rec(hooks.HookQuit.String())
}
func (p *everyHook) Unrecognized(_ context.Context, _ *connection.Connection, cmd, arg string) hooks.Result {
	return p.rec(hooks.HookUnrecognized.String() + " " + cmd + " " + arg)
}
func (p *everyHook) Denied(_ context.Context, _ *connection.Connection, d hooks.Decision) {
	p.rec(hooks.HookDeny.String() + " " + d.Hook.String())
}
func (p *everyHook) Accepted(_ context.Context, _ *connection.Connection, d hooks.Decision) {
	p.rec(hooks.HookOK.String() + " " + d.Hook.String())
}

func TestEveryChainMethodCallsItsHook(t *testing.T) {
	p := &everyHook{result: hooks.Result{Code: hooks.Done, Msg: "taken"}}
	ch := newChain(t, hooks.Options{}, hooks.Instance{Name: "all", Plugin: p})
	ctx, c, tx := context.Background(), newConn(), transaction.New("", 0)
	from, to, line := "a@example.org", "b@example.test", "default"
	decisions := []hooks.Decision{
		ch.Connect(ctx, c),
		ch.Helo(ctx, c, "h1"),
		ch.Ehlo(ctx, c, "h2"),
		ch.Auth(ctx, c, "PLAIN", "alice", "secret"),
		ch.MailPre(ctx, c, tx, &from),
		ch.Mail(ctx, c, tx, from),
		ch.RcptPre(ctx, c, tx, &to),
		ch.Rcpt(ctx, c, tx, to),
		ch.Data(ctx, c, tx),
		ch.DataHeadersEnd(ctx, c, tx),
		ch.ReceivedLine(ctx, c, tx, &line),
		ch.DataPost(ctx, c, tx),
		ch.QueuePre(ctx, c, tx),
		ch.Queue(ctx, c, tx),
		ch.Vrfy(ctx, c, "postmaster"),
		ch.Noop(ctx, c),
		ch.Help(ctx, c, "mail"),
		ch.Quit(ctx, c),
		ch.Unrecognized(ctx, c, "XFOO", "bar"),
	}
	ch.RcptOK(ctx, c, tx, to)
	ch.QueuePost(ctx, c, tx)
	ch.Reset(ctx, c, tx)
	ch.Disconnect(ctx, c)

	wantHooks := []hooks.Hook{hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo, hooks.HookAuth, hooks.HookMailPre, hooks.HookMail,
		hooks.HookRcptPre, hooks.HookRcpt, hooks.HookData, hooks.HookDataHeadersEnd, hooks.HookReceivedLine,
		hooks.HookDataPost, hooks.HookQueuePre, hooks.HookQueue, hooks.HookVrfy, hooks.HookNoop, hooks.HookHelp,
		hooks.HookQuit, hooks.HookUnrecognized}
	for i, d := range decisions {
		if d.Hook != wantHooks[i] || d.Plugin != "all" || d.Result.Code != hooks.Done || d.Result.Msg != "taken" {
			t.Errorf("decision %d = %+v, want all's Done at %s", i, d, wantHooks[i])
		}
	}
	want := []string{"connect", "helo h1", "ehlo h2", "auth PLAIN alice", "mail_pre", "mail rewritten@example.org", "rcpt_pre",
		"rcpt rewritten@example.test", "data", "data_headers_end", "received_line", "data_post", "queue_pre",
		"queue", "vrfy postmaster", "noop", "help mail", "quit", "unrecognized_command XFOO bar",
		"rcpt_ok rewritten@example.test", "queue_post", "reset_transaction", "disconnect"}
	if got := p.get(); !slices.Equal(got, want) {
		t.Fatalf("hooks called:\n got %q\nwant %q", got, want)
	}
	if line != "custom" {
		t.Fatalf("received_line did not let the plugin set the line: %q", line)
	}

	// OK decisions reach the ok observer, with the hook's name.
	p2 := &everyHook{result: hooks.Accept("")}
	ch2 := newChain(t, hooks.Options{}, hooks.Instance{Name: "all", Plugin: p2})
	ch2.Rcpt(ctx, c, tx, to)
	ch2.Reset(ctx, c, tx) // results of reset are not decisions: nothing observed
	if got := p2.get(); !slices.Equal(got, []string{"rcpt " + to, "ok rcpt", "reset_transaction"}) {
		t.Fatalf("with OK: calls = %q", got)
	}
}

func TestRunAllHooksCallEveryPlugin(t *testing.T) {
	// reset_transaction and disconnect run every plugin, even after a panic.
	logger, buf := bufLogger()
	a := &everyHook{}
	ch := newChain(t, hooks.Options{Logger: logger},
		hooks.Instance{Name: "a", Plugin: a},
		hooks.Instance{Name: "bad", Plugin: panicDisconnect{}},
		hooks.Instance{Name: "b", Plugin: &everyHook{}},
	)
	ctx, c := context.Background(), newConn()
	ch.Disconnect(ctx, c)
	ch.Reset(ctx, c, transaction.New("", 0))
	if got := a.get(); !slices.Equal(got, []string{"disconnect", "reset_transaction"}) {
		t.Fatalf("a: %q", got)
	}
	b := ch.Plugins()
	if !slices.Equal(b, []string{"a", "bad", "b"}) {
		t.Fatalf("Plugins = %v", b)
	}
	if !strings.Contains(buf.String(), "plugin=bad") {
		t.Fatalf("the disconnect panic was not logged: %s", buf.String())
	}
}

type panicDisconnect struct{}

func (panicDisconnect) Disconnect(context.Context, *connection.Connection) { panic("bye") }

func TestRunAllContinuesAfterAPanic(t *testing.T) {
	var log calls
	ch := newChain(t, hooks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		hooks.Instance{Name: "bad", Plugin: panicDisconnect{}},
		hooks.Instance{Name: "after", Plugin: disconnectFunc(func() { log.add("after") })},
	)
	ch.Disconnect(context.Background(), newConn())
	if got := log.get(); !slices.Equal(got, []string{"after"}) {
		t.Fatalf("after a panicking disconnect plugin, the next one ran: %v", got)
	}
}

type disconnectFunc func()

func (f disconnectFunc) Disconnect(context.Context, *connection.Connection) { f() }

func TestChainIsSafeForConcurrentUse(t *testing.T) {
	var n sync.WaitGroup
	ch := newChain(t, hooks.Options{}, rcpt("a", nil, hooks.Result{}), rcpt("b", nil, hooks.Accept("")))
	for range 8 {
		n.Go(func() {
			for range 100 {
				if d := runRcpt(ch); d.Result.Code != hooks.OK {
					t.Errorf("decision = %+v", d)
					return
				}
			}
		})
	}
	n.Wait()
}

func BenchmarkChainRcptDeclined(b *testing.B) {
	var ins []hooks.Instance
	for i := range 10 {
		ins = append(ins, hooks.Instance{Name: "p" + string(rune('0'+i)), Plugin: &rcptPlugin{fn: answer(hooks.Result{})}})
	}
	ch := newChain(b, hooks.Options{}, ins...)
	ctx, c, tx := context.Background(), newConn(), transaction.New("", 0)
	b.ReportAllocs()
	for b.Loop() {
		if d := ch.Rcpt(ctx, c, tx, "bob@example.test"); d.Result.Code != hooks.Declined {
			b.Fatal(d)
		}
	}
}

func TestDetailIsLoggedNotSent(t *testing.T) {
	secret := errors.New("backend said no")
	logger, buf := bufLogger()
	ch := newChain(t, hooks.Options{Logger: logger}, rcpt("p", nil, hooks.Result{Code: hooks.Deny, Msg: "no", Detail: "downstream said 550 unknown", Err: secret}))
	d := runRcpt(ch)
	if !strings.Contains(buf.String(), `detail="downstream said 550 unknown"`) {
		t.Errorf("Detail is not in the log: %s", buf.String())
	}
	if rep := hooks.ReplyFor(d.Hook, d.Result); strings.Contains(rep.String(), "downstream") {
		t.Errorf("Detail reached the reply: %q", rep)
	}
}

// keeper keeps the context of its mail hook and looks at it again during
// the rcpt hook of the same transaction.
type keeper struct {
	takeDone bool // take Done during the mail hook, as a plugin that waits does
	kept     context.Context
	inMail   error // kept.Err() during the mail hook
	inRcpt   error // kept.Err() during the rcpt hook
	closed   bool  // kept.Done() closed during the rcpt hook
	ownErr   error // the rcpt hook's own ctx.Err()
}

func (k *keeper) Mail(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	k.kept = ctx
	if k.takeDone {
		_ = ctx.Done()
	}
	k.inMail = ctx.Err()
	return hooks.Result{}
}

func (k *keeper) Rcpt(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	k.inRcpt = k.kept.Err()
	select {
	case <-k.kept.Done():
		k.closed = true
	default:
	}
	k.ownErr = ctx.Err()
	return hooks.Accept("")
}

func TestKeptContextStaysDone(t *testing.T) {
	for _, takeDone := range []bool{false, true} {
		k := &keeper{takeDone: takeDone}
		ch := newChain(t, hooks.Options{}, hooks.Instance{Name: "keeper", Plugin: k})
		ctx, c, tx := context.Background(), newConn(), transaction.New("", 0)
		ch.Mail(ctx, c, tx, "a@example.org")
		if k.inMail != nil {
			t.Fatalf("takeDone=%v: ctx.Err() during its own hook = %v", takeDone, k.inMail)
		}
		// The next hooks of the same transaction: the kept context must not
		// come back to life.
		for range 3 {
			ch.Rcpt(ctx, c, tx, "b@example.test")
			if !errors.Is(k.inRcpt, context.Canceled) || !k.closed {
				t.Fatalf("takeDone=%v: the mail hook's ctx during rcpt: Err = %v, Done closed = %v; want Canceled and closed", takeDone, k.inRcpt, k.closed)
			}
			if k.ownErr != nil {
				t.Fatalf("takeDone=%v: the rcpt hook's own ctx.Err() = %v", takeDone, k.ownErr)
			}
		}
		if !errors.Is(k.kept.Err(), context.Canceled) {
			t.Fatalf("takeDone=%v: Err after the transaction = %v", takeDone, k.kept.Err())
		}
	}
}

// rcptOKPlugin records the recipients rcpt_ok tells it of.
type rcptOKPlugin struct {
	log    *calls
	name   string
	ctxErr error
}

func (p *rcptOKPlugin) RcptOK(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction, rcpt string) {
	p.ctxErr = ctx.Err()
	p.log.add(p.name + " " + rcpt + " " + strings.Join(tx.Recipients, ","))
}

type panicRcptOK struct{}

func (panicRcptOK) RcptOK(context.Context, *connection.Connection, *transaction.Transaction, string) {
	panic("rcpt_ok boom")
}

func TestRcptOKRunsEveryPlugin(t *testing.T) {
	logger, buf := bufLogger()
	var log calls
	a, b := &rcptOKPlugin{log: &log, name: "a"}, &rcptOKPlugin{log: &log, name: "b"}
	obs := &observer{}
	ch := newChain(t, hooks.Options{Logger: logger},
		hooks.Instance{Name: "a", Plugin: a},
		hooks.Instance{Name: "bad", Plugin: panicRcptOK{}},
		hooks.Instance{Name: "b", Plugin: b},
		hooks.Instance{Name: "obs", Plugin: obs},
	)
	if got := hooks.HooksOf(a); !slices.Equal(got, []hooks.Hook{hooks.HookRcptOK}) {
		t.Fatalf("HooksOf(rcpt_ok plugin) = %v", got)
	}
	tx := transaction.New("", 0)
	tx.Recipients = append(tx.Recipients, "bob@example.test")
	ch.RcptOK(context.Background(), newConn(), tx, "bob@example.test")
	if got := log.get(); !slices.Equal(got, []string{"a bob@example.test bob@example.test", "b bob@example.test bob@example.test"}) {
		t.Fatalf("rcpt_ok calls = %q, want a then b, after the panic too", got)
	}
	if a.ctxErr != nil || b.ctxErr != nil {
		t.Fatalf("ctx during rcpt_ok: %v, %v", a.ctxErr, b.ctxErr)
	}
	if out := buf.String(); !strings.Contains(out, "plugin=bad") || !strings.Contains(out, "hook=rcpt_ok") {
		t.Fatalf("the rcpt_ok panic was not logged with its hook and plugin: %s", out)
	}
	if got := obs.get(); len(got) != 0 {
		t.Fatalf("observers were told of rcpt_ok: %+v", got)
	}
	// A chain without rcpt_ok plugins does nothing.
	newChain(t, hooks.Options{}, rcpt("x", nil, hooks.Accept(""))).RcptOK(context.Background(), newConn(), tx, "bob@example.test")
}

// queuePlugin takes messages and is no DSNCarrier; dsnQueue is one.
type queuePlugin struct{}

func (queuePlugin) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return hooks.Accept("")
}

type dsnQueue struct {
	queuePlugin
	carries bool
}

func (q dsnQueue) CarriesDSN() bool { return q.carries }

// dsnRcpt says it carries DSN but is no queue plugin.
type dsnRcpt struct {
	*rcptPlugin
}

func (dsnRcpt) CarriesDSN() bool { return true }

func TestCarriesDSN(t *testing.T) {
	decline := &rcptPlugin{fn: answer(hooks.Result{})}
	for _, tc := range []struct {
		name    string
		plugins []any
		want    bool
	}{
		{"no queue", []any{&rcptPlugin{fn: answer(hooks.Result{})}}, false},
		{"a DSNCarrier that is no queue", []any{dsnRcpt{decline}}, false},
		{"a queue that is no DSNCarrier", []any{queuePlugin{}}, false},
		{"a queue that says false", []any{dsnQueue{carries: false}}, false},
		{"a queue that carries DSN", []any{dsnQueue{carries: true}}, true},
		{"with other plugins", []any{&rcptPlugin{fn: answer(hooks.Result{})}, dsnQueue{carries: true}}, true},
		{"two queues that carry DSN", []any{dsnQueue{carries: true}, dsnQueue{carries: true}}, true},
		{"one of two queues does not", []any{dsnQueue{carries: true}, queuePlugin{}}, false},
		{"one of two queues says false", []any{dsnQueue{carries: false}, dsnQueue{carries: true}}, false},
		{"a non-queue DSNCarrier does not make up for the queue", []any{dsnRcpt{decline}, queuePlugin{}}, false},
	} {
		var ins []hooks.Instance
		for i, p := range tc.plugins {
			ins = append(ins, hooks.Instance{Name: string(rune('a' + i)), Plugin: p})
		}
		if got := newChain(t, hooks.Options{}, ins...).CarriesDSN(); got != tc.want {
			t.Errorf("%s: CarriesDSN = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRefusalWithErrLogLevels(t *testing.T) {
	secret := errors.New("backend said no")
	for _, tc := range []struct {
		name string
		r    hooks.Result
		want string // the log line's start
	}{
		{"Deny with Msg", hooks.Result{Code: hooks.Deny, Msg: "listed", Err: secret}, `level=WARN msg="plugin refused"`},
		{"Deny without Msg", hooks.Result{Code: hooks.Deny, Err: secret}, `level=WARN msg="plugin refused"`},
		{"DenySoft with Msg", hooks.Result{Code: hooks.DenySoft, Msg: "greylisted", Err: secret}, `level=WARN msg="plugin refused"`},
		{"DenySoft with ReplyCode", hooks.Result{Code: hooks.DenySoft, ReplyCode: 452, Err: secret}, `level=WARN msg="plugin refused"`},
		{"DenySoftDisconnect with Msg", hooks.Result{Code: hooks.DenySoftDisconnect, Msg: "later", Err: secret}, `level=WARN msg="plugin refused"`},
		{"Fail", hooks.Fail(secret), `level=ERROR msg="plugin error"`},
		{"OK with Err", hooks.Result{Code: hooks.OK, Err: secret}, `level=ERROR msg="plugin error"`},
	} {
		logger, buf := bufLogger()
		ch := newChain(t, hooks.Options{Logger: logger}, rcpt("p", nil, tc.r))
		runRcpt(ch)
		out := buf.String()
		if !strings.HasPrefix(strings.SplitN(out, " ", 2)[1], tc.want) || !strings.Contains(out, "backend said no") || !strings.Contains(out, "plugin=p") {
			t.Errorf("%s: log %q, want it to start with %s and carry the error", tc.name, out, tc.want)
		}
	}
}

// named records the instance name the chain gives it.
type named struct{ got []string }

func (n *named) Noop(context.Context, *connection.Connection) hooks.Result { return hooks.Result{} }
func (n *named) SetInstanceName(name string)                               { n.got = append(n.got, name) }

func TestChainTellsAnInstanceNamerItsName(t *testing.T) {
	n := &named{}
	for range 2 { // two listeners share the instance: told twice, the same name
		if _, err := hooks.NewChain([]hooks.Instance{{Name: "blocklist", Plugin: n}}, hooks.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(n.got, ",") != "blocklist,blocklist" {
		t.Fatalf("SetInstanceName calls: %q", n.got)
	}
}

// TestObserveOnly: an instance with ObserveOnly (enforce = false) does not
// refuse: the chain logs the reply the client would have had, notes the
// decision, and asks the next plugin. Its OK still accepts.
func TestObserveOnly(t *testing.T) {
	log, buf := bufLogger()
	var seen calls
	watch := rcpt("watch", &seen, hooks.Result{Code: hooks.Deny, Msg: "listed in zen.example"})
	watch.ObserveOnly = true
	ch := newChain(t, hooks.Options{Logger: log}, watch, rcpt("next", &seen, hooks.Result{Code: hooks.OK}))
	c, tx := newConn(), transaction.New("", 0)
	d := ch.Rcpt(context.Background(), c, tx, "a@example.test")
	if d.Plugin != "next" || d.Result.Code != hooks.OK {
		t.Fatalf("decision = %+v, want next's OK", d)
	}
	if got := seen.get(); !slices.Equal(got, []string{"watch", "next"}) {
		t.Errorf("plugins run = %v", got)
	}
	if got := buf.String(); !strings.Contains(got, `msg="plugin would refuse (enforce = false)"`) || !strings.Contains(got, `plugin=watch`) ||
		!strings.Contains(got, `reply="550 5.7.1 listed in zen.example"`) || !strings.Contains(got, "code=DENY") {
		t.Errorf("log = %s, want the would-refuse line with the reply", got)
	}
	list := hooks.NoteWouldRefuse.Get(&tx.Notes)
	if len(list) != 1 || list[0].Plugin != "watch" || list[0].Hook != hooks.HookRcpt || list[0].Result.Msg != "listed in zen.example" {
		t.Errorf("transaction note = %+v", list)
	}
	if k := c.Notes.Keys(); len(k) != 0 {
		t.Errorf("connection notes = %v, want none (a transaction hook notes the transaction)", k)
	}

	// Alone, the observe-only refusal leaves the hook's default; a failure
	// (a panic) is observed too, and the enforcing twin refuses.
	boom := hooks.Instance{Name: "boom", Plugin: &rcptPlugin{name: "boom", fn: func(context.Context) hooks.Result { panic("bug") }}, ObserveOnly: true}
	ch = newChain(t, hooks.Options{Logger: log}, boom)
	if d := ch.Rcpt(context.Background(), c, tx, "b@example.test"); d.Result.Code != hooks.Declined {
		t.Errorf("observe-only panic: decision = %+v, want declined", d)
	}
	if n := len(hooks.NoteWouldRefuse.Get(&tx.Notes)); n != 2 {
		t.Errorf("%d would-refuse notes, want 2", n)
	}
	ch = newChain(t, hooks.Options{Logger: log}, rcpt("watch", nil, hooks.Result{Code: hooks.Deny, Msg: "listed"}))
	if d := ch.Rcpt(context.Background(), c, tx, "c@example.test"); d.Result.Code != hooks.Deny {
		t.Errorf("enforcing instance: decision = %+v, want DENY", d)
	}
}

// TestObserveOnlyAtConnect notes on the connection outside a transaction.
func TestObserveOnlyAtConnect(t *testing.T) {
	log, _ := bufLogger()
	ch := newChain(t, hooks.Options{Logger: log}, hooks.Instance{Name: "early", Plugin: connectFunc(func() hooks.Result {
		return hooks.Result{Code: hooks.DenyDisconnect, Msg: "talked first"}
	}), ObserveOnly: true})
	c := newConn()
	if d := ch.Connect(context.Background(), c); d.Result.Code != hooks.Declined {
		t.Errorf("decision = %+v, want declined", d)
	}
	list := hooks.NoteWouldRefuse.Get(&c.Notes)
	if len(list) != 1 || list[0].Result.Code != hooks.DenyDisconnect || list[0].Hook != hooks.HookConnect {
		t.Errorf("connection note = %+v", list)
	}
}

type connectFunc func() hooks.Result

func (f connectFunc) Connect(context.Context, *connection.Connection) hooks.Result { return f() }
