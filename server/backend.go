package server

import (
	"io"
	"net"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks"
)

// backend is the go-smtp Backend: it hands go-smtp an adapter over the
// connection's Session. It is the only code that implements go-smtp's
// server interfaces.
type backend struct{}

func (backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	g, ok := c.Conn().(*guard)
	if !ok {
		return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Internal error"}
	}
	return &adapter{g: g}, nil
}

// adapter turns go-smtp's Session calls into Session calls and their
// replies back into go-smtp's errors. Positive replies return nil (go-smtp
// then records the command as done) and the guard words the reply.
type adapter struct{ g *guard }

func (a *adapter) answer(rep hooks.Reply) error {
	if rep.Close {
		a.g.closeAfterReply = true
	}
	if rep.Positive() {
		a.g.override = &rep
		return nil
	}
	return &smtp.SMTPError{Code: rep.Code, EnhancedCode: smtp.EnhancedCode(enhanced(rep)), Message: rep.Msg}
}

// enhanced returns the reply's enhanced code, or go-smtp's "none" marker.
func enhanced(rep hooks.Reply) [3]int {
	if rep.Enhanced == [3]int{} {
		return [3]int(smtp.NoEnhancedCode)
	}
	return rep.Enhanced
}

func (a *adapter) Reset()        { a.g.sess.Reset() }
func (a *adapter) Logout() error { return nil } // the guard's Close ends the Session

// Mail and Rcpt only keep go-smtp's state in step: the guard parsed the
// command strictly and ran the hooks before go-smtp saw it.
func (a *adapter) Mail(string, *smtp.MailOptions) error { return nil }
func (a *adapter) Rcpt(string, *smtp.RcptOptions) error { return nil }

func (a *adapter) Data(r io.Reader) error {
	direct := a.g.l.cfg.BareNewline != BareNewlineNormalize
	if direct {
		r = (*bodyReader)(a.g) // go-smtp's r would read the same bytes a byte at a time
	}
	rep := a.g.sess.Message(r)
	if rep.Close {
		// Close now: go-smtp would otherwise read the rest of the message.
		a.g.send(rep)
		return &smtp.SMTPError{Code: rep.Code, EnhancedCode: smtp.EnhancedCode(enhanced(rep)), Message: rep.Msg}
	}
	if direct {
		a.g.drainBody()
	}
	return a.answer(rep)
}

var _ net.Conn = (*guard)(nil)
