package hooks_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
)

// want is a reply as the client sees it: its first line and whether the
// connection closes after it.
type want struct {
	line  string
	close bool
}

func TestReplyForEveryCode(t *testing.T) {
	const (
		D   = hooks.Declined
		OK  = hooks.OK
		Dn  = hooks.Deny
		DS  = hooks.DenySoft
		DD  = hooks.DenyDisconnect
		DSD = hooks.DenySoftDisconnect
		Do  = hooks.Done
	)
	tests := map[hooks.Hook]map[hooks.Code]want{
		hooks.HookConnect: {
			D:   {"220 ESMTP Sluice ready", false},
			OK:  {"220 ESMTP Sluice ready", false},
			Do:  {"220 ESMTP Sluice ready", false},
			Dn:  {"554 5.7.1 Connection refused", true},
			DS:  {"421 4.7.0 Service temporarily unavailable, try again later", true},
			DD:  {"554 5.7.1 Connection refused", true},
			DSD: {"421 4.7.0 Service temporarily unavailable, try again later", true},
		},
		hooks.HookMail: {
			D:   {"250 2.1.0 Sender OK", false},
			OK:  {"250 2.1.0 Sender OK", false},
			Do:  {"250 2.1.0 Sender OK", false},
			Dn:  {"550 5.7.1 Sender rejected", false},
			DS:  {"450 4.7.1 Sender temporarily rejected", false},
			DD:  {"550 5.7.1 Sender rejected", true},
			DSD: {"421 4.7.1 Sender temporarily rejected", true},
		},
		hooks.HookRcpt: {
			D:   {"450 4.7.1 No plugin decided if relaying is allowed", false},
			OK:  {"250 2.1.5 Recipient OK", false},
			Do:  {"250 2.1.5 Recipient OK", false},
			Dn:  {"550 5.7.1 Recipient rejected", false},
			DS:  {"450 4.7.1 Recipient temporarily rejected", false},
			DD:  {"550 5.7.1 Recipient rejected", true},
			DSD: {"421 4.7.1 Recipient temporarily rejected", true},
		},
		hooks.HookData: {
			D:   {"354 End data with <CR><LF>.<CR><LF>", false},
			OK:  {"354 End data with <CR><LF>.<CR><LF>", false},
			Dn:  {"554 5.7.1 Message rejected", false},
			DS:  {"451 4.7.1 Message temporarily rejected", false},
			DD:  {"554 5.7.1 Message rejected", true},
			DSD: {"421 4.7.1 Message temporarily rejected", true},
		},
		hooks.HookQueue: {
			D:   {"451 4.3.0 Queuing declined or disabled; try again later", false},
			OK:  {"250 2.0.0 Ok: queued", false},
			Dn:  {"554 5.3.0 Message refused by the queue", false},
			DS:  {"451 4.3.0 Queueing failed; try again later", false},
			DD:  {"554 5.3.0 Message refused by the queue", true},
			DSD: {"421 4.3.0 Queueing failed; try again later", true},
		},
		hooks.HookVrfy: {
			D:  {"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery", false},
			OK: {"250 2.1.5 User OK", false},
			Dn: {"554 5.7.1 Access denied", false},
		},
		hooks.HookDataHeadersEnd: {
			Dn:  {"554 5.7.1 Message rejected", false},
			DS:  {"451 4.7.1 Message temporarily rejected", false},
			DD:  {"554 5.7.1 Message rejected", true},
			DSD: {"421 4.7.1 Message temporarily rejected", true},
		},
		hooks.HookDataPost: {
			Dn: {"552 5.7.1 Message rejected", false},
			DS: {"452 4.7.1 Message temporarily rejected", false},
		},
		hooks.HookQuit: {
			D:  {"221 2.0.0 Bye", true},
			Dn: {"221 2.0.0 Bye", true},
		},
		hooks.HookUnrecognized: {
			D:  {"500 5.5.1 Unrecognized command", false},
			OK: {"250 2.0.0 OK", false},
			DD: {"521 5.5.1 Unrecognized command; closing connection", true},
		},
	}
	for hook, codes := range tests {
		for code, w := range codes {
			rep := hooks.ReplyFor(hook, hooks.Result{Code: code})
			if rep.String() != w.line || rep.Close != w.close {
				t.Errorf("ReplyFor(%s, %v) = %q close=%v, want %q close=%v", hook, code, rep, rep.Close, w.line, w.close)
			}
			if rep.Close != code.Disconnects() && hook != hooks.HookConnect && hook != hooks.HookQuit {
				t.Errorf("ReplyFor(%s, %v): Close=%v but Disconnects()=%v", hook, code, rep.Close, code.Disconnects())
			}
		}
	}
}

