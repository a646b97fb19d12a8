package hooks

import (
	"fmt"
	"strings"
)

// Reply is an SMTP reply: what the client sees after a hook decided.
type Reply struct {
	Code     int
	Enhanced [3]int // zero when the reply has no enhanced status code
	Msg      string
	// Close means the server closes the connection after sending the reply.
	Close bool
}

// String formats the reply as its first line appears on the wire, without
// CRLF: "550 5.7.1 relaying denied".
func (r Reply) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", r.Code)
	if r.Enhanced != [3]int{} {
		fmt.Fprintf(&b, " %d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
	}
	if r.Msg != "" {
		b.WriteString(" ")
		b.WriteString(r.Msg)
	}
	return b.String()
}

// Positive reports a 2xx or 3xx reply.
func (r Reply) Positive() bool { return r.Code < 400 }

// replies is one hook's reply for each code. A zero Reply means "the hook's
// default" (the Declined entry).
type replies struct {
	declined, ok, deny, denySoft, denyDisconnect, denySoftDisconnect Reply
}

// The table follows qpsmtpd's SMTP.pm (*_respond) unless the comment says
// otherwise; see docs/hooks.md.
var table = map[string]replies{
	HookConnect: {
		declined: Reply{220, [3]int{}, "ESMTP Sluice ready", false},
		ok:       Reply{220, [3]int{}, "ESMTP Sluice ready", false},
		// qpsmtpd answers 550/450 here; RFC 5321 3.1 wants 554 for "no
		// service", and 421 is the temporary form.
		deny:               Reply{554, [3]int{5, 7, 1}, "Connection refused", true},
		denySoft:           Reply{421, [3]int{4, 7, 0}, "Service temporarily unavailable, try again later", true},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Connection refused", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Service temporarily unavailable, try again later", true},
	},
	HookHelo: heloReplies,
	HookEhlo: heloReplies,
	HookAuth: {
		declined:           Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", false},
		ok:                 Reply{235, [3]int{2, 7, 0}, "Authentication successful", false},
		deny:               Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", false},
		denySoft:           Reply{454, [3]int{4, 7, 0}, "Temporary authentication failure", false},
		denyDisconnect:     Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Temporary authentication failure", true},
	},
	HookMailPre: {
		deny:               Reply{550, [3]int{5, 7, 1}, "Sender rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Sender temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Sender rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Sender temporarily rejected", true},
	},
	HookMail: {
		declined:           Reply{250, [3]int{2, 1, 0}, "Sender OK", false},
		ok:                 Reply{250, [3]int{2, 1, 0}, "Sender OK", false},
		deny:               Reply{550, [3]int{5, 7, 1}, "Sender rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Sender temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Sender rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Sender temporarily rejected", true},
	},
	HookRcptPre: {
		deny:               Reply{550, [3]int{5, 7, 1}, "Recipient rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Recipient temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Recipient rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Recipient temporarily rejected", true},
	},
	HookRcpt: {
		// No plugin accepted the recipient: temporary, so that a
		// misconfiguration defers mail instead of bouncing it (qpsmtpd).
		declined:           Reply{450, [3]int{4, 7, 1}, "No plugin decided if relaying is allowed", false},
		ok:                 Reply{250, [3]int{2, 1, 5}, "Recipient OK", false},
		deny:               Reply{550, [3]int{5, 7, 1}, "Recipient rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Recipient temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Recipient rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Recipient temporarily rejected", true},
	},
	HookData: {
		declined:           Reply{354, [3]int{}, "End data with <CR><LF>.<CR><LF>", false},
		ok:                 Reply{354, [3]int{}, "End data with <CR><LF>.<CR><LF>", false},
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{451, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
	},
	HookDataHeadersEnd: {
		// qpsmtpd only honours the disconnect codes here; Sluice also takes
		// Deny and DenySoft: the body is then read and dropped, and the
		// reply comes after the final dot.
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{451, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
	},
	HookReceivedLine: {
		// OK (a plugin wrote the line) and Declined carry on; a refusal or a
		// failure stops the message, as at data_post.
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{451, [3]int{4, 3, 0}, "Local error in processing; try again later", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Local error in processing; try again later", true},
	},
	HookDataPost: {
		deny:               Reply{552, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{452, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{552, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
	},
	HookQueuePre: {
		deny:               Reply{552, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{452, [3]int{4, 3, 0}, "Queueing temporarily refused", false},
		denyDisconnect:     Reply{552, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Queueing temporarily refused", true},
	},
	HookQueue: {
		declined:           Reply{451, [3]int{4, 3, 0}, "Queuing declined or disabled; try again later", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "Ok: queued", false},
		deny:               Reply{554, [3]int{5, 3, 0}, "Message refused by the queue", false},
		denySoft:           Reply{451, [3]int{4, 3, 0}, "Queueing failed; try again later", false},
		denyDisconnect:     Reply{554, [3]int{5, 3, 0}, "Message refused by the queue", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Queueing failed; try again later", true},
	},
	HookVrfy: {
		declined:           Reply{252, [3]int{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery", false},
		ok:                 Reply{250, [3]int{2, 1, 5}, "User OK", false},
		deny:               Reply{554, [3]int{5, 7, 1}, "Access denied", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Try again later", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Access denied", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Try again later", true},
	},
	HookNoop: {
		declined:           Reply{250, [3]int{2, 0, 0}, "OK", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "OK", false},
		deny:               Reply{500, [3]int{5, 5, 1}, "Stop that", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Stop that", false},
		denyDisconnect:     Reply{521, [3]int{5, 7, 0}, "Closing connection", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Closing connection", true},
	},
	HookHelp: {
		declined:           Reply{214, [3]int{2, 0, 0}, "See RFC 5321 and https://www.rfc-editor.org/rfc/rfc5321", false},
		ok:                 Reply{214, [3]int{2, 0, 0}, "Help", false},
		deny:               Reply{502, [3]int{5, 5, 1}, "HELP not available", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "HELP not available", false},
		denyDisconnect:     Reply{502, [3]int{5, 5, 1}, "HELP not available", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "HELP not available", true},
	},
	HookQuit: {
		declined:           Reply{221, [3]int{2, 0, 0}, "Bye", true},
		ok:                 Reply{221, [3]int{2, 0, 0}, "Bye", true},
		deny:               Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denySoft:           Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denyDisconnect:     Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denySoftDisconnect: Reply{221, [3]int{2, 0, 0}, "Bye", true},
	},
	HookUnrecognized: {
		declined:           Reply{500, [3]int{5, 5, 1}, "Unrecognized command", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "OK", false},
		deny:               Reply{500, [3]int{5, 5, 1}, "Unrecognized command", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Command temporarily refused", false},
		denyDisconnect:     Reply{521, [3]int{5, 5, 1}, "Unrecognized command; closing connection", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Command refused; closing connection", true},
	},
}

var heloReplies = replies{
	declined:           Reply{250, [3]int{}, "Hello", false},
	ok:                 Reply{250, [3]int{}, "Hello", false},
	deny:               Reply{550, [3]int{5, 7, 1}, "HELO rejected", false},
	denySoft:           Reply{450, [3]int{4, 7, 1}, "HELO temporarily rejected", false},
	denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "HELO rejected", true},
	denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "HELO temporarily rejected", true},
}

// ReplyFor returns the reply a hook's result gives the client: the hook's
// default for the code, with the plugin's message and enhanced code when it
// set them (an enhanced code only where the default has one, its class
// forced to the reply's). Done answers like OK. For hooks with no reply of
// their own (queue_post, reset_transaction, disconnect) it returns a zero
// Reply.
func ReplyFor(hook string, r Result) Reply {
	t, ok := table[hook]
	if !ok {
		return Reply{}
	}
	if r.Code == DenySoft && r.Err != nil && r.Msg == "" && r.ReplyCode == 0 && t.denySoft.Code != 0 &&
		hook != HookAuth && t.denySoft.Enhanced != [3]int{4, 3, 0} {
		// A plugin that failed (panicked, returned an error, outlived its
		// deadline) is a local error, not a policy (x.7.1): the client is
		// told so. AUTH keeps 454 4.7.0 (RFC 4954's temporary failure);
		// the queue hooks' own replies already say 4.3.0.
		if hook == HookConnect {
			return Reply{421, [3]int{4, 3, 0}, "Local error in processing; try again later", true}
		}
		return Reply{451, [3]int{4, 3, 0}, "Local error in processing; try again later", false}
	}
	var rep Reply
	switch r.Code {
	case OK, Done:
		rep = t.ok
	case Deny:
		rep = t.deny
	case DenySoft:
		rep = t.denySoft
	case DenyDisconnect:
		rep = t.denyDisconnect
	case DenySoftDisconnect:
		rep = t.denySoftDisconnect
	default:
		rep = t.declined
	}
	if rep.Code == 0 {
		// Declined at a hook whose default is "carry on" (mail_pre,
		// rcpt_pre, data_headers_end, data_post, queue_pre).
		return Reply{}
	}
	if c := r.ReplyCode; c >= 200 && c <= 599 && c/100 == rep.Code/100 && !fixedCode(rep.Code) && (c != 421 || rep.Close) { // 421 promises a close
		rep.Code = c
	}
	if r.Msg != "" {
		rep.Msg = sanitize(r.Msg)
	}
	// Replies without an enhanced code keep none: RFC 2034 leaves it off
	// the greeting, the HELO/EHLO answer and 354.
	if r.Enhanced != [3]int{} && rep.Enhanced != [3]int{} {
		rep.Enhanced = r.Enhanced
		rep.Enhanced[0] = rep.Code / 100 // keep the class consistent with the reply
	}
	return rep
}

// fixedCode reports a reply code whose number the protocol itself gives
// meaning to, which Result.ReplyCode may not change: the greeting (220), QUIT's
// answer (221), AUTH's success (235: the server authenticates on it) and
// DATA's go-ahead (354).
func fixedCode(code int) bool {
	return code == 220 || code == 221 || code == 235 || code == 354
}

// sanitize keeps a plugin's message on one line: CR and LF would let it
// forge further replies.
func sanitize(s string) string {
	if strings.ContainsAny(s, "\r\n") {
		s = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(s)
	}
	return s
}
