package hooks

import (
	"context"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// The hook names, as they appear in logs, docs/hooks.md and `smtpd plugins`.
// Each has the single-method interface of the same name below.
const (
	HookConnect        = "connect"
	HookHelo           = "helo"
	HookEhlo           = "ehlo"
	HookAuth           = "auth"
	HookMailPre        = "mail_pre"
	HookMail           = "mail"
	HookRcptPre        = "rcpt_pre"
	HookRcpt           = "rcpt"
	HookData           = "data"
	HookDataHeadersEnd = "data_headers_end"
	HookReceivedLine   = "received_line"
	HookDataPost       = "data_post"
	HookQueuePre       = "queue_pre"
	HookQueue          = "queue"
	HookQueuePost      = "queue_post"
	HookReset          = "reset_transaction"
	HookDisconnect     = "disconnect"
	HookVrfy           = "vrfy"
	HookNoop           = "noop"
	HookHelp           = "help"
	HookQuit           = "quit"
	HookUnrecognized   = "unrecognized_command"
	HookDeny           = "deny"
	HookOK             = "ok"
)

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

// QueuePost runs after the message was queued and the client told so.
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

// HooksOf returns the names of the hooks p implements, in firing order.
func HooksOf(p any) []string {
	var names []string
	add := func(ok bool, name string) {
		if ok {
			names = append(names, name)
		}
	}
	_, ok := p.(Connect)
	add(ok, HookConnect)
	_, ok = p.(Helo)
	add(ok, HookHelo)
	_, ok = p.(Ehlo)
	add(ok, HookEhlo)
	_, ok = p.(Auth)
	add(ok, HookAuth)
	_, ok = p.(MailPre)
	add(ok, HookMailPre)
	_, ok = p.(Mail)
	add(ok, HookMail)
	_, ok = p.(RcptPre)
	add(ok, HookRcptPre)
	_, ok = p.(Rcpt)
	add(ok, HookRcpt)
	_, ok = p.(Data)
	add(ok, HookData)
	_, ok = p.(DataHeadersEnd)
	add(ok, HookDataHeadersEnd)
	_, ok = p.(ReceivedLine)
	add(ok, HookReceivedLine)
	_, ok = p.(DataPost)
	add(ok, HookDataPost)
	_, ok = p.(QueuePre)
	add(ok, HookQueuePre)
	_, ok = p.(Queue)
	add(ok, HookQueue)
	_, ok = p.(QueuePost)
	add(ok, HookQueuePost)
	_, ok = p.(Reset)
	add(ok, HookReset)
	_, ok = p.(Disconnect)
	add(ok, HookDisconnect)
	_, ok = p.(Vrfy)
	add(ok, HookVrfy)
	_, ok = p.(Noop)
	add(ok, HookNoop)
	_, ok = p.(Help)
	add(ok, HookHelp)
	_, ok = p.(Quit)
	add(ok, HookQuit)
	_, ok = p.(Unrecognized)
	add(ok, HookUnrecognized)
	_, ok = p.(DenyObserver)
	add(ok, HookDeny)
	_, ok = p.(OKObserver)
	add(ok, HookOK)
	return names
}

// SizeLimiter is an optional interface for a plugin that caps the message
// size (the size plugin). The server enforces the smallest cap of the chain
// and the listener while the message is read, and announces it in EHLO SIZE.
type SizeLimiter interface {
	MaxMessageBytes() int64
}