func TestReplyForCarryOnHooks(t *testing.T) {
	// Hooks whose non-rejecting answers let the command go on have no reply
	// of their own: the zero Reply.
	for _, hook := range []hooks.Hook{hooks.HookMailPre, hooks.HookRcptPre, hooks.HookDataHeadersEnd, hooks.HookReceivedLine, hooks.HookDataPost, hooks.HookQueuePre} {
		for _, code := range []hooks.Code{hooks.Declined, hooks.OK, hooks.Done} {
			if rep := hooks.ReplyFor(hook, hooks.Result{Code: code, Msg: "x"}); rep != (hooks.Reply{}) {
				t.Errorf("ReplyFor(%s, %v) = %q, want the zero Reply", hook, code, rep)
			}
		}
	}
	for _, hook := range []hooks.Hook{hooks.HookRcptOK, hooks.HookQueuePost, hooks.HookReset, hooks.HookDisconnect, hooks.HookDeny, hooks.HookOK, hooks.Hook(0), hooks.Hook(200)} {
		if rep := hooks.ReplyFor(hook, hooks.Reject("x")); rep != (hooks.Reply{}) {
			t.Errorf("ReplyFor(%s, Deny) = %q, want the zero Reply", hook, rep)
		}
	}
}

func TestReplyForEveryHookAndCodeIsConsistent(t *testing.T) {
	hooksWithReplies := []hooks.Hook{hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo, hooks.HookAuth, hooks.HookMailPre, hooks.HookMail,
		hooks.HookRcptPre, hooks.HookRcpt, hooks.HookData, hooks.HookDataHeadersEnd, hooks.HookDataPost,
		hooks.HookQueuePre, hooks.HookQueue, hooks.HookVrfy, hooks.HookNoop, hooks.HookHelp, hooks.HookQuit,
		hooks.HookUnrecognized}
	for _, hook := range hooksWithReplies {
		for code := hooks.Declined; code <= hooks.Done; code++ {
			rep := hooks.ReplyFor(hook, hooks.Result{Code: code})
			if rep.Code == 0 {
				if code.Rejects() {
					t.Errorf("%s %v: a rejection with no reply", hook, code)
				}
				continue
			}
			if hook == hooks.HookQuit {
				// QUIT always ends with 221 and the close.
				if rep.Code != 221 || !rep.Close {
					t.Errorf("quit %v: %q close=%v", code, rep, rep.Close)
				}
				continue
			}
			if code.Rejects() && rep.Positive() {
				t.Errorf("%s %v: rejection answered %q", hook, code, rep)
			}
			if rep.Enhanced != [3]int{} && rep.Enhanced[0] != rep.Code/100 {
				t.Errorf("%s %v: %q: enhanced class differs from the reply's", hook, code, rep)
			}
			if code == hooks.DenySoft || code == hooks.DenySoftDisconnect {
				if rep.Code/100 != 4 {
					t.Errorf("%s %v: %q is not temporary", hook, code, rep)
				}
			}
			if code == hooks.Deny || code == hooks.DenyDisconnect {
				if rep.Code/100 != 5 {
					t.Errorf("%s %v: %q is not permanent", hook, code, rep)
				}
			}
			if code.Disconnects() && !rep.Close {
				t.Errorf("%s %v: %q does not close", hook, code, rep)
			}
		}
	}
}

