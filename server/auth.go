package server

import (
	"bytes"
	"errors"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks"
)

// AuthMechanisms implements go-smtp's AuthSession: PLAIN and LOGIN when an
// auth plugin is configured and AUTH is allowed on this connection now
// (over TLS, or in plaintext only where the listener allows it on
// loopback). go-smtp advertises what this returns in EHLO.
func (a *adapter) AuthMechanisms() []string {
	if !a.g.authOffered() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements go-smtp's AuthSession.
func (a *adapter) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return &plainServer{a: a}, nil
	case sasl.Login:
		return &loginServer{verify: func(user, password string) error { return a.verify(mech, "", user, password) }}, nil
	}
	return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Unsupported authentication mechanism"}
}

// lockoutReply is the 535 of the brute-force limiter.
var lockoutReply = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Too many failed authentication attempts; closing connection"}

// verify checks one set of credentials under the brute-force limiter (see
// AuthLimiter): a client IP past the limit is refused unchecked; a user
// name past it waits the delay, then is checked, and a wrong password
// closes the connection. authzid is PLAIN's authorization identity: it
// must be empty or the user name. Every failure is logged at WARN with the
// client's IP, the user name and the mechanism, never the password.
func (a *adapter) verify(mech, authzid, user, password string) error {
	g := a.g
	lim := g.l.srv.authLimiter
	ip := g.sess.Conn().RemoteIP().String()
	limit := lim.Check(g.sess.Conn().RemoteIP(), user)
	switch limit {
	case AuthIPLimited:
		g.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "ip")
		return a.lockout(true)
	case AuthUserLimited:
		g.log.Info("AUTH delayed: too many failures for the user", "mech", mech, "ip", ip, "user", user, "delay", lim.delay().String())
		a.pause(lim.delay())
	}
	var rep hooks.Reply
	if authzid != "" && authzid != user {
		rep = hooks.Reply{Code: 535, Enhanced: [3]int{5, 7, 8}, Msg: "Authorization identity must be empty or the user name"}
		g.log.Warn("AUTH failed", "mech", mech, "ip", ip, "user", user, "authzid", authzid, "reply", rep.String())
	} else {
		rep = g.sess.Auth(mech, user, password)
		if g.sess.Authenticated() {
			lim.Succeed(user)
			g.log.Info("AUTH succeeded", "mech", mech, "ip", ip, "user", user)
			g.override = &rep
			return nil
		}
		g.log.Warn("AUTH failed", "mech", mech, "ip", ip, "user", user, "reply", rep.String())
	}
	// Only a refusal counts: a 4xx (the password backend is down) tested
	// no password.
	if rep.Code/100 == 5 {
		reached := lim.Fail(g.sess.Conn().RemoteIP(), user)
		switch {
		case limit == AuthUserLimited:
			// One guess per connection for a user past the limit; it has
			// had its delay.
			g.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "user")
			return a.lockout(false)
		case reached:
			g.log.Warn("AUTH refused: too many failures", "mech", mech, "ip", ip, "user", user, "limit", "reached")
			return a.lockout(true)
		}
	}
	if rep.Close {
		g.closeAfterReply = true
	}
	return &smtp.SMTPError{Code: rep.Code, EnhancedCode: smtp.EnhancedCode(enhanced(rep)), Message: rep.Msg}
}

// lockout answers the limiter's 535 and closes the connection, after the
// delay when wait is set.
func (a *adapter) lockout(wait bool) error {
	if wait {
		a.pause(a.g.l.srv.authLimiter.delay())
	}
	a.g.closeAfterReply = true
	return lockoutReply
}

// pause waits d, or until the connection ends (shutdown).
func (a *adapter) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.g.sess.ctx.Done():
	}
}

// malformed answers a SASL response that does not decode as its mechanism
// says (RFC 4954 4: 501), logged at INFO with the client's IP. It tested no
// password, so it is not counted as a failure.
func (a *adapter) malformed(mech string) error {
	a.g.log.Info("AUTH: malformed SASL response", "mech", mech, "ip", a.g.sess.Conn().RemoteIP().String())
	return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed " + mech + " response"}
}

// plainServer is the server side of PLAIN (RFC 4616): go-sasl's would
// answer a malformed response with its own error text as a 454.
type plainServer struct {
	a    *adapter
	done bool
}

// Next implements sasl.Server: without an initial response it asks for
// the message with an empty challenge.
func (s *plainServer) Next(response []byte) ([]byte, bool, error) {
	if s.done {
		return nil, true, errSASLDone
	}
	if response == nil {
		return []byte{}, false, nil
	}
	s.done = true
	parts := bytes.Split(response, []byte{0})
	if len(parts) != 3 {
		return nil, true, s.a.malformed(sasl.Plain)
	}
	return nil, true, s.a.verify(sasl.Plain, string(parts[0]), string(parts[1]), string(parts[2]))
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl only has as a client.
type loginServer struct {
	verify   func(user, password string) error
	user     string
	step     int
	initSent bool
}

var errSASLDone = errors.New("SASL exchange already finished")

// Next implements sasl.Server. An initial response, when given, is the
// user name.
func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.verify(s.user, string(response))
	}
	return nil, true, errSASLDone
}
