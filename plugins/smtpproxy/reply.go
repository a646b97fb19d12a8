package smtpproxy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/queue"
)

// mailRefusal is the mail hook's answer to a failed MAIL FROM: the
// downstream's own reply (code, status, text) when it refused the sender;
// queue.Result's reply otherwise (unreachable, timed out, a refused EHLO,
// SMTPUTF8 missing).
func mailRefusal(err error) hooks.Result {
	var me *mailError
	var se *smtp.SMTPError
	if !errors.As(err, &me) || !errors.As(err, &se) || se.Code < 400 || se.Code > 599 {
		return queue.Result(err)
	}
	e := [3]int(se.EnhancedCode)
	if se.EnhancedCode == smtp.EnhancedCodeNotSet || se.EnhancedCode == smtp.NoEnhancedCode {
		e = [3]int{}
	}
	return passThrough(se.Code, e, oneLine(se.Message), err)
}

// mailError marks the downstream's answer to MAIL FROM, as opposed to a
// failure to reach it or to greet it.
type mailError struct{ err error }

func (e *mailError) Error() string { return e.err.Error() }
func (e *mailError) Unwrap() error { return e.err }

// rcptRefusal is the rcpt hook's answer to a downstream's refusal of a
// recipient: its own reply, code, status and text.
func rcptRefusal(o queue.Outcome, addr string) hooks.Result {
	text := strings.TrimPrefix(o.Reply, strconv.Itoa(o.Code)+" ")
	if e := o.Enhanced; e[0] != 0 {
		text = strings.TrimPrefix(text, fmt.Sprintf("%d.%d.%d ", e[0], e[1], e[2]))
	}
	return passThrough(o.Code, o.Enhanced, text, fmt.Errorf("downstream %s refused RCPT TO:<%s>: %s", addr, o.Rcpt, o.Reply))
}

// passThrough answers with a downstream reply: Deny for a 5xx, DenySoft
// otherwise, with its code (the server keeps it when the hook allows
// it), its status code (the class's x.0.0 when it gave none) and its
// text; a 421 is the downstream closing, told to the client as a 451.
func passThrough(code int, enhanced [3]int, text string, cause error) hooks.Result {
	res := hooks.Result{Code: hooks.DenySoft, ReplyCode: code, Enhanced: enhanced, Msg: text, Err: cause}
	if code >= 500 {
		res.Code = hooks.Deny
	}
	if res.Enhanced[0] == 0 {
		res.Enhanced = [3]int{code / 100, 0, 0}
	}
	if text == "" {
		res.Msg = "Downstream server refused the command"
	}
	if code == 421 {
		// The downstream is closing its connection, not Sluice.
		res.ReplyCode = 451
		res.Msg = "Downstream server closed the connection: 421 " + text + "; try again later"
	}
	return res
}

// oneLine makes a downstream's reply text safe to show: printable ASCII
// on one line, at most 300 bytes.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r > '~' {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
