// Package transaction holds one mail transaction: the envelope (sender and
// recipients), the message header parsed once, the body spool, and the
// transaction's notes. A transaction starts at MAIL and ends at the end of
// DATA, RSET, a new EHLO or the end of the connection.
package transaction

import (
	"bufio"
	"fmt"
	"io"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/notes"
)

// MailParams are the ESMTP parameters of the MAIL command that Sluice
// understands.
type MailParams struct {
	// Size is the SIZE= the client declared, 0 when absent.
	Size int64
	// Body is "7BIT", "8BITMIME" or "".
	Body string
	// UTF8 is true when the client asked for SMTPUTF8.
	UTF8 bool
	// Auth is the AUTH= parameter, "" when absent.
	Auth string
	// Ret is the DSN RET= parameter (RFC 3461): "FULL", "HDRS" or "".
	Ret string
	// EnvID is the DSN ENVID= parameter, xtext-decoded; "" when absent.
	EnvID string
}

// RcptParams are the DSN parameters (RFC 3461) of one RCPT command. They
// are only accepted on a listener that offers DSN, which it does only when
// its queue plugins carry DSN on (hooks.DSNCarrier).
type RcptParams struct {
	// Notify is NOTIFY=: nil when absent, ["NEVER"], or a subset of
	// "SUCCESS", "FAILURE" and "DELAY" in the order the client gave.
	Notify []string
	// ORcptType and ORcpt are ORCPT=: the address type ("rfc822" or
	// "utf-8", lower case) and the original recipient, decoded; "" when
	// absent.
	ORcptType string
	ORcpt     string
}

// NoteWhitelisted is the transaction note a black/white list plugin (bwl)
// sets when the sender is whitelisted; its value names the rule that
// matched ("sender friend@example.org"). dnsbl, rhsbl, greylist and karma
// skip a whitelisted transaction. A whitelist never makes a recipient
// acceptable: the plugins that accept recipients (rcptok) decide that.
var NoteWhitelisted = notes.NewKey[string]("bwl.whitelisted_sender")

// Transaction is one message on its way through the chain.
type Transaction struct {
	// ID names the transaction in logs; it becomes the queue id.
	ID string
	// Sender is the reverse-path without angle brackets; "" is the null
	// sender of bounces.
	Sender string
	// Params are the MAIL command's parameters.
	Params MailParams
	// Recipients are the accepted forward-paths, in order.
	Recipients []string
	// RcptParams holds the DSN parameters of the recipients that had any,
	// by forward-path as it stands in Recipients; nil when none had.
	RcptParams map[string]RcptParams
	// Header is the message header, available from data_headers_end on.
	// Plugins may add, change and remove fields; the queue writes it.
	Header Header
	// Body is the spooled message body (after the empty line).
	Body *Spool
	// Size is the number of message bytes received (header and body).
	Size int64
	// QueueID is what the queue called the message once it accepted it.
	QueueID string
	// Started is when MAIL was accepted.
	Started time.Time
	// Notes is shared by every plugin for this transaction and cleared when
	// it ends.
	Notes notes.Notes

	// chainScratch is hooks.Chain's, through ChainScratch.
	chainScratch any
}

// ChainScratch is for hooks.Chain alone: a slot where it keeps what it
// reuses from one hook of the transaction to the next (the plugins'
// context), so that running a hook allocates nothing. Plugins must not
// touch it.
func (t *Transaction) ChainScratch() *any { return &t.chainScratch }

// New returns an empty transaction whose body spools to dir once it grows
// past spoolMemory bytes.
func New(dir string, spoolMemory int64) *Transaction {
	return &Transaction{
		ID:      connection.NewID(),
		Body:    NewSpool(dir, spoolMemory),
		Started: time.Now(),
	}
}

// Message returns a reader over the whole message as it will be queued:
// the (possibly modified) header, the empty line, then the body.
func (t *Transaction) Message() io.Reader {
	return io.MultiReader(t.Header.reader(), t.Body.Reader())
}

// WriteTo writes the message as Message returns it.
func (t *Transaction) WriteTo(w io.Writer) (int64, error) {
	n, err := t.Header.WriteTo(w)
	if err != nil {
		return n, err
	}
	m, err := io.Copy(w, t.Body.Reader())
	return n + m, err
}

// MessageSize returns the size in bytes of what WriteTo writes.
func (t *Transaction) MessageSize() int64 {
	return t.Header.Size() + t.Body.Size()
}

// Close releases the header and the body spool: nothing of the message is
// held once it returns, even if the Transaction itself is kept. The server
// calls it when the transaction ends.
func (t *Transaction) Close() error {
	err := t.Header.reset()
	if t.Body != nil {
		if berr := t.Body.Close(); err == nil {
			err = berr
		}
	}
	return err
}

// ReplaceBody replaces the body with what r gives, spooled as the original
// was (in memory up to the same threshold, then in an unlinked file), for
// a filter that rewrites the body (a milter's replace-body action). On an
// error the original body stays.
func (t *Transaction) ReplaceBody(r io.Reader) error {
	ns := t.newSpool()
	if _, err := io.Copy(ns, r); err != nil {
		ns.Close()
		return fmt.Errorf("replace the message body: %w", err)
	}
	old := t.Body
	t.Body = ns
	if old != nil {
		old.Close()
	}
	return nil
}

// ReplaceMessage replaces the header and the body with the message r gives
// (a header section, the empty line, the body), read under l as the server
// reads a message, for a filter that rewrites the whole message (an exec
// filter's output). On an error, including a header past l.MaxBytes
// (ErrHeaderTooLong), the original message stays.
func (t *Transaction) ReplaceMessage(r io.Reader, l HeaderLimits) error {
	tmp := &Transaction{Body: t.newSpool()}
	br := bufio.NewReader(r)
	err := tmp.ReadHeader(br, l)
	if err == nil {
		_, err = io.Copy(tmp.Body, br)
	}
	if err != nil {
		tmp.Close()
		return fmt.Errorf("replace the message: %w", err)
	}
	t.Header, tmp.Header = tmp.Header, t.Header
	t.Body, tmp.Body = tmp.Body, t.Body
	tmp.Close()
	return nil
}

// Scratch returns an empty spool like the body's (same directory, same
// memory threshold), for a plugin that must hold a rewritten message
// before it knows whether to keep it; the plugin closes it.
func (t *Transaction) Scratch() *Spool { return t.newSpool() }

// newSpool returns an empty spool like the body's.
func (t *Transaction) newSpool() *Spool {
	if t.Body == nil {
		return NewSpool("", DefaultSpoolMemory)
	}
	ns := NewSpool(t.Body.dir, t.Body.threshold)
	ns.budget = t.Body.budget
	return ns
}