func TestReplyForPluginMessageAndEnhanced(t *testing.T) {
	tests := []struct {
		hook hooks.Hook
		r    hooks.Result
		want string
	}{
		{hooks.HookRcpt, hooks.Result{Code: hooks.Deny, Msg: "no such user here", Enhanced: [3]int{5, 1, 1}}, "550 5.1.1 no such user here"},
		// The class follows the reply: a plugin's 5.x.x on a temporary
		// reply becomes 4.x.x, and the other way round.
		{hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, Msg: "greylisted", Enhanced: [3]int{5, 7, 1}}, "450 4.7.1 greylisted"},
		{hooks.HookMail, hooks.Result{Code: hooks.Deny, Enhanced: [3]int{4, 1, 8}}, "550 5.1.8 Sender rejected"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.OK, Enhanced: [3]int{5, 1, 5}}, "250 2.1.5 Recipient OK"},
		{hooks.HookQueue, hooks.Result{Code: hooks.DenySoftDisconnect, Msg: "disk full", Enhanced: [3]int{5, 3, 1}}, "421 4.3.1 disk full"},
		// 354, the greeting and the HELO/EHLO answer keep none (RFC 2034).
		{hooks.HookData, hooks.Result{Code: hooks.OK, Msg: "go ahead", Enhanced: [3]int{2, 0, 0}}, "354 go ahead"},
		{hooks.HookConnect, hooks.Result{Code: hooks.OK, Enhanced: [3]int{2, 0, 0}}, "220 ESMTP Sluice ready"},
		{hooks.HookEhlo, hooks.Result{Code: hooks.OK, Msg: "hi", Enhanced: [3]int{2, 0, 0}}, "250 hi"},
		{hooks.HookConnect, hooks.Result{Code: hooks.Deny, Enhanced: [3]int{5, 7, 25}}, "554 5.7.25 Connection refused"},
		// ReplyCode picks the code within the class; another class is ignored.
		{hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, ReplyCode: 452, Msg: "too many recipients", Enhanced: [3]int{4, 5, 3}}, "452 4.5.3 too many recipients"},
		{hooks.HookMail, hooks.Result{Code: hooks.Deny, ReplyCode: 552}, "552 5.7.1 Sender rejected"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, ReplyCode: 550}, "450 4.7.1 Recipient temporarily rejected"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.Deny, ReplyCode: 999}, "550 5.7.1 Recipient rejected"},
		{hooks.HookData, hooks.Result{Code: hooks.OK, ReplyCode: 350}, "354 End data with <CR><LF>.<CR><LF>"},
		{hooks.HookRcpt, hooks.Result{Code: hooks.OK, ReplyCode: 251, Msg: "User not local; will forward"}, "251 2.1.5 User not local; will forward"},
		// Codes the protocol fixes stay: the server authenticates on 235.
		{hooks.HookAuth, hooks.Result{Code: hooks.OK, ReplyCode: 250}, "235 2.7.0 Authentication successful"},
		{hooks.HookAuth, hooks.Result{Code: hooks.Deny, ReplyCode: 534, Msg: "mechanism too weak"}, "534 5.7.8 mechanism too weak"},
		{hooks.HookConnect, hooks.Result{Code: hooks.OK, ReplyCode: 250}, "220 ESMTP Sluice ready"},
		{hooks.HookQuit, hooks.Result{Code: hooks.OK, ReplyCode: 250}, "221 2.0.0 Bye"},
		// Only the message: the default enhanced code stays.
		{hooks.HookRcpt, hooks.Reject("mailbox full"), "550 5.7.1 mailbox full"},
		{hooks.HookRcpt, hooks.Defer("try later"), "450 4.7.1 try later"},
		{hooks.HookRcpt, hooks.Accept("welcome"), "250 2.1.5 welcome"},
	}
	for _, tc := range tests {
		if got := hooks.ReplyFor(tc.hook, tc.r).String(); got != tc.want {
			t.Errorf("ReplyFor(%s, %+v) = %q, want %q", tc.hook, tc.r, got, tc.want)
		}
	}
}

func TestReplyForStripsLineBreaks(t *testing.T) {
	for _, msg := range []string{"bad\r\n250 OK", "bad\n250 OK", "bad\r250 OK", "bad\r\n\r\n250 OK"} {
		rep := hooks.ReplyFor(hooks.HookRcpt, hooks.Reject(msg))
		if strings.ContainsAny(rep.Msg, "\r\n") || strings.ContainsAny(rep.String(), "\r\n") {
			t.Errorf("message %q reached the reply with a line break: %q", msg, rep)
		}
		if !strings.HasPrefix(rep.Msg, "bad") || !strings.HasSuffix(rep.Msg, "250 OK") {
			t.Errorf("message %q became %q", msg, rep.Msg)
		}
	}
}

