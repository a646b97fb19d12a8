// Package loop refuses a message that has been through too many hops,
// which is what a mail loop looks like: it counts the Received and
// Delivered-To header fields, as qpsmtpd's loop plugin, qmail-smtpd and
// Postfix's hopcount_limit do.
//
// The count is taken at data_headers_end, on the header as the client sent
// it: Sluice's own Received field is not there yet. A message is refused
// when the count is max_hops or more, qmail-smtpd's and qpsmtpd's
// comparison. (qpsmtpd's plugin runs at data_post, where its own Received
// field is already counted, so it refuses one hop sooner.)
package loop

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("loop", New) }

// Settings are the keys of a [plugins.loop] table.
type Settings struct {
	// MaxHops is the hop count (Received plus Delivered-To fields) at which
	// a message is taken for a loop. Default 100, as qpsmtpd and
	// qmail-smtpd; Postfix uses 50.
	MaxHops int `toml:"max_hops"`
	// Reject refuses a looping message (default). False only notes it
	// (loop.detected), for a later plugin to decide.
	Reject bool `toml:"reject"`
}

// The transaction notes loop sets.
var (
	// NoteHops is the number of Received and Delivered-To fields.
	NoteHops = notes.NewKey[int]("loop.hops")
	// NoteDetected is true when the count reached max_hops.
	NoteDetected = notes.NewKey[bool]("loop.detected")
)

// Plugin is a loop instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	maxHops int
	reject  bool
}

var _ hooks.DataHeadersEnd = (*Plugin)(nil)

// New builds a loop instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{MaxHops: 100, Reject: true}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.MaxHops < 1 {
		return nil, fmt.Errorf("max_hops = %d: want at least 1 (qpsmtpd and qmail use 100, Postfix 50)", s.MaxHops)
	}
	return &Plugin{maxHops: s.MaxHops, reject: s.Reject}, nil
}

// DataHeadersEnd counts the hops and refuses the message when there are
// max_hops or more. The client still sends the body; the refusal is the
// reply to the final dot.
func (p *Plugin) DataHeadersEnd(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	hops := tx.Header.Count("Received") + tx.Header.Count("Delivered-To")
	NoteHops.Set(&tx.Notes, hops)
	if hops < p.maxHops {
		return hooks.Result{}
	}
	NoteDetected.Set(&tx.Notes, true)
	if !p.reject {
		return hooks.Result{}
	}
	return hooks.Result{Code: hooks.Deny, Msg: "Too many hops: mail loop?", Enhanced: [3]int{5, 4, 6}}
}
