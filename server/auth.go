package server

import (
	"encoding/base64"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/server/command"
	"github.com/sluice-mta/sluice/server/saslogin"
)

// AUTH (RFC 4954): PLAIN through go-sasl's server, LOGIN of our own
// (go-sasl has it only as a client), both checked by the auth hook under
// the brute-force limiter. The exchange is part of the state machine:
// after a 334 the next line is the client's response, not a command.

// saslExchange is an AUTH in progress.
type saslExchange struct {
	mech   string
	server sasl.Server
	result *hooks.Reply // what the credentials got, once checked
}

// authOutcome carries a reply out of a sasl.Server's Next: the check ran
// and refused. Any other error from Next is a malformed response.
type authOutcome struct{ rep hooks.Reply }

func (o *authOutcome) Error() string { return o.rep.String() }

// Auth handles AUTH with its raw argument ("PLAIN dGVzdAB0ZXN0AHRlc3Q=",
// "LOGIN"): 334 with a challenge while the exchange goes on (the next
// line is the response: Command hands it over), then 235 or the refusal.
func (s *Session) Auth(arg string) hooks.Reply {
	c := s.conn
	switch {
	case !s.cfg.Chain.HasAuth():
		return s.finish(hooks.Reply{Code: 502, Enhanced: [3]int{5, 5, 1}, Msg: "AUTH not available on this port"})
	case !s.authOffered():
		return s.finish(hooks.Reply{Code: 538, Enhanced: [3]int{5, 7, 11}, Msg: "Encryption required for authentication: use STARTTLS first"})
	case c.Helo == "" || !c.ESMTP:
		// AUTH is an ESMTP extension: HELO does not open it. Also right
		// after STARTTLS, which forgets the EHLO (RFC 3207 4.2).
		return s.finish(replyBadSequence("Send EHLO first"))
	case s.Authenticated():
		return s.finish(replyBadSequence("Already authenticated"))
	case s.tx != nil:
		// RFC 4954 4: not within a mail transaction. With senderlogin, an
		// AUTH after MAIL would let the sender name any address.
		return s.finish(replyBadSequence("AUTH is not allowed during a mail transaction"))
	}
	mech, initial, hasInitial := strings.Cut(arg, " ")
	ex := &saslExchange{mech: command.Upper(mech)}
	switch ex.mech {
	case sasl.Plain:
		ex.server = sasl.NewPlainServer(func(authzid, user, password string) error {
			return s.verify(ex, authzid, user, password)
		})
	case sasl.Login:
		ex.server = saslogin.New(func(user, password string) error { return s.verify(ex, "", user, password) })
	default:
		return s.finish(hooks.Reply{Code: 504, Enhanced: [3]int{5, 5, 4}, Msg: "Unsupported authentication mechanism"})
	}
	var response []byte // nil: no initial response
	if hasInitial {
		initial = strings.Trim(initial, " ")
		if initial == "=" {
			response = []byte{}
		} else {
			b, err := base64.StdEncoding.DecodeString(initial)
			if err != nil {
				return s.undecodable()
			}
			response = b
		}
	}
	return s.saslStep(ex, response)
}

// authResponse takes the client's line after a 334.
func (s *Session) authResponse(line string) hooks.Reply {
	ex := s.sasl
	s.sasl = nil
	if line == "*" {
		return s.finish(hooks.Reply{Code: 501, Enhanced: [3]int{5, 0, 0}, Msg: "Authentication cancelled"})
	}
	b, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		return s.undecodable()
	}
	return s.saslStep(ex, b)
}

