package policyd_test

import (
	"context"
	"fmt"
	"github.com/sluice-mta/sluice/policyd/wire"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/policyd"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/transaction"
)

// recorder writes down each hook call it sees and answers what refuse
// says for that hook.
type recorder struct {
	mu     sync.Mutex
	calls  []string
	refuse map[hooks.Hook]hooks.Result
}

var noteSeen = notes.NewKey[int]("recorder.seen")

func (r *recorder) add(h hooks.Hook, format string, args ...any) hooks.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, h.String()+" "+fmt.Sprintf(format, args...))
	return r.refuse[h]
}

func (r *recorder) Calls() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := strings.Join(r.calls, "\n")
	r.calls = nil
	return out
}

func (r *recorder) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	notes.Add(&c.Notes, noteSeen, 1)
	return r.add(hooks.HookConnect, "%s name=%s local=%s auth=%s", c.Remote, c.RemoteHost, c.Local, c.AuthUser)
}
func (r *recorder) Helo(_ context.Context, c *connection.Connection, host string) hooks.Result {
	return r.add(hooks.HookHelo, "%s", host)
}
func (r *recorder) Ehlo(_ context.Context, c *connection.Connection, host string) hooks.Result {
	return r.add(hooks.HookEhlo, "%s", host)
}
func (r *recorder) Mail(_ context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	return r.add(hooks.HookMail, "<%s> size=%d helo=%s seen=%d", from, tx.Params.Size, c.Helo, noteSeen.Get(&c.Notes))
}
func (r *recorder) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	return r.add(hooks.HookRcpt, "<%s> before=%v", rcpt, tx.Recipients)
}
func (r *recorder) Data(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return r.add(hooks.HookData, "%v", tx.Recipients)
}
func (r *recorder) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	return r.add(hooks.HookDataPost, "")
}

