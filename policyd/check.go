// Package policyd is the server side of Postfix's SMTP access policy
// delegation protocol (Postfix's SMTPD_POLICY_README): Postfix's smtpd,
// told `check_policy_service inet:127.0.0.1:10040` in one of its
// restriction lists, sends a request of name=value lines ended by an empty
// line, and the policy service answers `action=...` and an empty line, on
// a connection Postfix keeps open for further requests.
//
// The package has two parts, over the wire format of package
// policyd/wire: the Checker that
// runs a Sluice plugin chain on one request through a server.Session, and
// the Server that accepts connections (TCP or a unix socket), applies the
// timeouts and the connection limit, and answers each request with the
// Checker's action.
package policyd

import (
	"context"
	"github.com/sluice-mta/sluice/policyd/wire"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/command"
)

// Dunno is the action for a request no plugin refused: Postfix goes on
// with the rest of its restriction list. The Checker never answers OK,
// which would skip the restrictions after check_policy_service (Postfix's
// own relay check among them).
const Dunno = "DUNNO"

// fed lists the hooks a policy request can feed: the ones a Checker runs.
// A plugin's other hooks (data_headers_end, data_post, the queue hooks,
// auth, vrfy...) need what the protocol does not carry, the message above
// all, and never run in policy mode.
var fed = []hooks.Hook{
	hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo,
	hooks.HookMailPre, hooks.HookMail, hooks.HookRcptPre, hooks.HookRcpt, hooks.HookRcptOK,
	hooks.HookData, hooks.HookReset, hooks.HookDisconnect, hooks.HookDeny, hooks.HookOK,
}

// Unfed returns the hooks of plugin p that never run in policy mode, in
// firing order.
func Unfed(p any) []hooks.Hook {
	var out []hooks.Hook
	for _, h := range hooks.HooksOf(p) {
		if !slices.Contains(fed, h) {
			out = append(out, h)
		}
	}
	return out
}

// Checker runs a listener's plugin chain on policy requests. It is safe
// for concurrent use.
type Checker struct {
	// Listener and Hostname name the Sluice listener whose chain runs, as
	// plugins see them in the Connection.
	Listener, Hostname string
	// Session is the configuration of the session each request runs in:
	// the chain, the limits, the spool directory and the logger. The TLS
	// and AUTH gates of the listener are Postfix's business and are not
	// set.
	Session server.SessionConfig
	// MaxInstances bounds how many Postfix transactions (the instance
	// attribute) the Checker remembers the accepted recipients of; 0
	// means DefaultMaxInstances.
	MaxInstances int

	mu        sync.Mutex
	instances map[string]*instance
	order     []string // instance keys, oldest first
}

// DefaultMaxInstances is Checker.MaxInstances' default: more than the
// transactions in progress at once on a busy Postfix (100 smtpd processes
// by default).
const DefaultMaxInstances = 4096

// instance is what a Checker remembers of one Postfix transaction: the
// recipients it answered DUNNO for, so that a later request of the same
// transaction runs with them in the transaction (maxrcpt counts them).
type instance struct {
	client, sender string
	recipients     []string
}

// Verdict is a Checker's answer to one request.
type Verdict struct {
	// Action is what goes back to Postfix: Dunno, or the refusal's SMTP
	// reply ("550 5.7.1 relaying denied").
	Action string
	// Reply is the refusal (zero for Dunno).
	Reply hooks.Reply
	// Conn is the id of the connection the request ran as (in the logs
	// of the hooks).
	Conn string
}

// Check runs the request through the chain as an SMTP client would get
// there: a fresh Connection from client_address (and client_name,
// helo_name, sasl_username), then, as protocol_state asks, the connect,
// helo or ehlo, mail and rcpt hooks with the sender, size and recipient,
// and for DATA and END-OF-MESSAGE the data hook. The first refusal is the
// action; otherwise Dunno. Requests of other states (VRFY, ETRN) and of
// other kinds than smtpd_access_policy get Dunno without running anything.
func (c *Checker) Check(ctx context.Context, req wire.Request) Verdict {
	state := strings.ToUpper(req["protocol_state"])
	conn := c.connection(req)
	v := Verdict{Action: Dunno, Conn: conn.ID}
	switch state {
	case "CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE":
	default:
		return v
	}
	if req["request"] != "smtpd_access_policy" {
		return v
	}
	s := server.NewSession(ctx, conn, c.Session)
	defer s.Close()
	// Postfix is the SMTP server here: what its parser accepted and Sluice's
	// refuses is Postfix's business, and is answered DUNNO.
	unparsed := func(rep hooks.Reply) bool {
		c.log().Warn("policy request not checked: Sluice cannot parse what Postfix accepted",
			"conn", conn.ID, "state", state, "reply", rep.String())
		return true
	}
	refused := func(rep hooks.Reply) bool {
		switch {
		case rep.Positive():
			return false
		case rep.Code >= 500 && rep.Code <= 504:
			// A syntax or sequence error (a HELO name Sluice refuses).
			return unparsed(rep)
		}
		v.Reply = rep
		v.Action = action(rep)
		return true
	}
	if refused(s.Connect()) || state == "CONNECT" {
		return v
	}
	if helo := req["helo_name"]; helo != "" {
		var rep hooks.Reply
		if req["protocol_name"] == "SMTP" {
			rep = s.Helo(helo)
		} else {
			rep = s.Ehlo(helo)
		}
		if refused(rep) {
			return v
		}
	} else {
		// The client sent no HELO (Postfix's smtpd_helo_required = no):
		// the helo hooks do not run, and the mail hooks see the
		// client's address literal, what a client without a name says.
		conn.Helo, conn.ESMTP = "["+conn.RemoteIP().String()+"]", req["protocol_name"] != "SMTP"
	}
	if state == "HELO" || state == "EHLO" {
		return v
	}
	arg := "FROM:<" + req["sender"] + ">"
	if n, err := strconv.ParseInt(req["size"], 10, 64); err == nil && n > 0 {
		arg += " SIZE=" + strconv.FormatInt(n, 10)
	}
	if _, err := command.ParseMail(arg, false); err != nil {
		unparsed(addrReply(err))
		return v
	}
	if refused(s.Mail(arg)) || state == "MAIL" {
		return v
	}
	tx := s.Transaction()
	key := req["instance"]
	tx.Recipients = append(tx.Recipients, c.recall(key, req)...)
	rcpt := req["recipient"]
	if state == "RCPT" || (len(tx.Recipients) == 0 && rcpt != "") {
		arg := "TO:<" + rcpt + ">"
		if _, err := command.ParseRcpt(arg, tx.Params.UTF8, false, false); err != nil {
			unparsed(addrReply(err))
			return v
		}
		rep := s.Rcpt(arg)
		if rep == rcptDefault {
			// Every rcpt plugin declined: the relay decision is
			// Postfix's own (its reject_unauth_destination), and for
			// Sluice's plugins the recipient is accepted.
			tx.Recipients = append(tx.Recipients, rcpt)
			c.Session.Chain.RcptOK(ctx, conn, tx, rcpt)
		} else if refused(rep) {
			return v
		}
		if state == "RCPT" {
			c.remember(key, req, rcpt)
			return v
		}
	}
	if len(tx.Recipients) == 0 {
		// DATA with several recipients this Checker did not see: the
		// data hook wants at least one.
		return v
	}
	refused(s.Data(""))
	return v
}

