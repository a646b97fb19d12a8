// Package saslogin is the server side of the LOGIN SASL mechanism
// (draft-murchison-sasl-login), which go-sasl has only as a client: it
// asks for the user name, then the password, each base64-encoded by the
// SMTP layer, and hands both to a verify function.
package saslogin

import "github.com/emersion/go-sasl"

// Server is a sasl.Server for LOGIN.
type Server struct {
	verify func(user, password string) error
	user   string
	step   int
}

// New returns the server side of one LOGIN exchange; verify checks the
// credentials at its end.
func New(verify func(user, password string) error) *Server {
	return &Server{verify: verify}
}

// Next implements sasl.Server. An initial response, when given, is the
// user name.
func (s *Server) Next(response []byte) ([]byte, bool, error) {
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
	return nil, true, sasl.ErrUnexpectedClientResponse
}
