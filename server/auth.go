package server

import (
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
		return sasl.NewPlainServer(func(identity, user, password string) error {
			if identity != "" && identity != user {
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authorization identity must be empty or the user name"}
			}
			return a.verify(mech, user, password)
		}), nil
	case sasl.Login:
		return &loginServer{verify: func(user, password string) error { return a.verify(mech, user, password) }}, nil
	}
	return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Unsupported authentication mechanism"}
}

// verify runs the auth hook under the brute-force limiter. Failures are
// logged with the client's IP and the user name, never the password.
func (a *adapter) verify(mech, user, password string) error {
	g := a.g
	lim := g.l.srv.authLimiter
	ip := g.sess.Conn().RemoteIP()
	if lim.Blocked(ip, user) {
		g.log.Warn("AUTH refused: too many failures", "ip", ip.String(), "user", user)
		return a.lockout()
	}
	rep := g.sess.Auth(mech, user, password)
	if g.sess.Authenticated() {
		g.log.Info("AUTH succeeded", "mech", mech, "user", user)
		g.override = &rep
		return nil
	}
	g.log.Warn("AUTH failed", "mech", mech, "ip", ip.String(), "user", user, "reply", rep.String())
	if rep.Code/100 == 5 && lim.Fail(ip, user) {
		return a.lockout()
	}
	if rep.Close {
		g.closeAfterReply = true
	}
	return &smtp.SMTPError{Code: rep.Code, EnhancedCode: smtp.EnhancedCode(enhanced(rep)), Message: rep.Msg}
}

// lockout delays, then answers 535 and closes the connection.
func (a *adapter) lockout() error {
	time.Sleep(a.g.l.srv.authLimiter.delay())
	a.g.closeAfterReply = true
	return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Too many failed authentication attempts; closing connection"}
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl only has as a client.
type loginServer struct {
	verify   func(user, password string) error
	user     string
	step     int
	initSent bool
}

var errLoginDone = errors.New("LOGIN: exchange already finished")

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
	return nil, true, errLoginDone
}

var _ hooks.Reply // the adapter answers with hooks replies
