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

// verdict is the error for an LMTP message some recipients of which the
// downstream refused after the message (nil when none): what Settle
// needs to route them or defer the message.
func verdict(outs queue.Outcomes) error {
	var refused queue.Outcomes
	for _, o := range outs {
		if !o.Delivered {
			refused = append(refused, o)
		}
	}
	if len(refused) == 0 {
		return nil
	}
	return refusedError(refused, len(outs))
}

// refusedError is the *queue.Error for recipients the downstream refused
// out of total: permanent (its 550, 552 or 554, else 554) when it refused
// every one for good, temporary (451 4.3.0) otherwise, since SMTP cannot
// tell the client after the message that some recipients got it.
func refusedError(refused queue.Outcomes, total int) error {
	first := refused[0]
	text := fmt.Sprintf("Downstream server refused <%s>: %s", first.Rcpt, first.Reply)
	if n := len(refused) - 1; n > 0 {
		text += fmt.Sprintf(" (and %d more)", n)
	}
	cause := fmt.Errorf("%d of %d recipients refused: %s", len(refused), total, first.Reply)
	permanent := len(refused) == total
	for _, o := range refused {
		permanent = permanent && o.Permanent
	}
	if permanent {
		e := &queue.Error{Permanent: true, Enhanced: first.Enhanced, Msg: text, Err: cause}
		if e.Enhanced[0] != 5 {
			e.Enhanced = [3]int{5, 0, 0}
		}
		switch first.Code {
		case 550, 552, 554:
			e.Code = first.Code
		}
		return e
	}
	if accepted := total - len(refused); accepted > 0 {
		text = fmt.Sprintf("%s; %d of %d recipients accepted", text, accepted, total)
	}
	return &queue.Error{Enhanced: [3]int{4, 3, 0}, Msg: text + "; try again later", Err: cause}
}
