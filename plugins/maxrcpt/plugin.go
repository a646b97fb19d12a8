// Package maxrcpt caps the number of recipients of one transaction, as
// Haraka's limit plugin (recipients) and qpsmtpd's max recipients setting
// do. Once a transaction has max recipients, each further RCPT is refused:
// temporarily by default, so the client sends those recipients in another
// transaction (RFC 5321 4.5.3.1.8).
//
// maxrcpt declines every recipient under the cap, so it must come before
// the plugin that accepts recipients (rcptok) in the listener's plugin
// list: once a plugin answers OK the rcpt hook ends.
package maxrcpt

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("maxrcpt", New) }

// Settings are the keys of a [plugins.maxrcpt] table.
type Settings struct {
	// Max is the most recipients one transaction may have. Default 100,
	// the minimum RFC 5321 4.5.3.1.8 requires a server to accept.
	Max int `toml:"max"`
	// Action is what happens to a recipient over the cap: "defer" (the
	// default: a temporary refusal, the client retries it in a new
	// transaction) or "reject" (a permanent one).
	Action string `toml:"action"`
}

// NoteRefused is the transaction note counting the recipients refused for
// being over the cap.
var NoteRefused = notes.NewKey[int]("maxrcpt.refused")

// Plugin is a maxrcpt instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	max    int
	result hooks.Result
}

var _ hooks.Rcpt = (*Plugin)(nil)

// New builds a maxrcpt instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Max: 100, Action: "defer"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.Max < 1 {
		return nil, fmt.Errorf("max = %d: want at least 1", s.Max)
	}
	p := &Plugin{max: s.Max}
	switch s.Action {
	case "defer":
		p.result = hooks.Result{Code: hooks.DenySoft, ReplyCode: 452, Msg: "Too many recipients", Enhanced: [3]int{4, 5, 3}}
	case "reject":
		p.result = hooks.Result{Code: hooks.Deny, ReplyCode: 552, Msg: "Too many recipients", Enhanced: [3]int{5, 5, 3}}
	default:
		return nil, fmt.Errorf("action = %q: want \"defer\" or \"reject\"", s.Action)
	}
	return p, nil
}

// Rcpt refuses the recipient when the transaction already has max of them,
// and declines otherwise.
func (p *Plugin) Rcpt(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if len(tx.Recipients) >= p.max {
		notes.Add(&tx.Notes, NoteRefused, 1)
		return p.result
	}
	return hooks.Result{}
}
