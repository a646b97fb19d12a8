package hooks

import (
	"fmt"
	"strconv"
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

// AppendWire appends r as the client gets it, CRLF included. A Msg
// holding "\n" is a multi-line reply (EHLO's): every line gets the code
// (and the enhanced code, RFC 2034), with "-" after it on all lines but
// the last. Built with appends, not fmt: it runs for every reply.
func (r Reply) AppendWire(b []byte) []byte {
	e := r.Enhanced
	msg := r.Msg
	for {
		line, rest, more := cutLine(msg)
		b = strconv.AppendInt(b, int64(r.Code), 10)
		switch {
		case more:
			b = append(b, '-')
		case e != [3]int{} || line != "" || r.Code == 334: // "334 " is an empty SASL challenge
			b = append(b, ' ')
		}
		if e != [3]int{} {
			b = strconv.AppendInt(b, int64(e[0]), 10)
			b = append(b, '.')
			b = strconv.AppendInt(b, int64(e[1]), 10)
			b = append(b, '.')
			b = strconv.AppendInt(b, int64(e[2]), 10)
			if line != "" {
				b = append(b, ' ')
			}
		}
		b = append(b, line...)
		b = append(b, '\r', '\n')
		if !more {
			return b
		}
		msg = rest
	}
}

// cutLine cuts s at its first "\n".
func cutLine(s string) (line, rest string, more bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Positive reports a 2xx or 3xx reply.
func (r Reply) Positive() bool { return r.Code < 400 }

// replies is one hook's reply to each Code; Done answers like OK. A zero
// Reply means "no reply of the hook's own": the command carries on.
type replies struct {
	declined, ok, deny, denySoft, denyDisconnect, denySoftDisconnect Reply
	// failure answers a plugin that failed (Result.failed) in place of
	// denySoft; zero keeps denySoft.
	failure Reply
}

// forCode returns the reply to code.
func (rs *replies) forCode(code Code) Reply {
	switch code {
	case OK, Done:
		return rs.ok
	case Deny:
		return rs.deny
	case DenySoft:
		return rs.denySoft
	case DenyDisconnect:
		return rs.denyDisconnect
	case DenySoftDisconnect:
		return rs.denySoftDisconnect
	default:
		return rs.declined
	}
}

// ReplyFor returns the reply a hook's result gives the client: the hook's
// default for the code, with the plugin's message and enhanced code when it
// set them (an enhanced code only where the default has one, its class
// forced to the reply's). Done answers like OK. A plugin's failure (a
// DenySoft with an Err and neither Msg nor ReplyCode, which the chain also
// makes of a panic, an error with a code that does not reject and a blown
// deadline) answers 451 4.3.0 Local error in processing (421 4.3.0 and a
// close at connect), except where the hook's DenySoft reply stands for it:
// auth (454 4.7.0), received_line, queue_pre and queue (4.3.0 already) and
// quit (221). For hooks with no reply of their own (rcpt_ok, queue_post,
// reset_transaction, disconnect, deny, ok) and for a value that is no hook,
// it returns a zero Reply.
func ReplyFor(hook Hook, r Result) Reply {
	if !hook.valid() {
		return Reply{}
	}
	rs := &hookTable[hook].replies
	if r.failed() && rs.failure.Code != 0 {
		// A plugin that failed (panicked, returned an error, outlived its
		// deadline) is a local error, not a policy: the client is told so.
		return rs.failure
	}
	rep := rs.forCode(r.Code)
	if rep.Code == 0 {
		// Declined at a hook whose default is "carry on" (mail_pre,
		// rcpt_pre, data_headers_end, data_post, queue_pre), or a hook
		// that answers nothing.
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