// rcptDefault is the rcpt hook's reply when every plugin declines
// (qpsmtpd's "450 4.7.1 No plugin decided if relaying is allowed"): in
// policy mode that decision is Postfix's, so it is no refusal.
var rcptDefault = hooks.ReplyFor(hooks.HookRcpt, hooks.Result{})

// addrReply is the reply to a refused address, for the log.
func addrReply(err error) hooks.Reply {
	if ae, ok := err.(*command.Error); ok {
		return hooks.Reply{Code: ae.Code, Enhanced: ae.Enhanced, Msg: ae.Msg}
	}
	return hooks.Reply{Code: 501, Msg: err.Error()}
}

// action is the policy action for a refusal: the SMTP reply itself, which
// Postfix sends to its client as it is ("550 5.7.1 relaying denied").
func action(rep hooks.Reply) string {
	if rep.Msg == "" {
		rep.Msg = "Refused"
	}
	first, _, _ := strings.Cut(rep.Msg, "\n")
	rep.Msg = first
	return rep.String()
}

// connection is the Connection a request runs as.
func (c *Checker) connection(req wire.Request) *connection.Connection {
	conn := connection.New(c.Listener, c.Hostname, addrPort(req["server_address"], req["server_port"]),
		addrPort(req["client_address"], req["client_port"]))
	if name := req["client_name"]; name != "" && name != "unknown" {
		conn.RemoteHost = name
	}
	if user := req["sasl_username"]; user != "" {
		conn.AuthUser = user
		connection.NoteAuthUser.Set(&conn.Notes, user)
		if mech := req["sasl_method"]; mech != "" {
			connection.NoteAuthMech.Set(&conn.Notes, strings.ToUpper(mech))
		}
	}
	return conn
}

// addrPort parses an address and a port attribute; what does not parse is
// the zero value (Postfix sends "unknown" for a client it cannot name).
func addrPort(ip, port string) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	return netip.AddrPortFrom(a.Unmap(), uint16(p))
}

// recall returns the recipients remembered for the request's transaction:
// those answered Dunno earlier with the same instance, client and sender.
func (c *Checker) recall(key string, req wire.Request) []string {
	if key == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	in := c.instances[key]
	if in == nil || in.client != req["client_address"] || in.sender != req["sender"] {
		return nil
	}
	return append([]string(nil), in.recipients...)
}

// remember adds an accepted recipient to the request's transaction,
// forgetting the oldest transaction past MaxInstances.
func (c *Checker) remember(key string, req wire.Request, rcpt string) {
	if key == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.instances == nil {
		c.instances = map[string]*instance{}
	}
	in := c.instances[key]
	if in == nil || in.client != req["client_address"] || in.sender != req["sender"] {
		if in == nil {
			c.order = append(c.order, key)
		}
		in = &instance{client: req["client_address"], sender: req["sender"]}
		c.instances[key] = in
	}
	if len(in.recipients) < maxRecipients(c.Session.Limits) {
		in.recipients = append(in.recipients, rcpt)
	}
	max := c.MaxInstances
	if max <= 0 {
		max = DefaultMaxInstances
	}
	for len(c.order) > max {
		delete(c.instances, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *Checker) log() *slog.Logger {
	if c.Session.Logger != nil {
		return c.Session.Logger
	}
	return slog.Default()
}

// maxRecipients is the listener's recipient limit: no transaction holds
// more, so no instance remembers more.
func maxRecipients(l server.Limits) int {
	if l.MaxRecipients > 0 {
		return l.MaxRecipients
	}
	return server.DefaultMaxRecipients
}