func newChecker(t *testing.T, plugins ...hooks.Instance) (*policyd.Checker, *hookstest.LogBuffer) {
	t.Helper()
	var log hookstest.LogBuffer
	ch, err := hooks.NewChain(plugins, hooks.Options{Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return &policyd.Checker{Listener: "mx", Hostname: "mx.example.test",
		Session: server.SessionConfig{Chain: ch, SpoolDir: t.TempDir(), Logger: log.Logger()}}, &log
}

// rcptRequest is a RCPT request as Postfix 3.7 sends it, with over's
// attributes.
func rcptRequest(over ...string) wire.Request {
	req := wire.Request{
		"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
		"client_address": "192.0.2.7", "client_port": "40000", "client_name": "client.example.org",
		"reverse_client_name": "client.example.org", "server_address": "192.0.2.1", "server_port": "25",
		"helo_name": "client.example.org", "sender": "alice@example.org", "recipient": "bob@example.test",
		"recipient_count": "0", "queue_id": "", "instance": "", "size": "0", "sasl_username": "",
	}
	for _, kv := range over {
		k, v, _ := strings.Cut(kv, "=")
		req[k] = v
	}
	return req
}

func TestCheckRunsTheHooksOfTheState(t *testing.T) {
	rec := &recorder{}
	c, _ := newChecker(t, hookstest.Plugin("rec", rec))
	for _, tc := range []struct {
		name  string
		req   wire.Request
		calls string
	}{
		{"RCPT", rcptRequest("size=1234"), `connect 192.0.2.7:40000 name=client.example.org local=192.0.2.1:25 auth=
ehlo client.example.org
mail <alice@example.org> size=1234 helo=client.example.org seen=1
rcpt <bob@example.test> before=[]`},
		{"CONNECT", rcptRequest("protocol_state=CONNECT", "client_name=unknown"), `connect 192.0.2.7:40000 name= local=192.0.2.1:25 auth=`},
		{"HELO over SMTP", rcptRequest("protocol_state=HELO", "protocol_name=SMTP"), `connect 192.0.2.7:40000 name=client.example.org local=192.0.2.1:25 auth=
helo client.example.org`},
		{"MAIL, null sender, no HELO, SASL", rcptRequest("protocol_state=MAIL", "sender=", "helo_name=", "sasl_username=alice"), `connect 192.0.2.7:40000 name=client.example.org local=192.0.2.1:25 auth=alice
mail <> size=0 helo=[192.0.2.7] seen=1`},
		{"DATA with its one recipient", rcptRequest("protocol_state=DATA", "recipient_count=1"), `connect 192.0.2.7:40000 name=client.example.org local=192.0.2.1:25 auth=
ehlo client.example.org
mail <alice@example.org> size=0 helo=client.example.org seen=1
rcpt <bob@example.test> before=[]
data [bob@example.test]`},
		{"DATA without a known recipient", rcptRequest("protocol_state=DATA", "recipient=", "recipient_count=3"), `connect 192.0.2.7:40000 name=client.example.org local=192.0.2.1:25 auth=
ehlo client.example.org
mail <alice@example.org> size=0 helo=client.example.org seen=1`},
		{"VRFY", rcptRequest("protocol_state=VRFY"), ``},
		{"another request kind", rcptRequest("request=junk"), ``},
	} {
		v := c.Check(context.Background(), tc.req)
		if v.Action != policyd.Dunno {
			t.Errorf("%s: action %q, want DUNNO", tc.name, v.Action)
		}
		if got := rec.Calls(); got != tc.calls {
			t.Errorf("%s: hooks ran:\n%s\nwant:\n%s", tc.name, got, tc.calls)
		}
	}
}

func TestCheckAnswersTheFirstRefusal(t *testing.T) {
	rec := &recorder{refuse: map[hooks.Hook]hooks.Result{}}
	c, log := newChecker(t, hookstest.Plugin("rec", rec))
	for _, tc := range []struct {
		hook   hooks.Hook
		result hooks.Result
		action string
	}{
		{hooks.HookRcpt, hooks.Result{Code: hooks.Deny, Msg: "no such user here", Enhanced: [3]int{5, 1, 1}}, "550 5.1.1 no such user here"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, Msg: "try later", Enhanced: [3]int{4, 7, 1}}, "450 4.7.1 try later"},
		{hooks.HookMail, hooks.Result{Code: hooks.Deny, Msg: "sender refused"}, "550 5.7.1 sender refused"},
		{hooks.HookEhlo, hooks.Result{Code: hooks.Deny, Msg: "bad HELO"}, "550 5.7.1 bad HELO"},
		{hooks.HookConnect, hooks.Result{Code: hooks.DenyDisconnect, Msg: "go away"}, "554 5.7.1 go away"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, Err: fmt.Errorf("backend down")}, "451 4.3.0 Local error in processing; try again later"},
	} {
		clear(rec.refuse)
		rec.refuse[tc.hook] = tc.result
		v := c.Check(context.Background(), rcptRequest())
		rec.Calls()
		if v.Action != tc.action {
			t.Errorf("%s %v: action %q, want %q", tc.hook, tc.result.Code, v.Action, tc.action)
		}
	}
	if !strings.Contains(log.String(), "hook decided") {
		t.Errorf("the refusals were not logged as the server logs them:\n%s", log.String())
	}
}

func TestCheckNeverAnswersOK(t *testing.T) {
	rec := &recorder{refuse: map[hooks.Hook]hooks.Result{hooks.HookRcpt: {Code: hooks.OK}}}
	c, _ := newChecker(t, hookstest.Plugin("rec", rec))
	if v := c.Check(context.Background(), rcptRequest()); v.Action != "DUNNO" {
		t.Errorf("a plugin's OK gave %q; DUNNO lets Postfix's other restrictions run", v.Action)
	}
}

