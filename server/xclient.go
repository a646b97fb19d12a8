package server

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
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

// The XCLIENT values that say the attribute is not known.
const (
	xclientUnavailable = "[UNAVAILABLE]"
	xclientTempUnavail = "[TEMPUNAVAIL]"
)

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
	next := xclientState{remote: s.conn.Remote, name: s.conn.RemoteHost}
	for field := range strings.FieldsSeq(arg) {
		if rep, ok := next.set(field); !ok {
			return s.finish(rep)
		}
	}
	old := s.conn.Remote
	s.Reset()
	s.sasl = nil
	s.cfg.Chain.Disconnect(s.ctx, s.conn)
	c := s.conn
	c.Remote, c.RemoteHost, c.RemoteInfo = next.remote, next.name, ""
	c.Helo, c.ESMTP = next.helo, next.esmtp
	c.AuthUser, c.Relay, c.EarlyTalker, c.Messages = "", false, false, 0
	c.Notes = notes.Notes{}
	if next.login != "" {
		// As a successful AUTH: the user may relay. Only xclient_hosts
		// get here.
		c.AuthUser, c.Relay = next.login, true
		connection.NoteAuthUser.Set(&c.Notes, next.login)
		connection.NoteAuthMech.Set(&c.Notes, "XCLIENT")
	}
	s.errors, s.junk, s.overshoot = 0, 0, 0
	s.log.Info("xclient", "from", old.String(), "remote", c.Remote.String(), "name", c.RemoteHost, "helo", c.Helo, "login", c.AuthUser)
	return s.Connect()
}

// xclientState is what an XCLIENT command sets, built before any of it
// applies: a bad attribute changes nothing.
type xclientState struct {
	remote     netip.AddrPort
	name, helo string
	login      string
	esmtp      bool
}

// set applies one attribute=value; a refusal is the 501 to send.
func (x *xclientState) set(field string) (hooks.Reply, bool) {
	name, raw, ok := strings.Cut(field, "=")
	if !ok || name == "" {
		return replySyntax("Bad XCLIENT attribute syntax: " + field), false
	}
	name = asciiUpper(name)
	v, ok := addrXtext(raw, true)
	if !ok {
		return replySyntax("Bad XCLIENT " + name + " value: want xtext"), false
	}
	unknown := v == xclientUnavailable || v == xclientTempUnavail
	switch name {
	case "ADDR":
		if unknown {
			return hooks.Reply{}, true // the address stays as it was
		}
		ip, err := netip.ParseAddr(strings.TrimPrefix(strings.TrimPrefix(v, "IPV6:"), "ipv6:"))
		if err != nil || ip.Zone() != "" {
			return replySyntax("Bad XCLIENT ADDR: want an IPv4 address or IPV6:address"), false
		}
		x.remote = netip.AddrPortFrom(ip.Unmap(), x.remote.Port())
	case "PORT":
		if unknown {
			return hooks.Reply{}, true
		}
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return replySyntax("Bad XCLIENT PORT: want a number from 0 to 65535"), false
		}
		x.remote = netip.AddrPortFrom(x.remote.Addr(), uint16(p))
	case "NAME":
		if unknown {
			x.name = ""
		} else {
			x.name = v
		}
	case "HELO":
		if unknown {
			x.helo = ""
		} else if h, ok := heloName(v); ok {
			x.helo = h
		} else {
			return replySyntax("Bad XCLIENT HELO value"), false
		}
	case "LOGIN":
		if !unknown {
			x.login = v
		}
	case "PROTO":
		switch asciiUpper(v) {
		case "SMTP":
			x.esmtp = false
		case "ESMTP":
			x.esmtp = true
		default:
			if !unknown {
				return replySyntax("Bad XCLIENT PROTO: want SMTP or ESMTP"), false
			}
		}
	default:
		return replySyntax("Bad XCLIENT attribute name: " + name), false
	}
	return hooks.Reply{}, true
}
