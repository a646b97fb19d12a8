// Package size caps the size of a message, as qpsmtpd's databytes setting
// and Haraka's max.bytes do. The server enforces the cap while it reads the
// message (552 5.3.4 past it) and announces it in the EHLO SIZE keyword;
// the plugin also refuses at MAIL a message whose declared SIZE= is over
// the cap (RFC 1870), so the client does not send it for nothing.
package size

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("size", New) }

// Settings are the keys of a [plugins.size] table.
type Settings struct {
	// Max is the largest message accepted, in bytes: an integer
	// (10485760) or a string with a unit ("10MB"). Required.
	Max Bytes `toml:"max"`
}

// Bytes is a byte count written in the config as an integer or as a string
// with a unit: "512KB", "10MB", "1GB" (powers of 1024; "KiB", "MiB", "GiB"
// and "K", "M", "G" mean the same, "B" or no unit means bytes).
type Bytes int64

// UnmarshalText parses the setting; the TOML decoder gives an integer to
// it as its decimal text.
func (b *Bytes) UnmarshalText(text []byte) error {
	n, err := parseBytes(string(text))
	if err != nil {
		return fmt.Errorf("max = %q: %w", string(text), err)
	}
	*b = Bytes(n)
	return nil
}

var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
}

// parseBytes parses "10MB", "10 MiB", "512k" or "1048576" into bytes.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	bad := fmt.Errorf("want a whole number of bytes (10485760) or a number with a unit: \"10MB\" (KB, MB, GB are powers of 1024)")
	if i == 0 {
		return 0, bad
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, bad
	}
	mult, ok := units[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, bad
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("too large")
	}
	return n * mult, nil
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
		return hooks.Result{Code: hooks.Deny, Reply: 552, Msg: "Message size exceeds fixed maximum message size", Enhanced: [3]int{5, 3, 4}}
	}
	return hooks.Result{}
}