func TestCheckSyntaxErrorsAreNotRefusals(t *testing.T) {
	rec := &recorder{}
	c, log := newChecker(t, hookstest.Plugin("rec", rec))
	v := c.Check(context.Background(), rcptRequest("recipient=not an address"))
	if v.Action != policyd.Dunno {
		t.Errorf("an address Sluice cannot parse gave %q, want DUNNO (Postfix accepted it)", v.Action)
	}
	if !strings.Contains(log.String(), "Sluice cannot parse what Postfix accepted") {
		t.Errorf("no warning logged:\n%s", log.String())
	}
}

// A transaction's recipients accepted earlier (same instance) are in the
// transaction of the next request, so a recipient limit holds; notes do
// not outlive their request.
func TestCheckRemembersTheInstanceRecipients(t *testing.T) {
	rec := &recorder{}
	maxrcpt := rcptLimit(2)
	c, _ := newChecker(t, hookstest.Plugin("max", maxrcpt), hookstest.Plugin("rec", rec))
	c.MaxInstances = 2
	for i, want := range []string{"DUNNO", "DUNNO", "450 4.5.3 only 2 recipients"} {
		v := c.Check(context.Background(), rcptRequest("instance=a1", fmt.Sprintf("recipient=u%d@example.test", i)))
		if v.Action != want {
			t.Errorf("recipient %d: %q, want %q", i, v.Action, want)
		}
	}
	calls := rec.Calls()
	if !strings.Contains(calls, "rcpt <u1@example.test> before=[u0@example.test]") {
		t.Errorf("the second request did not see the first recipient:\n%s", calls)
	}
	if strings.Contains(calls, "seen=2") {
		t.Errorf("a connection note outlived its request:\n%s", calls)
	}
	// Another transaction (instance), or the same instance with another
	// sender, starts afresh.
	if v := c.Check(context.Background(), rcptRequest("instance=a2", "recipient=x@example.test")); v.Action != "DUNNO" {
		t.Errorf("another instance: %q", v.Action)
	}
	if v := c.Check(context.Background(), rcptRequest("instance=a1", "sender=other@example.org")); v.Action != "DUNNO" {
		t.Errorf("the same instance with another sender: %q", v.Action)
	}
	// DATA of instance a1 with the other sender sees its one recipient.
	rec.Calls()
	c.Check(context.Background(), rcptRequest("instance=a1", "sender=other@example.org", "protocol_state=DATA", "recipient="))
	if calls := rec.Calls(); !strings.Contains(calls, "data [bob@example.test]") {
		t.Errorf("DATA did not run with the transaction's recipients:\n%s", calls)
	}
	// Past MaxInstances the oldest transaction (a1) is forgotten.
	c.Check(context.Background(), rcptRequest("instance=a3"))
	rec.Calls()
	c.Check(context.Background(), rcptRequest("instance=a2", "recipient=z@example.test"))
	if calls := rec.Calls(); !strings.Contains(calls, "rcpt <z@example.test> before=[x@example.test]") {
		t.Errorf("a newer instance was forgotten:\n%s", calls)
	}
	if v := c.Check(context.Background(), rcptRequest("instance=a1", "sender=other@example.org", "recipient=y@example.test")); v.Action != "DUNNO" {
		t.Errorf("a1: %q", v.Action)
	}
	if calls := rec.Calls(); !strings.Contains(calls, "rcpt <y@example.test> before=[]") {
		t.Errorf("an instance past MaxInstances was remembered:\n%s", calls)
	}
}

// rcptLimit refuses a recipient past its count, as maxrcpt does.
type rcptLimit int

func (n rcptLimit) Rcpt(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if len(tx.Recipients) >= int(n) {
		return hooks.Result{Code: hooks.DenySoft, Msg: fmt.Sprintf("only %d recipients", n), Enhanced: [3]int{4, 5, 3}}
	}
	return hooks.Result{}
}

func TestUnfed(t *testing.T) {
	got := policyd.Unfed(&recorder{})
	if len(got) != 1 || got[0] != hooks.HookDataPost {
		t.Errorf("Unfed = %v, want [data_post]", got)
	}
}
