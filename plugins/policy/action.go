package policy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

// apply maps the server's action, as Postfix reads an access(5) action
// (the verb is not case-sensitive), to the hook's result, setting notes for
// the actions Sluice carries out later or not at all.
func (p *Plugin) apply(c *connection.Connection, tx *transaction.Transaction, st stage, action string) hooks.Result {
	action = strings.TrimSpace(action)
	verb, text, _ := strings.Cut(action, " ")
	text = strings.TrimSpace(text)
	logNote := func(level slog.Level, msg string) {
		p.log.Log(context.Background(), level, msg, "conn", c.ID, "tx", tx.ID, "stage", stageNames[st].setting, "action", replyText(action, ""))
	}
	noted := func(k notes.Key[string], what string) hooks.Result {
		k.Set(&tx.Notes, replyText(text, ""))
		logNote(slog.LevelWarn, "policy server asked for "+what+", which Sluice does not do: noted as "+k.Name())
		return hooks.Result{}
	}
	switch v := mailaddr.LowerASCII(verb); {
	case v == "ok" || allDigits(action):
		// An all-numeric action is OK too (access(5), for pop-before-smtp).
		if p.okAccepts {
			return hooks.Result{Code: hooks.OK}
		}
		return hooks.Result{}
	case v == "dunno":
		return hooks.Result{}
	case v == "reject":
		return refusal(hooks.Deny, 0, text, [3]int{5, 7, 1}, "Access denied")
	case v == "defer" || v == "defer_if_permit" || v == "defer_if_reject":
		return refusal(hooks.DenySoft, 0, text, [3]int{4, 7, 1}, "Service unavailable")
	case v == "prepend":
		name, value, ok := strings.Cut(text, ":")
		if !ok || !transaction.ValidFieldName(name) {
			return p.failure(c, tx, st, fmt.Errorf("policy server: %w: PREPEND %q is no header field", errGarbled, replyText(text, "")))
		}
		list := NotePrepend.Get(&tx.Notes)
		if len(list) >= maxPrepend {
			logNote(slog.LevelWarn, fmt.Sprintf("policy server: more than %d PREPEND actions in one transaction: ignored", maxPrepend))
			return hooks.Result{}
		}
		NotePrepend.Set(&tx.Notes, append(list, name+": "+sanitize(strings.TrimSpace(value))))
		return hooks.Result{}
	case v == "discard":
		NoteDiscard.Set(&tx.Notes, replyText(text, ""))
		return hooks.Result{}
	case v == "hold":
		return noted(NoteHold, "HOLD")
	case v == "filter":
		return noted(NoteFilter, "FILTER")
	case v == "redirect":
		return noted(NoteRedirect, "REDIRECT")
	case v == "bcc":
		return noted(NoteBcc, "BCC")
	case v == "warn":
		logNote(slog.LevelWarn, "policy server warning")
		return hooks.Result{}
	case v == "info":
		logNote(slog.LevelInfo, "policy server information")
		return hooks.Result{}
	case len(verb) == 3 && allDigits(verb) && (verb[0] == '4' || verb[0] == '5'):
		code := int(verb[0]-'0')*100 + int(verb[1]-'0')*10 + int(verb[2]-'0')
		switch code {
		case 421:
			return refusal(hooks.DenySoftDisconnect, code, text, [3]int{4, 7, 1}, "Service unavailable")
		case 521:
			return refusal(hooks.DenyDisconnect, code, text, [3]int{5, 7, 1}, "Access denied")
		}
		if verb[0] == '4' {
			return refusal(hooks.DenySoft, code, text, [3]int{4, 7, 1}, "Service unavailable")
		}
		return refusal(hooks.Deny, code, text, [3]int{5, 7, 1}, "Access denied")
	}
	return p.failure(c, tx, st, fmt.Errorf("policy server: unknown action %q", replyText(action, "")))
}

// refusal builds a refusing result: an RFC 3463 code at the start of text
// replaces enhanced (its class made the reply's, as Postfix's
// smtpd_dsn_fix does), and an empty text becomes def.
func refusal(code hooks.Code, replyCode int, text string, enhanced [3]int, def string) hooks.Result {
	if e, rest, ok := splitEnhanced(text); ok {
		enhanced = [3]int{enhanced[0], e[1], e[2]}
		text = rest
	}
	return hooks.Result{Code: code, ReplyCode: replyCode, Enhanced: enhanced, Msg: replyText(text, def)}
}

// splitEnhanced reads an enhanced status code ("4.2.0") at the start of
// text, followed by a space or the end.
func splitEnhanced(text string) ([3]int, string, bool) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.Contains("245", parts[0]) {
		return [3]int{}, "", false
	}
	var e [3]int
	for i, s := range parts {
		if len(s) == 0 || len(s) > 3 || !allDigits(s) {
			return [3]int{}, "", false
		}
		for _, ch := range []byte(s) {
			e[i] = e[i]*10 + int(ch-'0')
		}
	}
	return e, strings.TrimSpace(rest), true
}

// replyText makes the server's text fit for a reply line and a log: bytes
// outside printable ASCII become '?'. An empty text becomes def.
func replyText(s, def string) string {
	if s == "" {
		return def
	}
	b := []byte(s)
	for i, ch := range b {
		if ch < 0x20 || ch > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
