package hooks

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// Hook names one point of the SMTP conversation where plugins run. Each
// has the single-method interface of the same name below, and prints (and
// is logged) as its name in docs/hooks.md and `smtpd plugins`: "connect",
// "data_post". The constants are in firing order; the zero Hook is none.
type Hook uint8

// The hooks, in firing order; hookTable describes each one.
const (
	HookConnect Hook = iota + 1
	HookHelo
	HookEhlo
	HookAuth
	HookMailPre
	HookMail
	HookRcptPre
	HookRcpt
	HookRcptOK
	HookData
	HookDataHeadersEnd
	HookReceivedLine
	HookDataPost
	HookQueuePre
	HookQueue
	HookQueuePost
	HookReset
	HookDisconnect
	HookVrfy
	HookNoop
	HookHelp
	HookQuit
	HookUnrecognized
	HookDeny
	HookOK

	hookCount // one past the last hook
)

// String returns the hook's name as logged ("data_post"), or "Hook(N)" for
// a value that is not one of the constants.
func (h Hook) String() string {
	if h.valid() {
		return hookTable[h].name
	}
	return fmt.Sprintf("Hook(%d)", int(h))
}

// MarshalText returns the hook's name, so that log handlers and encoders
// print "rcpt" rather than a number.
func (h Hook) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

func (h Hook) valid() bool { return h > 0 && h < hookCount }

// ParseHook returns the hook named name ("rcpt", "reset_transaction").
func ParseHook(name string) (Hook, bool) {
	for h := Hook(1); h < hookCount; h++ {
		if hookTable[h].name == name {
			return h, true
		}
	}
	return 0, false
}

// Hooks returns every hook in firing order.
func Hooks() []Hook {
	all := make([]Hook, 0, hookCount-1)
	for h := Hook(1); h < hookCount; h++ {
		all = append(all, h)
	}
	return all
}

// hookInfo is everything the package knows about one hook: HooksOf,
// NewChain, ReplyFor and String read it from hookTable and nowhere else.
type hookInfo struct {
	name       string         // as logged, configured and documented
	implements func(any) bool // whether a plugin implements the hook
	replies    replies        // the reply to each Code; zero for hooks that answer nothing
}

