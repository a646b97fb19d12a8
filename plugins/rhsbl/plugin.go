// Package rhsbl looks the sender's domain (MAIL FROM) and the HELO name up
// in domain block lists (right-hand side lists, RFC 5782 2.2, such as
// dbl.spamhaus.org): qpsmtpd's rhsbl, Haraka's dnsbl with domains,
// Postfix's reject_rhsbl_sender and reject_rhsbl_helo.
//
// The HELO lookups start at HELO, the sender's at MAIL, in the background,
// and are collected at rcpt by default, so that a listed sender can still
// write to postmaster@. Zones, codes filters, TXT reasons, messages, the
// cache and the DNS client are dnsbl's (dnsbl.Lists).
package rhsbl

import (
	"context"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/plugins/dnsbl"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("rhsbl", New) }

// Settings are the keys of a [plugins.rhsbl] table.
type Settings struct {
	// ListSettings are dnsbl's zones (each a [[plugins.rhsbl.zones]]
	// table with dnsbl's zone keys), whitelist_recipients (the
	// recipients a listed sender may still write to), dns_failure and
	// cache keys, with dnsbl's defaults.
	dnsbl.ListSettings
	// Check names what is looked up: "sender" (the MAIL FROM domain)
	// and "helo" (the HELO name). Default both.
	Check []string `toml:"check"`
	// RejectAt is the hook that collects the lookups and refuses: "mail"
	// or "rcpt" (default).
	RejectAt string `toml:"reject_at"`
	// DNS is the resolver's settings: the top-level [dns] table, or
	// [plugins.rhsbl.dns] for this instance only.
	DNS resolver.Settings `toml:"dns"`
}

// NoteListings is the transaction note of the zones that list the
// sender's domain or the HELO name, the sender's first, set when the
// lookups are collected (at reject_at), whatever the action.
var NoteListings = notes.NewKey[[]dnsbl.Listing]("rhsbl.listings")

// NoteFailed is the transaction note of the lookups that failed, as
// "ZONE NAME" ("dbl.example.org example.com").
var NoteFailed = notes.NewKey[[]string]("rhsbl.failed")

// Plugin is one rhsbl instance; safe for concurrent use.
type Plugin struct {
	check        dnsbl.Checker
	at           dnsbl.Stage
	sender, helo bool
	state        notes.Key[*connState]
}

var (
	_ hooks.Helo       = (*Plugin)(nil)
	_ hooks.Ehlo       = (*Plugin)(nil)
	_ hooks.Mail       = (*Plugin)(nil)
	_ hooks.Rcpt       = (*Plugin)(nil)
	_ hooks.Disconnect = (*Plugin)(nil)
)

// New builds an instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{ListSettings: dnsbl.DefaultListSettings(), Check: []string{"sender", "helo"}, RejectAt: "rcpt"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{state: notes.NewKey[*connState]("rhsbl.pending")}
	for _, c := range s.Check {
		switch c {
		case "sender":
			p.sender = true
		case "helo":
			p.helo = true
		default:
			return nil, fmt.Errorf("check: %q: want \"sender\" or \"helo\"", c)
		}
	}
	if !p.sender && !p.helo {
		return nil, fmt.Errorf("check = []: want \"sender\", \"helo\" or both")
	}
	var err error
	if p.at, err = dnsbl.ParseStage(s.RejectAt, dnsbl.AtMail, dnsbl.AtRcpt); err != nil {
		return nil, err
	}
	if p.check, err = s.Build(s.DNS); err != nil {
		return nil, err
	}
	return p, nil
}

// SetInstanceName keys the instance's per-connection state by its name.
func (p *Plugin) SetInstanceName(name string) {
	p.state = notes.NewKey[*connState](name + ".pending")
}

// lookup is the lookups of one domain.
type lookup struct {
	class, what string // how the reply words it
	domain      string
	pending     *dnsbl.Pending
}

// txState is one transaction's lookups and, once collected, verdict.
type txState struct {
	tx        *transaction.Transaction
	sender    *lookup // nil: not checked (null sender, check without "sender")
	collected bool
	reply     hooks.Result
}

// connState is one connection's lookups, in a connection note.
type connState struct {
	ctx    context.Context
	cancel context.CancelFunc
	helo   *lookup
	tx     *txState
}

// String keeps a dump of the notes short.
func (s *connState) String() string { return "rhsbl lookups" }

// conn returns the connection's state, made on first use; its context
// lives until Disconnect.
func (p *Plugin) conn(ctx context.Context, c *connection.Connection) *connState {
	st, ok := p.state.Lookup(&c.Notes)
	if !ok {
		st = &connState{}
		st.ctx, st.cancel = context.WithCancel(context.WithoutCancel(ctx))
		p.state.Set(&c.Notes, st)
	}
	return st
}

