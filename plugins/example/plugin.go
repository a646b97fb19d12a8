// Package example is the worked example for plugin authors: a small plugin
// that uses the whole plugin contract, meant to be copied as the start of
// a new plugin (as Valvula's mod-test is). It
//
//   - remembers the connection id at connect and the HELO name at
//     HELO/EHLO, in connection notes;
//   - refuses a configured list of recipients (spam traps, retired
//     addresses) with 550 5.1.1 "no such user";
//   - adds a header field to every message at data_post, built from those
//     notes;
//   - counts the transactions of each connection at reset_transaction.
//
// Read it top to bottom with README.md beside it. Each plugin lives in its
// own folder, plugins/NAME, and its package, its registered name, its
// config table ([plugins.NAME]) and its README title are all NAME: one
// lowercase word, no underscores.
package example

import (
	"context"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

// init registers the plugin under its name. hooks.Register reads the hooks
// the plugin implements off the type New returns (*Plugin), so
// `smtpd plugins` can list them without building one. The plugin is
// compiled in by a blank import in cmd/smtpd/plugins.go.
func init() { hooks.Register("example", New) }

// Settings are the keys of the plugin's [plugins.example] table. Each field
// has a toml tag with the snake_case key; the config loader rejects keys
// that are not here, naming the file and line, so a typo never goes
// unnoticed. Keep settings few and say each one's default in its comment:
// these comments are the first docs an operator reads.
type Settings struct {
	// DenyRecipients are addresses refused at RCPT with 550 5.1.1,
	// compared without regard to ASCII case, the domain as a DNS name
	// (see denyKey). Default: none.
	DenyRecipients []string `toml:"deny_recipients"`
	// Header is the name of the header field added to every message.
	// Default "X-Sluice-Example"; "" adds none.
	Header string `toml:"header"`
}

// The notes the plugin sets. A note is read and written through a typed
// key, notes.Key[T], named "<plugin>.<key>" so that two plugins never
// collide. Declare the keys once, as exported package-level variables:
// other plugins and tests import them, so they spell the name the same way
// and a reader that expects another type does not compile. Connection
// notes (c.Notes) last as long as the connection; transaction notes
// (tx.Notes) as long as one message.
var (
	// NoteConn (connection) is the connection id, stored at connect.
	NoteConn = notes.NewKey[string]("example.conn")
	// NoteHelo (connection) is the name the client gave in its latest HELO
	// or EHLO.
	NoteHelo = notes.NewKey[string]("example.helo")
	// NoteTransactions (connection) counts the transactions that ended on
	// the connection, queued or not.
	NoteTransactions = notes.NewKey[int]("example.transactions")
	// NoteDenied (transaction) counts the recipients refused because they
	// are in deny_recipients.
	NoteDenied = notes.NewKey[int]("example.denied")
)

// Plugin is one configured instance. One instance serves every connection
// of every listener that names it, at the same time, like an http.Handler:
// its fields are set in New and only read afterwards, so it needs no lock.
// Never keep per-connection or per-message state in it; that goes in
// c.Notes and tx.Notes.
type Plugin struct {
	deny   map[string]bool // deny_recipients, by denyKey
	header string          // "" means: add no header
}

// Interface guards: the compiler checks that *Plugin implements each hook
// with the right signature. Without them, a typo in a method signature
// would silently make the method "not a hook" and it would never run.
var (
	_ hooks.Connect  = (*Plugin)(nil)
	_ hooks.Helo     = (*Plugin)(nil)
	_ hooks.Ehlo     = (*Plugin)(nil)
	_ hooks.Rcpt     = (*Plugin)(nil)
	_ hooks.DataPost = (*Plugin)(nil)
	_ hooks.Reset    = (*Plugin)(nil)
)

// New builds an instance from its settings: set the defaults, decode the
// operator's table over them, then check every value. Construction is
// validation: a bad setting is an error that names the key and says what
// is expected, and Sluice refuses to start (or keeps the old config on a
// reload). New runs again on every reload, so it must not start anything
// that outlives the instance unless the plugin also implements io.Closer.
func New(decode hooks.Decoder) (*Plugin, error) {
	// Defaults first: decode only overwrites the keys present in the
	// table, and with no [plugins.example] table at all it changes nothing.
	s := Settings{Header: "X-Sluice-Example"}
	if err := decode(&s); err != nil {
		// The error already names the file, the line and the key.
		return nil, err
	}

	p := &Plugin{deny: make(map[string]bool, len(s.DenyRecipients)), header: s.Header}
	for _, addr := range s.DenyRecipients {
		key, ok := denyKey(addr)
		if !ok || strings.ContainsAny(addr, " \t<>") {
			return nil, fmt.Errorf("deny_recipients: %+q is not an address: want \"user@domain\"", addr)
		}
		p.deny[key] = true
	}
	if s.Header != "" && !transaction.ValidFieldName(s.Header) {
		return nil, fmt.Errorf("header = %q: want a header field name: printable ASCII without spaces or ':' (e.g. \"X-Sluice-Example\"), or \"\" for none", s.Header)
	}
	return p, nil
}

// denyKey is the form in which addresses are compared: the local part
// with its ASCII letters lowered, and the domain in the canonical form of
// package mailaddr (A-labels, ASCII case folding only), so that
// "Trap@Bücher.example" and "trap@xn--bcher-kva.example" are one address.
// Never compare addresses or domains with strings.ToLower or
// strings.EqualFold: they fold Unicode too, and "\u212Aernel.test" (a
// Kelvin sign) would become kernel.test, which it is not. ok is false when
// addr is not local@domain with a valid domain: such an address matches
// nothing.
func denyKey(addr string) (key string, ok bool) {
	local, domain, ok := mailaddr.Split(addr)
	if !ok || local == "" {
		return "", false
	}
	domain, ok = mailaddr.CanonicalDomain(domain)
	if !ok {
		return "", false
	}
	return mailaddr.LowerASCII(local) + "@" + domain, true
}

// Connect runs when a client connects, before the greeting. Here it only
// stores a note. Every hook takes ctx first: it carries the hook's deadline
// (30s by default); pass it to anything that may block (DNS, network) and
// give up when it is done.
//
// Returning hooks.Result{} (Declined) means "no opinion": the next plugin
// is asked, and when all decline the hook's default applies (for connect:
// the 220 greeting). Only return OK when the plugin means to decide for the
// whole chain: OK stops it.
func (p *Plugin) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	NoteConn.Set(&c.Notes, c.ID)
	return hooks.Result{}
}

