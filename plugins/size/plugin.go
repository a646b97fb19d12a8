// Package size caps the size of a message, as qpsmtpd's databytes setting
// and Haraka's max.bytes do. The server enforces the cap while it reads the
// message (552 5.3.4 past it) and announces it in the EHLO SIZE keyword;
// the plugin also refuses at MAIL a message whose declared SIZE= is over
// the cap (RFC 1870), so the client does not send it for nothing.
package size

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("size", New) }

// Settings are the keys of a [plugins.size] table.
type Settings struct {
	// Max is the largest message accepted, in bytes: an integer
	// (10485760) or a string with a unit ("10MB"). Required.
	Max config.Bytes `toml:"max"`
}

// Plugin is a size instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	max int64
}

var (
	_ hooks.Mail        = (*Plugin)(nil)
	_ hooks.SizeLimiter = (*Plugin)(nil)
)

// New builds a size instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.Max <= 0 {
		return nil, fmt.Errorf("max is missing or zero: set the largest message accepted, e.g. max = \"25MB\"")
	}
	return &Plugin{max: int64(s.Max)}, nil
}

// MaxMessageBytes implements hooks.SizeLimiter: the server refuses a
// message past this many bytes while reading it, and announces the limit
// in EHLO SIZE. The smallest limit of the chain and the listener applies.
func (p *Plugin) MaxMessageBytes() int64 { return p.max }

// Mail refuses a transaction whose declared size (MAIL FROM:<...>
// SIZE=n) is over the limit (RFC 1870 6.1).
func (p *Plugin) Mail(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if tx.Params.Size > p.max {
		return hooks.Result{Code: hooks.Deny, ReplyCode: 552, Msg: "Message size exceeds fixed maximum message size", Enhanced: [3]int{5, 3, 4}}
	}
	return hooks.Result{}
}