func TestReplyString(t *testing.T) {
	for _, tc := range []struct {
		r    hooks.Reply
		want string
	}{
		{hooks.Reply{Code: 250}, "250"},
		{hooks.Reply{Code: 354, Msg: "go"}, "354 go"},
		{hooks.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "no"}, "550 5.7.1 no"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.r, got, tc.want)
		}
	}
	if !(hooks.Reply{Code: 354}).Positive() || (hooks.Reply{Code: 421}).Positive() {
		t.Error("Positive: 354 must be positive, 421 not")
	}
}

func TestCodes(t *testing.T) {
	var zero hooks.Result
	if zero.Code != hooks.Declined {
		t.Fatal("the zero Result must decline")
	}
	names := map[hooks.Code]string{hooks.Declined: "DECLINED", hooks.OK: "OK", hooks.Deny: "DENY", hooks.DenySoft: "DENYSOFT",
		hooks.DenyDisconnect: "DENY_DISCONNECT", hooks.DenySoftDisconnect: "DENYSOFT_DISCONNECT", hooks.Done: "DONE", hooks.Code(99): "Code(99)"}
	for c, n := range names {
		if c.String() != n {
			t.Errorf("%d.String() = %q, want %q", int(c), c.String(), n)
		}
	}
	for c := hooks.Declined; c <= hooks.Done; c++ {
		wantRejects := c == hooks.Deny || c == hooks.DenySoft || c == hooks.DenyDisconnect || c == hooks.DenySoftDisconnect
		if c.Rejects() != wantRejects {
			t.Errorf("%v.Rejects() = %v", c, c.Rejects())
		}
		if c.Disconnects() != (c == hooks.DenyDisconnect || c == hooks.DenySoftDisconnect) {
			t.Errorf("%v.Disconnects() = %v", c, c.Disconnects())
		}
	}
}

func TestReplyForFailure(t *testing.T) {
	// What a plugin's failure (Fail, a panic, an error, a deadline) answers
	// at each hook: a local error, except where the hook's DenySoft reply
	// already says what happened.
	const local = "451 4.3.0 Local error in processing; try again later"
	want := map[hooks.Hook]want{
		hooks.HookConnect:        {"421 4.3.0 Local error in processing; try again later", true},
		hooks.HookHelo:           {local, false},
		hooks.HookEhlo:           {local, false},
		hooks.HookAuth:           {"454 4.7.0 Temporary authentication failure", false},
		hooks.HookMailPre:        {local, false},
		hooks.HookMail:           {local, false},
		hooks.HookRcptPre:        {local, false},
		hooks.HookRcpt:           {local, false},
		hooks.HookData:           {local, false},
		hooks.HookDataHeadersEnd: {local, false},
		hooks.HookReceivedLine:   {local, false},
		hooks.HookDataPost:       {local, false},
		hooks.HookQueuePre:       {"452 4.3.0 Queueing temporarily refused", false},
		hooks.HookQueue:          {"451 4.3.0 Queueing failed; try again later", false},
		hooks.HookVrfy:           {local, false},
		hooks.HookNoop:           {local, false},
		hooks.HookHelp:           {local, false},
		hooks.HookQuit:           {"221 2.0.0 Bye", true}, // QUIT always ends with 221 and the close
		hooks.HookUnrecognized:   {local, false},
	}
	for _, hook := range hooks.Hooks() {
		rep := hooks.ReplyFor(hook, hooks.Fail(errors.New("db down")))
		w, ok := want[hook]
		if !ok {
			if rep != (hooks.Reply{}) {
				t.Errorf("ReplyFor(%s, Fail) = %q, want the zero Reply", hook, rep)
			}
			continue
		}
		if rep.String() != w.line || rep.Close != w.close {
			t.Errorf("ReplyFor(%s, Fail) = %q close=%v, want %q close=%v", hook, rep, rep.Close, w.line, w.close)
		}
	}
	// With words of its own, a DenySoft with an Err is a policy.
	if got := hooks.ReplyFor(hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, Msg: "greylisted", Err: errors.New("x")}).String(); got != "450 4.7.1 greylisted" {
		t.Errorf("DenySoft with Msg and Err = %q", got)
	}
	if got := hooks.ReplyFor(hooks.HookRcpt, hooks.Result{Code: hooks.DenySoft, ReplyCode: 452, Err: errors.New("x")}).String(); got != "452 4.7.1 Recipient temporarily rejected" {
		t.Errorf("DenySoft with ReplyCode and Err = %q", got)
	}
}