// Helo runs at HELO. Helo and Ehlo are separate hooks; a plugin that
// treats them alike implements both with one helper.
func (p *Plugin) Helo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.greeted(c, host)
}

// Ehlo runs at EHLO.
func (p *Plugin) Ehlo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.greeted(c, host)
}

// greeted stores the HELO name. A later HELO or EHLO replaces it (and ends
// the transaction in progress, as RSET does).
func (p *Plugin) greeted(c *connection.Connection, host string) hooks.Result {
	NoteHelo.Set(&c.Notes, host)
	return hooks.Result{}
}

// Rcpt runs once per RCPT TO, with the address without angle brackets. The
// recipient is not in tx.Recipients yet: the server adds it when the chain
// accepts it.
//
// This hook only refuses, and declines every other recipient so that the
// plugin that knows the local domains (rcptok) decides. That is why
// example must come before rcptok in the listener's plugin list: rcptok
// answers OK, which ends the hook, and the plugins after it never see the
// recipient.
func (p *Plugin) Rcpt(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if key, ok := denyKey(rcpt); !ok || !p.deny[key] {
		return hooks.Result{}
	}
	// notes.Add keeps a counter under a Key[int]; the transaction notes
	// start empty for every message.
	notes.Add(&tx.Notes, NoteDenied, 1)
	// A refusal: Code picks the kind (Deny is permanent, 5xx; DenySoft is
	// temporary, 4xx), the hook picks the reply code (550 at RCPT), Msg is
	// the text the client sees and Enhanced the RFC 3463 code. Keep Msg
	// generic: never put an error's text or a config detail in it. To log
	// why, set Err as well; it is logged, never sent.
	return hooks.Result{Code: hooks.Deny, Msg: "no such user", Enhanced: [3]int{5, 1, 1}}
}

// DataPost runs once the whole message is spooled, after Sluice added its
// Received field and before the queue takes the message. Plugins may change
// tx.Header here; the body (tx.Body) is read-only. To refuse the message,
// return Reject or Defer; to let it go on, decline. A Reject here answers
// 552 5.7.1 and a Defer 452 4.7.1 (qpsmtpd's data_post codes, which
// Sluice keeps), not the 554/451 of a refusal at the DATA command.
func (p *Plugin) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if p.header == "" {
		return hooks.Result{}
	}
	// Lookup says whether the note is set; Get returns the zero value
	// when it is not. The connect hook did not run if, say, a test skipped
	// the greeting: fall back on c.ID.
	id, ok := NoteConn.Lookup(&c.Notes)
	if !ok {
		id = c.ID
	}
	helo := NoteHelo.Get(&c.Notes)
	// Header.Add appends the field at the end of the header (Prepend puts
	// trace fields on top). A value from the client (the HELO name) is
	// untrusted, but Add folds any line break it holds, so it can never
	// start a new field or end the header.
	tx.Header.Add(p.header, fmt.Sprintf("conn=%s helo=%s", id, helo))
	return hooks.Result{}
}

// Reset runs whenever a transaction ends: after the message was queued or
// refused, at RSET, at a new EHLO and at disconnect. It returns nothing: it
// cannot refuse anything. tx.Notes disappear with the transaction; what
// must outlast it goes in c.Notes.
func (p *Plugin) Reset(_ context.Context, c *connection.Connection, _ *transaction.Transaction) {
	notes.Add(&c.Notes, NoteTransactions, 1)
}
