// Package qmailcontrol makes qmail-smtpd's recipient and sender checks from
// a qmail control directory, with qmail's files and rules, so a qmail site
// keeps the files it has: rcpthosts and morercpthosts.cdb (the local and
// relayed domains: "example.com" matches that domain, ".example.com" its
// subdomains), badmailfrom and badrcptto (addresses, or "@domain"), and
// localiphost (the domain a recipient at the server's own address literal
// is taken to be).
//
// It is rcptok for a qmail site: it answers OK for the recipients it
// accepts, which ends the rcpt hook, so plugins that may refuse a local
// recipient must come before it. Relay clients (RELAYCLIENT under
// tcpserver, the relay plugin, AUTH) may send anywhere.
//
// Two rules are stricter than qmail-smtpd's, because an open relay is
// never a default here: a missing rcpthosts is a configuration error
// (qmail would accept every recipient), and a client that may not relay
// cannot use a percent hack, a bang path or a source route through a
// local domain.
package qmailcontrol

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/qmailctl"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("qmailcontrol", New) }

// Settings are the keys of a [plugins.qmailcontrol] table.
type Settings struct {
	// Settings gives control_dir: the qmail control directory. Default
	// the [qmail] table's control_dir, else /var/qmail/control.
	qmailctl.Settings
	// RelayClientsOK accepts any recipient from a relay client. Default
	// true.
	RelayClientsOK bool `toml:"relay_clients_ok"`
}

// Plugin is a qmailcontrol instance, built from the files as they were
// when it was built (at start and at each reload, SIGHUP). It is safe for
// concurrent use.
type Plugin struct {
	ctl     *qmailctl.Control
	relayOK bool
}

var _ hooks.Rcpt = (*Plugin)(nil)

// New reads the control directory.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{RelayClientsOK: true}
	if err := decode(&s); err != nil {
		return nil, err
	}
	dir := s.ControlDir
	if dir == "" {
		dir = qmailctl.DefaultDir
	}
	ctl, err := qmailctl.Read(dir)
	if err != nil {
		return nil, err
	}
	if !ctl.HasRcpthosts {
		ctl.Close()
		return nil, fmt.Errorf("%s/rcpthosts does not exist: qmail-smtpd would accept mail for every domain (an open relay), Sluice refuses to; create it with one local domain a line", dir)
	}
	for _, w := range ctl.Warnings {
		slog.Warn("qmailcontrol: " + w)
	}
	return &Plugin{ctl: ctl, relayOK: s.RelayClientsOK}, nil
}

// Close closes morercpthosts.cdb.
func (p *Plugin) Close() error { return p.ctl.Close() }

// The replies are qmail-smtpd's texts, with the enhanced code first.
var (
	badMailFrom = hooks.Result{Code: hooks.Deny, ReplyCode: 553, Enhanced: [3]int{5, 7, 1}, Msg: "sorry, your envelope sender is in my badmailfrom list"}
	badRcptTo   = hooks.Result{Code: hooks.Deny, ReplyCode: 553, Enhanced: [3]int{5, 7, 1}, Msg: "sorry, your envelope recipient is in my badrcptto list"}
	notAllowed  = hooks.Result{Code: hooks.Deny, ReplyCode: 553, Enhanced: [3]int{5, 7, 1}, Msg: "sorry, that domain isn't in my list of allowed rcpthosts"}
)

// Rcpt refuses a sender in badmailfrom (at each recipient, as qmail-smtpd
// does) and a recipient in badrcptto, then accepts a recipient whose
// domain is in rcpthosts or morercpthosts.cdb, or any recipient of a relay
// client.
func (p *Plugin) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if qmailctl.Listed(p.ctl.BadMailFrom, tx.Sender) {
		return badMailFrom
	}
	if qmailctl.Listed(p.ctl.BadRcptTo, rcpt) {
		return badRcptTo
	}
	if p.relayOK && c.Relay {
		return hooks.Accept("")
	}
	if mailaddr.LowerASCII(rcpt) == "postmaster" {
		return hooks.Accept("")
	}
	local, domain, hasAt := mailaddr.Split(rcpt)
	if !hasAt || local == "" || strings.ContainsAny(local, "%!@") {
		return notAllowed
	}
	if strings.HasPrefix(domain, "[") && p.ctl.LocalIPHost != "" && c.Local.IsValid() {
		if lit, ok := mailaddr.CanonicalDomain(domain); ok && lit == literal(c) {
			domain = p.ctl.LocalIPHost
		}
	}
	canon, ok := mailaddr.CanonicalDomain(domain)
	if !ok {
		return notAllowed
	}
	allowed, err := p.ctl.Allowed(canon)
	if err != nil {
		return hooks.Fail(fmt.Errorf("reading morercpthosts.cdb: %w", err))
	}
	if allowed {
		return hooks.Accept("")
	}
	return notAllowed
}

// literal is the server's own address as a canonical address literal.
func literal(c *connection.Connection) string {
	ip := c.Local.Addr().Unmap()
	text := "[" + ip.String() + "]"
	if ip.Is6() {
		text = "[IPv6:" + ip.String() + "]"
	}
	lit, _ := mailaddr.CanonicalDomain(text)
	return lit
}
