package server

import (
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/server/command"
)

// XCLIENT (Postfix's extension, XCLIENT_README): a trusted client (a test
// rig, a proxy such as nginx's mail module) names the client it speaks
// for. The session then starts over as a new connection from that client:
// the disconnect hook runs for the old one, the connection's address,
// name, HELO, login, relay flag and notes are replaced, the connect hook
// runs for the new one, and its reply is the new greeting (220, or the
// refusal that closes).

// xclientAttrs are the attributes offered in EHLO, in Postfix's words.
const xclientAttrs = "NAME ADDR PORT PROTO HELO LOGIN"

var replyXClientDenied = hooks.Reply{Code: 550, Enhanced: [3]int{5, 7, 0}, Msg: "Error: insufficient authorization"}

// xclientAllowed reports whether the client may use XCLIENT: its address
// when the connection began (from the PROXY header on a PROXY listener)
// is in XClientHosts. An XCLIENT does not change it.
func (s *Session) xclientAllowed() bool { return s.xclient }

// XClient handles XCLIENT with its raw argument ("ADDR=192.0.2.1
// NAME=mail.example.org").
func (s *Session) XClient(arg string) hooks.Reply {
	switch {
	case !s.xclientAllowed():
		s.log.Warn("XCLIENT refused: client not in xclient_hosts", "remote", s.conn.Remote.String())
		return s.finish(replyXClientDenied)
	case s.tx != nil:
		return s.finish(hooks.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Msg: "Error: MAIL transaction in progress"})
	case strings.TrimSpace(arg) == "":
		return s.finish(replySyntax("Syntax: XCLIENT attribute=value [attribute=value ...]"))
	}
	next := command.XClient{Remote: s.conn.Remote, Name: s.conn.RemoteHost}
	for field := range strings.FieldsSeq(arg) {
		if err := next.Set(field); err != nil {
			return s.finish(addrReply(err))
		}
	}
	old := s.conn.Remote
	s.Reset()
	s.sasl = nil
	s.cfg.Chain.Disconnect(s.ctx, s.conn)
	c := s.conn
	c.Remote, c.RemoteHost, c.RemoteInfo = next.Remote, next.Name, ""
	c.Helo, c.ESMTP = next.Helo, next.ESMTP
	c.AuthUser, c.Relay, c.EarlyTalker, c.Messages = "", false, false, 0
	c.Notes = notes.Notes{}
	if next.Login != "" {
		// As a successful AUTH: the user may relay. Only xclient_hosts
		// get here.
		c.AuthUser, c.Relay = next.Login, true
		connection.NoteAuthUser.Set(&c.Notes, next.Login)
		connection.NoteAuthMech.Set(&c.Notes, "XCLIENT")
	}
	s.errors, s.junk, s.overshoot = 0, 0, 0
	s.log.Info("xclient", "from", old.String(), "remote", c.Remote.String(), "name", c.RemoteHost, "helo", c.Helo, "login", c.AuthUser)
	return s.Connect()
}
