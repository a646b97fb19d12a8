// Package discard is a queue plugin that throws every message away: it
// answers 250 at the queue hook and stores nothing. It is Haraka's
// queue/discard and the queue_discard plugin people write for qpsmtpd. Its
// uses are benchmarks (measuring the receiving side without a disk),
// smoke tests and sink hosts; on a real MX it loses mail. So it refuses to
// build unless its table says i_know_this_drops_mail = true, and its reply
// says the message was discarded rather than queued.
package discard

import (
	"context"
	"errors"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("discard", New) }

// Settings are the keys of a [plugins.discard] table.
type Settings struct {
	// IKnowThisDropsMail must be true: a safety catch, so that a listener
	// cannot discard mail because someone copied a benchmark config.
	IKnowThisDropsMail bool `toml:"i_know_this_drops_mail"`
}

// Reply is the text of the 250 to the final dot.
const Reply = "Ok: message discarded"

// Plugin is a discard instance. It holds no state and is safe for
// concurrent use.
type Plugin struct{}

var _ hooks.Queue = (*Plugin)(nil)

// New builds a discard instance; it fails unless i_know_this_drops_mail is
// true.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	if !s.IKnowThisDropsMail {
		return nil, errors.New("i_know_this_drops_mail is not true: discard accepts every message and stores none; " +
			"set i_know_this_drops_mail = true in [plugins.discard] only where losing mail is what you want (benchmarks, tests)")
	}
	return &Plugin{}, nil
}

// Queue implements hooks.Queue: it takes the message with Done, so the
// client gets 250 and nothing is queued (queue_post does not run, and the
// log does not call it queued).
func (*Plugin) Queue(context.Context, *connection.Connection, *transaction.Transaction) hooks.Result {
	return hooks.Result{Code: hooks.Done, Msg: Reply}
}