// undecodable answers a SASL response that is not base64 (RFC 4954 4:
// 501). The client's mistake, not a guess: it tested no password and is
// not counted as a failed AUTH.
func (s *Session) undecodable() hooks.Reply {
	s.log.Info("AUTH: SASL response is not base64", "ip", s.conn.RemoteIP().String())
	return s.finish(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Invalid base64 data"})
}

func (s *Session) saslStep(ex *saslExchange, response []byte) hooks.Reply {
	challenge, done, err := ex.server.Next(response)
	if err != nil {
		if o, ok := err.(*authOutcome); ok {
			return s.finish(o.rep)
		}
		// A response that does not decode as its mechanism says (RFC 4954
		// 4: 501); it tested no password, so it is not counted.
		s.log.Info("AUTH: malformed SASL response", "mech", ex.mech, "ip", s.conn.RemoteIP().String())
		return s.finish(hooks.Reply{Code: 501, Enhanced: [3]int{5, 5, 2}, Msg: "Malformed " + ex.mech + " response"})
	}
	if done {
		if ex.result == nil { // cannot happen: done comes with a verdict
			return s.finish(hooks.Reply{Code: 454, Enhanced: [3]int{4, 7, 0}, Msg: "Temporary authentication failure"})
		}
		return s.finish(*ex.result)
	}
	s.sasl = ex
	return hooks.Reply{Code: 334, Msg: base64.StdEncoding.EncodeToString(challenge)}
}

// lockoutReply is the 535 of the brute-force limiter.
var lockoutReply = hooks.Reply{Code: 535, Enhanced: [3]int{5, 7, 8}, Msg: "Too many failed authentication attempts; closing connection", Close: true}

// verify checks one set of credentials under the brute-force limiter
// (see authlimit.Limiter): a client IP past the limit is refused
// unchecked; a user name past it waits the delay, then is checked, and a
// wrong password closes the connection. authzid is PLAIN's authorization identity: it
// must be empty or the user name. Every failure is logged at WARN with the
// client's IP, the user name and the mechanism, never the password. It
// returns nil on success (ex.result holds the 235) or an *authOutcome.
func (s *Session) verify(ex *saslExchange, authzid, user, password string) error {
	lim := s.cfg.AuthLimiter
	mech := ex.mech
	ipAddr := s.conn.RemoteIP()
	ip := ipAddr.String()
	limit := lim.Check(ipAddr, user)
	switch limit {
	case authlimit.IPLimited:
		s.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "ip")
		return s.lockout(true)
	case authlimit.UserLimited:
		s.log.Info("AUTH delayed: too many failures for the user", "mech", mech, "ip", ip, "user", user, "delay", lim.EffectiveDelay().String())
		s.pause(lim.EffectiveDelay())
	}
	var rep hooks.Reply
	if authzid != "" && authzid != user {
		rep = hooks.Reply{Code: 535, Enhanced: [3]int{5, 7, 8}, Msg: "Authorization identity must be empty or the user name"}
		s.log.Warn("AUTH failed", "mech", mech, "ip", ip, "user", user, "authzid", authzid, "reply", rep.String())
	} else {
		d := s.cfg.Chain.Auth(s.ctx, s.conn, mech, user, password)
		rep = s.reply(d)
		if d.Result.Code == hooks.OK || d.Result.Code == hooks.Done {
			s.conn.AuthUser, s.conn.Relay = user, true
			connection.NoteAuthUser.Set(&s.conn.Notes, user)
			connection.NoteAuthMech.Set(&s.conn.Notes, mech)
			lim.Succeed(user)
			s.log.Info("AUTH succeeded", "mech", mech, "ip", ip, "user", user)
			if s.cfg.Bus != nil {
				e := s.event(monitor.KindAuth)
				e.User = user
				s.publish(e)
			}
			ex.result = &rep
			return nil
		}
		s.log.Warn("AUTH failed", "mech", mech, "ip", ip, "user", user, "reply", rep.String())
	}
	// Only a refusal counts: a 4xx (the password backend is down) tested
	// no password.
	if rep.Code/100 == 5 {
		reached := lim.Fail(ipAddr, user)
		switch {
		case limit == authlimit.UserLimited:
			// One guess per connection for a user past the limit; it has
			// had its delay.
			s.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "user")
			return s.lockout(false)
		case reached:
			s.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "reached")
			return s.lockout(true)
		}
	}
	return &authOutcome{rep}
}

// lockout answers the limiter's 535, which closes the connection, after
// the delay when wait is set.
func (s *Session) lockout(wait bool) error {
	if wait {
		s.pause(s.cfg.AuthLimiter.EffectiveDelay())
	}
	return &authOutcome{lockoutReply}
}

// pause waits d, or until the connection ends (shutdown).
func (s *Session) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.ctx.Done():
	}
}