// hookTable has one row per hook, in firing order. The replies follow
// qpsmtpd's SMTP.pm (*_respond) unless a comment says otherwise; doc.go and
// docs/hooks.md show them per hook.
var hookTable = [hookCount]hookInfo{
	HookConnect: {"connect", implements[Connect], replies{
		declined: Reply{220, [3]int{}, "ESMTP Sluice ready", false},
		ok:       Reply{220, [3]int{}, "ESMTP Sluice ready", false},
		// qpsmtpd answers 550/450 here; RFC 5321 3.1 wants 554 for "no
		// service", and 421 is the temporary form.
		deny:               Reply{554, [3]int{5, 7, 1}, "Connection refused", true},
		denySoft:           Reply{421, [3]int{4, 7, 0}, "Service temporarily unavailable, try again later", true},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Connection refused", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Service temporarily unavailable, try again later", true},
		failure:            Reply{421, [3]int{4, 3, 0}, "Local error in processing; try again later", true},
	}},
	HookHelo: {"helo", implements[Helo], heloReplies},
	HookEhlo: {"ehlo", implements[Ehlo], heloReplies},
	HookAuth: {"auth", implements[Auth], replies{
		declined:           Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", false},
		ok:                 Reply{235, [3]int{2, 7, 0}, "Authentication successful", false},
		deny:               Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", false},
		denySoft:           Reply{454, [3]int{4, 7, 0}, "Temporary authentication failure", false},
		denyDisconnect:     Reply{535, [3]int{5, 7, 8}, "Authentication credentials invalid", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Temporary authentication failure", true},
		// A failure keeps 454 4.7.0: RFC 4954's temporary failure.
	}},
	HookMailPre: {"mail_pre", implements[MailPre], replies{
		deny:               Reply{550, [3]int{5, 7, 1}, "Sender rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Sender temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Sender rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Sender temporarily rejected", true},
		failure:            localError,
	}},
	HookMail: {"mail", implements[Mail], replies{
		declined:           Reply{250, [3]int{2, 1, 0}, "Sender OK", false},
		ok:                 Reply{250, [3]int{2, 1, 0}, "Sender OK", false},
		deny:               Reply{550, [3]int{5, 7, 1}, "Sender rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Sender temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Sender rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Sender temporarily rejected", true},
		failure:            localError,
	}},
	HookRcptPre: {"rcpt_pre", implements[RcptPre], replies{
		deny:               Reply{550, [3]int{5, 7, 1}, "Recipient rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Recipient temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Recipient rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Recipient temporarily rejected", true},
		failure:            localError,
	}},
	HookRcpt: {"rcpt", implements[Rcpt], replies{
		// No plugin accepted the recipient: temporary, so that a
		// misconfiguration defers mail instead of bouncing it (qpsmtpd).
		declined:           Reply{450, [3]int{4, 7, 1}, "No plugin decided if relaying is allowed", false},
		ok:                 Reply{250, [3]int{2, 1, 5}, "Recipient OK", false},
		deny:               Reply{550, [3]int{5, 7, 1}, "Recipient rejected", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Recipient temporarily rejected", false},
		denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "Recipient rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Recipient temporarily rejected", true},
		failure:            localError,
	}},
	HookRcptOK: {"rcpt_ok", implements[RcptOK], replies{}},
	HookData: {"data", implements[Data], replies{
		declined:           Reply{354, [3]int{}, "End data with <CR><LF>.<CR><LF>", false},
		ok:                 Reply{354, [3]int{}, "End data with <CR><LF>.<CR><LF>", false},
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{451, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
		failure:            localError,
	}},
	HookDataHeadersEnd: {"data_headers_end", implements[DataHeadersEnd], replies{
		// qpsmtpd only honours the disconnect codes here; Sluice also takes
		// Deny and DenySoft: the body is then read and dropped, and the
		// reply comes after the final dot.
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{451, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
		failure:            localError,
	}},
	HookReceivedLine: {"received_line", implements[ReceivedLine], replies{
		// OK (a plugin wrote the line) and Declined carry on; a refusal or a
		// failure stops the message, as at data_post.
		deny:               Reply{554, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           localError,
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Local error in processing; try again later", true},
	}},
	HookDataPost: {"data_post", implements[DataPost], replies{
		deny:               Reply{552, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{452, [3]int{4, 7, 1}, "Message temporarily rejected", false},
		denyDisconnect:     Reply{552, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Message temporarily rejected", true},
		failure:            localError,
	}},
	// The queue hooks' DenySoft replies already say 4.3.0: a failure keeps them.
	HookQueuePre: {"queue_pre", implements[QueuePre], replies{
		deny:               Reply{552, [3]int{5, 7, 1}, "Message rejected", false},
		denySoft:           Reply{452, [3]int{4, 3, 0}, "Queueing temporarily refused", false},
		denyDisconnect:     Reply{552, [3]int{5, 7, 1}, "Message rejected", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Queueing temporarily refused", true},
	}},
	HookQueue: {"queue", implements[Queue], replies{
		declined:           Reply{451, [3]int{4, 3, 0}, "Queuing declined or disabled; try again later", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "Ok: queued", false},
		deny:               Reply{554, [3]int{5, 3, 0}, "Message refused by the queue", false},
		denySoft:           Reply{451, [3]int{4, 3, 0}, "Queueing failed; try again later", false},
		denyDisconnect:     Reply{554, [3]int{5, 3, 0}, "Message refused by the queue", true},
		denySoftDisconnect: Reply{421, [3]int{4, 3, 0}, "Queueing failed; try again later", true},
	}},
	HookQueuePost:  {"queue_post", implements[QueuePost], replies{}},
	HookReset:      {"reset_transaction", implements[Reset], replies{}},
	HookDisconnect: {"disconnect", implements[Disconnect], replies{}},
	HookVrfy: {"vrfy", implements[Vrfy], replies{
		declined:           Reply{252, [3]int{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery", false},
		ok:                 Reply{250, [3]int{2, 1, 5}, "User OK", false},
		deny:               Reply{554, [3]int{5, 7, 1}, "Access denied", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Try again later", false},
		denyDisconnect:     Reply{554, [3]int{5, 7, 1}, "Access denied", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Try again later", true},
		failure:            localError,
	}},
	HookNoop: {"noop", implements[Noop], replies{
		declined:           Reply{250, [3]int{2, 0, 0}, "OK", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "OK", false},
		deny:               Reply{500, [3]int{5, 5, 1}, "Stop that", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Stop that", false},
		denyDisconnect:     Reply{521, [3]int{5, 7, 0}, "Closing connection", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 0}, "Closing connection", true},
		failure:            localError,
	}},
	HookHelp: {"help", implements[Help], replies{
		declined:           Reply{214, [3]int{2, 0, 0}, "See RFC 5321 and https://www.rfc-editor.org/rfc/rfc5321", false},
		ok:                 Reply{214, [3]int{2, 0, 0}, "Help", false},
		deny:               Reply{502, [3]int{5, 5, 1}, "HELP not available", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "HELP not available", false},
		denyDisconnect:     Reply{502, [3]int{5, 5, 1}, "HELP not available", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "HELP not available", true},
		failure:            localError,
	}},
	// QUIT always ends with 221 and the close, a failure included.
	HookQuit: {"quit", implements[Quit], replies{
		declined:           Reply{221, [3]int{2, 0, 0}, "Bye", true},
		ok:                 Reply{221, [3]int{2, 0, 0}, "Bye", true},
		deny:               Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denySoft:           Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denyDisconnect:     Reply{221, [3]int{2, 0, 0}, "Bye", true},
		denySoftDisconnect: Reply{221, [3]int{2, 0, 0}, "Bye", true},
	}},
	HookUnrecognized: {"unrecognized_command", implements[Unrecognized], replies{
		declined:           Reply{500, [3]int{5, 5, 1}, "Unrecognized command", false},
		ok:                 Reply{250, [3]int{2, 0, 0}, "OK", false},
		deny:               Reply{500, [3]int{5, 5, 1}, "Unrecognized command", false},
		denySoft:           Reply{450, [3]int{4, 7, 1}, "Command temporarily refused", false},
		denyDisconnect:     Reply{521, [3]int{5, 5, 1}, "Unrecognized command; closing connection", true},
		denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "Command refused; closing connection", true},
		failure:            localError,
	}},
	HookDeny: {"deny", implements[DenyObserver], replies{}},
	HookOK:   {"ok", implements[OKObserver], replies{}},
}

var heloReplies = replies{
	declined:           Reply{250, [3]int{}, "Hello", false},
	ok:                 Reply{250, [3]int{}, "Hello", false},
	deny:               Reply{550, [3]int{5, 7, 1}, "HELO rejected", false},
	denySoft:           Reply{450, [3]int{4, 7, 1}, "HELO temporarily rejected", false},
	denyDisconnect:     Reply{550, [3]int{5, 7, 1}, "HELO rejected", true},
	denySoftDisconnect: Reply{421, [3]int{4, 7, 1}, "HELO temporarily rejected", true},
	failure:            localError,
}

// localError is the reply to a plugin's failure (a panic, an error, a
// blown deadline): a local error, not a policy (x.7.1).
var localError = Reply{451, [3]int{4, 3, 0}, "Local error in processing; try again later", false}

// Connect runs when a client connects, before the greeting.
type Connect interface {
	Connect(ctx context.Context, c *connection.Connection) Result
}

// Helo runs at HELO with the client's argument; c.Helo is already set.
type Helo interface {
	Helo(ctx context.Context, c *connection.Connection, host string) Result
}

// Ehlo runs at EHLO with the client's argument; c.Helo is already set.
type Ehlo interface {
	Ehlo(ctx context.Context, c *connection.Connection, host string) Result
}

// Auth runs at AUTH once the client has sent its credentials (mechanisms
// PLAIN and LOGIN), over TLS unless the listener allows plaintext. The first
// OK authenticates: the server then sets c.AuthUser and c.Relay. Deny
// answers 535 5.7.8, DenySoft 454 4.7.0 (a backend is down), and when every
// plugin declines the answer is 535 5.7.8. Never log or note the password.
type Auth interface {
	Auth(ctx context.Context, c *connection.Connection, mech, user, password string) Result
}

// MailPre runs at MAIL before the mail hook; the plugin may rewrite *from
// (the reverse-path without brackets). Deny codes reject MAIL.
type MailPre interface {
	MailPre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from *string) Result
}

// Mail runs at MAIL FROM. tx.Sender and tx.Params are set.
type Mail interface {
	Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) Result
}

// RcptPre runs at RCPT before the rcpt hook; the plugin may rewrite *rcpt.
type RcptPre interface {
	RcptPre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt *string) Result
}

// Rcpt runs at RCPT TO. The recipient is not yet in tx.Recipients; it is
// added when the chain accepts it.
type Rcpt interface {
	Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) Result
}

// RcptOK is told of each recipient the chain accepted (OK or Done at the
// rcpt hook), once it is in tx.Recipients (Haraka's rcpt_ok). It cannot
// change the outcome.
type RcptOK interface {
	RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string)
}

// Data runs at the DATA command, before the 354.
type Data interface {
	Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Result
}

// DataHeadersEnd runs once the header is read, before the body. tx.Header
// is set; tx.Body is still empty.
type DataHeadersEnd interface {
	DataHeadersEnd(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Result
}

// ReceivedLine lets a plugin replace the text of the Received header the
// core adds: set *line (the value after "Received: ") and return OK.
type ReceivedLine interface {
	ReceivedLine(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, line *string) Result
}

// DataPost runs when the whole message is spooled, before it is queued.
type DataPost interface {
	DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Result
}

// QueuePre runs just before the queue hook.
type QueuePre interface {
	QueuePre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Result
}

// Queue hands the message over. OK means the message is durably stored (set
// tx.QueueID); nothing else counts as queued.
type Queue interface {
	Queue(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) Result
}

// QueuePost runs after a queue plugin answered OK and before the client
// is told: the server sends its 250 once every queue_post plugin returned.
// It cannot change the reply.
type QueuePost interface {
	QueuePost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction)
}

// Reset runs when a transaction ends without being queued, or after it was:
// at RSET, at a new EHLO, after the end of DATA, and at disconnect.
type Reset interface {
	Reset(ctx context.Context, c *connection.Connection, tx *transaction.Transaction)
}

// Disconnect runs when the connection ends, whoever closed it.
type Disconnect interface {
	Disconnect(ctx context.Context, c *connection.Connection)
}

// Vrfy runs at VRFY. By default the reply is 252.
type Vrfy interface {
	Vrfy(ctx context.Context, c *connection.Connection, addr string) Result
}

// Noop runs at NOOP.
type Noop interface {
	Noop(ctx context.Context, c *connection.Connection) Result
}

// Help runs at HELP with its optional argument.
type Help interface {
	Help(ctx context.Context, c *connection.Connection, topic string) Result
}

// Quit runs at QUIT, before the 221 and the close.
type Quit interface {
	Quit(ctx context.Context, c *connection.Connection) Result
}

// Unrecognized runs for a command Sluice does not know. A plugin that
// implements the command answers OK (250 with its Msg) or Done.
type Unrecognized interface {
	Unrecognized(ctx context.Context, c *connection.Connection, cmd, arg string) Result
}

// DenyObserver is told every time a plugin rejects something (qpsmtpd's
// deny hook). It cannot change the outcome.
type DenyObserver interface {
	Denied(ctx context.Context, c *connection.Connection, d Decision)
}

// OKObserver is told every time a plugin answers OK (qpsmtpd's ok hook).
type OKObserver interface {
	Accepted(ctx context.Context, c *connection.Connection, d Decision)
}

// HooksOf returns the hooks p implements, in firing order.
func HooksOf(p any) []Hook {
	var hs []Hook
	for h := Hook(1); h < hookCount; h++ {
		if hookTable[h].implements(p) {
			hs = append(hs, h)
		}
	}
	return hs
}

// implements reports whether p implements the hook interface P.
func implements[P any](p any) bool {
	_, ok := p.(P)
	return ok
}

// SizeLimiter is an optional interface for a plugin that caps the message
// size (the size plugin). The server enforces the smallest cap of the chain
// and the listener while the message is read, and announces it in EHLO SIZE.
type SizeLimiter interface {
	MaxMessageBytes() int64
}

// DSNCarrier is an optional interface for a queue plugin that carries the
// DSN parameters of RFC 3461 (RET and ENVID of MAIL, NOTIFY and ORCPT of
// RCPT) on to where it hands the message, so that delivery status
// notifications are honoured past it. The server offers DSN only when
// every queue plugin of the chain says it does (Chain.CarriesDSN). The
// chain asks once, when it is built.
type DSNCarrier interface {
	CarriesDSN() bool
}

// Router is an optional interface for a queue plugin that hands part of a
// message on to other queue plugin instances, named in its settings: the
// recipients a downstream refused for now go to a fallback queue, and the
// delivery status notifications for those it refused for good go to a
// bounce route (smtpforward's fallback_queue and dsn_queue). When the
// configuration is built, every name Routes returns must be a configured
// queue plugin instance that is no Router itself (so that routes cannot
// loop) and implements no hook but queue (the only one that runs for a
// route); it is built, even when no listener lists it, and handed to
// SetRoutes, keyed by name, before any hook runs.
type Router interface {
	Routes() []string
	SetRoutes(routes map[string]Queue) error
}

// InstanceNamer is an optional interface for a plugin that needs the name
// it is configured under: its instance name, the config key, which is not
// its registered name when the table says use = "..." (the external
// plugin namespaces the notes of the program it runs under it). NewChain
// calls SetInstanceName when it builds a chain holding the plugin, before
// any hook runs: once per chain, always with the same name.
type InstanceNamer interface {
	SetInstanceName(name string)
}