// Helo starts the lookups of the HELO name.
func (p *Plugin) Helo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	if !p.helo || dnsbl.Skip(c, nil) {
		return hooks.Result{}
	}
	d, ok := dnsbl.Domain(host)
	st := p.conn(ctx, c)
	if ok && st.helo != nil && st.helo.domain == d && st.helo.pending.Running() {
		return hooks.Result{} // the same name again (EHLO after STARTTLS): its lookups are under way
	}
	st.helo = nil
	if ok {
		st.helo = &lookup{class: "Helo command", what: d, domain: d, pending: p.check.Lists.Start(st.ctx, d, d)}
	}
	return hooks.Result{}
}

// Ehlo is Helo.
func (p *Plugin) Ehlo(ctx context.Context, c *connection.Connection, host string) hooks.Result {
	return p.Helo(ctx, c, host)
}

// Mail starts the lookups of the sender's domain and, with reject_at =
// "mail", collects them with the HELO name's.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	if dnsbl.Skip(c, tx) {
		return hooks.Result{}
	}
	st := p.conn(ctx, c)
	st.tx = &txState{tx: tx}
	if p.sender {
		_, domain, _ := mailaddr.Split(from)
		if d, ok := dnsbl.Domain(domain); ok && from != "" {
			what := from
			for i := 0; i < len(what); i++ {
				if what[i] >= 0x80 {
					what = d // an SMTPUTF8 address: the reply shows the A-label domain
					break
				}
			}
			st.tx.sender = &lookup{class: "Sender address", what: what, domain: d, pending: p.check.Lists.Start(st.ctx, d, d)}
		}
	}
	if p.at == dnsbl.AtMail {
		return p.decide(ctx, c, tx, st)
	}
	return hooks.Result{}
}

// Rcpt refuses a listed sender's recipients with reject_at = "rcpt",
// except those of whitelist_recipients.
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if p.at != dnsbl.AtRcpt || p.check.RcptOK.Match(rcpt) {
		return hooks.Result{}
	}
	st, ok := p.state.Lookup(&c.Notes)
	if !ok {
		return hooks.Result{}
	}
	return p.decide(ctx, c, tx, st)
}

// Disconnect stops the lookups still running.
func (p *Plugin) Disconnect(_ context.Context, c *connection.Connection) {
	if st, ok := p.state.Lookup(&c.Notes); ok {
		st.cancel()
	}
}

// decide collects the transaction's lookups (once), notes them and
// returns the reply: the stronger of the sender's and the HELO name's,
// the sender's when they are equal.
func (p *Plugin) decide(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, st *connState) hooks.Result {
	if dnsbl.Skip(c, tx) {
		return hooks.Result{}
	}
	if st.tx == nil || st.tx.tx != tx {
		// Our mail hook did not run for this transaction (a plugin
		// before us accepted the sender): the HELO name only.
		st.tx = &txState{tx: tx}
	}
	t := st.tx
	if !t.collected {
		var replies []hooks.Result
		var failed []hooks.Result
		for _, l := range []*lookup{t.sender, st.helo} {
			if l == nil {
				continue
			}
			results, ok := l.pending.Wait(ctx)
			if !ok {
				// The hook's deadline passed first; try again at the
				// next command.
				if p.check.DeferDNS {
					return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 4, 3},
						Msg: "Service temporarily unavailable; cannot check " + strings.ToLower(l.class) + " [" + l.what + "]; try again later"}
				}
				return hooks.Result{}
			}
			v := dnsbl.Judge(results, l.class, l.what)
			dnsbl.AddListings(&tx.Notes, NoteListings, v.Listings)
			for _, f := range v.Failed {
				NoteFailed.Set(&tx.Notes, append(NoteFailed.Get(&tx.Notes), f.Zone+" "+l.domain))
			}
			if v.Reply.Code != hooks.Declined {
				replies = append(replies, v.Reply)
			}
			if len(v.Failed) > 0 {
				failed = append(failed, dnsbl.FailureReply(v.Failed, l.class, l.what))
			}
		}
		t.collected = true
		for _, r := range replies {
			if t.reply.Code == hooks.Declined || r.Code == hooks.Deny && t.reply.Code != hooks.Deny {
				t.reply = r
			}
		}
		if t.reply.Code == hooks.Declined && len(failed) > 0 && p.check.DeferDNS {
			t.reply = failed[0]
		}
	}
	return t.reply
}
