// Package earlytalker acts on clients that talk before the greeting, as
// qpsmtpd's check_earlytalker does. The server loop does the watching: a
// listener with greeting_delay holds its greeting back and sets
// connection.Connection.EarlyTalker when the client sends anything
// meanwhile. This plugin decides what that means: refuse the client at
// connect (the connection closes), refuse its MAIL (so the log shows what
// it tried to send), or only leave a note for other plugins (karma).
//
// It can also hold the reply to DATA back for data_delay, qpsmtpd's check
// before DATA.
package earlytalker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("earlytalker", New) }

// Settings are the keys of a [plugins.earlytalker] table.
type Settings struct {
	// Action is what happens to an early talker: "deny" (default: a
	// permanent refusal), "defer" (a temporary one) or "note" (only the
	// note NoteEarlyTalker).
	Action string `toml:"action"`
	// Hook is where a refusal happens: "connect" (default: the greeting is
	// the refusal and the connection closes) or "mail" (MAIL is refused,
	// so the log shows the sender the client tried).
	Hook string `toml:"hook"`
	// DataDelay holds the reply to DATA back this long, a duration such
	// as "2s". Default "" or "0s": no delay. It must stay under the
	// listener's hook_timeout.
	DataDelay string `toml:"data_delay"`
}

// NoteEarlyTalker (connection) is true when the client talked before the
// greeting, whatever the action; other plugins (karma) read it. It is set
// at connect, also for a relay or whitelisted client.
var NoteEarlyTalker = notes.NewKey[bool]("earlytalker.early")

// maxDataDelay bounds data_delay: qpsmtpd waits a few seconds, and the
// data hook's default deadline is 5 s (hook_timeout).
const maxDataDelay = time.Minute

// msg is the refusal text (qpsmtpd: "Connecting host started
// transmitting before SMTP greeting").
const msg = "Client talked before the greeting"

// Plugin is an earlytalker instance. It is read-only after New and safe
// for concurrent use.
type Plugin struct {
	action    string
	atMail    bool
	dataDelay time.Duration
}

var (
	_ hooks.Connect = (*Plugin)(nil)
	_ hooks.Mail    = (*Plugin)(nil)
	_ hooks.Data    = (*Plugin)(nil)
)

// New builds an earlytalker instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Action: "deny", Hook: "connect"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{action: s.Action}
	switch s.Action {
	case "deny", "defer", "note":
	default:
		return nil, fmt.Errorf("action = %q: want \"deny\", \"defer\" or \"note\"", s.Action)
	}
	switch s.Hook {
	case "connect":
	case "mail":
		p.atMail = true
	default:
		return nil, fmt.Errorf("hook = %q: want \"connect\" or \"mail\"", s.Hook)
	}
	if d := strings.TrimSpace(s.DataDelay); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v < 0 || v > maxDataDelay {
			return nil, fmt.Errorf("data_delay = %q: want a duration from \"0s\" to \"1m\", such as \"2s\" (keep it under the listener's hook_timeout)", s.DataDelay)
		}
		p.dataDelay = v
	}
	return p, nil
}

// spared reports whether the client is one this plugin leaves alone: a
// relay client or one a list plugin whitelisted.
func spared(c *connection.Connection) bool {
	_, white := connection.NoteWhitelisted.Lookup(&c.Notes)
	return c.Relay || white
}

// Connect notes an early talker and, with hook = "connect", refuses it:
// the connection closes.
func (p *Plugin) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	if !c.EarlyTalker {
		return hooks.Result{}
	}
	NoteEarlyTalker.Set(&c.Notes, true)
	if p.atMail || p.action == "note" || spared(c) {
		return hooks.Result{}
	}
	if p.action == "defer" {
		return hooks.Result{Code: hooks.DenySoftDisconnect, Msg: msg, Enhanced: [3]int{4, 7, 1}, Err: errEarly}
	}
	return hooks.Result{Code: hooks.DenyDisconnect, Msg: msg, Enhanced: [3]int{5, 7, 1}, Err: errEarly}
}

var errEarly = fmt.Errorf("the client talked before the greeting (greeting_delay)")

// Mail refuses an early talker's MAIL when hook = "mail".
func (p *Plugin) Mail(_ context.Context, c *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	if !p.atMail || p.action == "note" || !c.EarlyTalker || spared(c) {
		return hooks.Result{}
	}
	if p.action == "defer" {
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 450, Msg: msg, Enhanced: [3]int{4, 7, 1}, Err: errEarly}
	}
	return hooks.Result{Code: hooks.Deny, ReplyCode: 554, Msg: msg, Enhanced: [3]int{5, 7, 1}, Err: errEarly}
}

// Data holds the reply to DATA back for data_delay, or until the hook's
// deadline is near, and declines. The delay ends early when ctx does.
func (p *Plugin) Data(ctx context.Context, c *connection.Connection, _ *transaction.Transaction) hooks.Result {
	if p.dataDelay <= 0 || spared(c) {
		return hooks.Result{}
	}
	d := p.dataDelay
	if dl, ok := ctx.Deadline(); ok {
		// Return before the deadline: a plugin that outlives it fails
		// closed (451), which the delay must not cause.
		if left := time.Until(dl) - deadlineMargin; left < d {
			d = max(left, 0)
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return hooks.Result{}
}

// deadlineMargin is how long before the hook's deadline the DATA delay
// ends at the latest.
const deadlineMargin = 100 * time.Millisecond
