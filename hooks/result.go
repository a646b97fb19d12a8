package hooks

import "fmt"

// Code is a plugin's answer at a hook, with qpsmtpd's meaning. The zero value
// is Declined: "no opinion, ask the next plugin".
type Code int

const (
	// Declined passes to the next plugin; when every plugin declines, the
	// hook's default applies (see the table in doc.go).
	Declined Code = iota
	// OK accepts and stops the chain for this hook.
	OK
	// Deny rejects permanently (5xx).
	Deny
	// DenySoft rejects temporarily (4xx): the client retries later.
	DenySoft
	// DenyDisconnect rejects permanently, then closes the connection.
	DenyDisconnect
	// DenySoftDisconnect rejects temporarily, then closes the connection.
	DenySoftDisconnect
	// Done stops the chain: the plugin took care of the command. The client
	// gets the hook's success reply with the plugin's message; at data_post
	// and queue_pre the message is then not queued (the plugin took it).
	Done
)

var codeNames = [...]string{"DECLINED", "OK", "DENY", "DENYSOFT", "DENY_DISCONNECT", "DENYSOFT_DISCONNECT", "DONE"}

// String returns qpsmtpd's name for the code ("DENYSOFT").
func (c Code) String() string {
	if c >= 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("Code(%d)", int(c))
}

// Rejects reports whether c refuses the command (any Deny code).
func (c Code) Rejects() bool { return c >= Deny && c <= DenySoftDisconnect }

// Disconnects reports whether c closes the connection after the reply.
func (c Code) Disconnects() bool { return c == DenyDisconnect || c == DenySoftDisconnect }

// Result is what a plugin returns from a hook. Result{} declines.
type Result struct {
	Code Code
	// Msg is the text the client sees in the reply; "" keeps the hook's
	// default text. Never put an internal error's text here.
	Msg string
	// Enhanced is the RFC 3463 status code ({5, 7, 1}); zero keeps the
	// hook's default.
	Enhanced [3]int
	// ReplyCode replaces the hook's default SMTP reply code when it is of
	// the same class: a DenySoft at rcpt may answer 452 (too many
	// recipients) instead of 450, a Deny at mail 552 instead of 550. Zero
	// keeps the default; a code of another class is ignored, and so is any
	// change to 220, 221, 235 and 354, whose numbers the protocol fixes, and
	// a 421 on a reply that does not close the connection.
	ReplyCode int
	// Detail is text for the log, never sent to the client: the file a
	// queue wrote, a downstream's answer. The server logs a queue's OK with
	// it (detail= on "message queued"; the client reads "Ok: queued as
	// QUEUEID" whatever Msg says), and the chain adds it to what it logs
	// about a plugin's result ("plugin refused", "plugin error").
	Detail string
	// Err is logged with the plugin's name and never shown to the client.
	// A non-nil Err with Declined, OK or Done fails closed: the chain turns it into
	// DenySoft.
	Err error
}

// Accept returns an OK result with an optional message.
func Accept(msg string) Result { return Result{Code: OK, Msg: msg} }

// Reject returns a Deny result: a permanent refusal with the given text.
func Reject(msg string) Result { return Result{Code: Deny, Msg: msg} }

// Defer returns a DenySoft result: a temporary refusal with the given text.
func Defer(msg string) Result { return Result{Code: DenySoft, Msg: msg} }

// Fail returns a DenySoft result that logs err; the client sees only the
// generic temporary-failure text.
func Fail(err error) Result { return Result{Code: DenySoft, Err: err} }

// failed reports a result that is a plugin's failure rather than a policy:
// a DenySoft with an Err and no words of its own (no Msg, no ReplyCode),
// which is what Fail returns and what the chain makes of a panic, an error
// with a code that does not reject, an invalid code and a blown deadline.
func (r Result) failed() bool {
	return r.Code == DenySoft && r.Err != nil && r.Msg == "" && r.ReplyCode == 0
}

// Decision is one plugin's non-declining result at one hook, as the chain
// reports it to observers and logs.
type Decision struct {
	Hook   Hook
	Plugin string
	Result Result
}
