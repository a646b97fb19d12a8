// Package relay marks clients whose IP address is in a configured list as
// relay clients (c.Relay = true), so that rcptok accepts any recipient from
// them. It is qpsmtpd's relay plugin (relayclients) and Haraka's relay
// plugin (the allow list of relay_acl). It decides nothing else: its
// connect hook always declines.
package relay

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/lookup"
)

func init() { hooks.Register("relay", New) }

// Settings are the keys of a [plugins.relay] table.
type Settings struct {
	// Allow lists the networks that may relay: CIDR prefixes
	// ("192.0.2.0/24", "2001:db8::/32") or single addresses ("192.0.2.10"),
	// inline or in a lookup table: a { file = ... } of such entries, or a
	// cdb, redis, pgsql or mysql table looked up with the client's address
	// (exactly: prefixes are only read from lists and files). Empty (the
	// default) lets nobody relay.
	Allow lookup.Spec `toml:"allow"`
}

// NoteClient is the connection note set to true for a relay client.
var NoteClient = notes.NewKey[bool]("relay.client")

// Plugin is a relay instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	allow []netip.Prefix
	table *lookup.Networks // allow from a file or a remote table
}

var _ hooks.Connect = (*Plugin)(nil)

// New builds a relay instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{}
	if s.Allow.Backend() != "list" {
		n, err := lookup.OpenNetworks(s.Allow)
		if err != nil {
			return nil, fmt.Errorf("allow: %w", err)
		}
		p.table = n
		return p, nil
	}
	for _, entry := range s.Allow.List {
		pfx, err := lookup.ParseNetwork(entry)
		if err != nil {
			return nil, fmt.Errorf("allow: %q is not an IP address or CIDR prefix: want \"192.0.2.10\", \"192.0.2.0/24\" or \"2001:db8::/32\"", entry)
		}
		p.allow = append(p.allow, pfx)
	}
	return p, nil
}

// Connect marks the client as a relay client when its address is allowed.
// It always declines: whether the connection is accepted is for other
// plugins to say.
//
// When the table cannot answer (a database down), it defers the
// connection (421): a client that may relay must not be refused for good.
func (p *Plugin) Connect(ctx context.Context, c *connection.Connection) hooks.Result {
	ip := c.RemoteIP()
	allowed := false
	for _, pfx := range p.allow {
		if pfx.Contains(ip) {
			allowed = true
			break
		}
	}
	if !allowed && p.table != nil {
		_, ok, err := p.table.Match(ctx, ip)
		if err != nil {
			return hooks.Result{Code: hooks.DenySoft, Msg: "cannot check the relay clients now; try again later", Enhanced: [3]int{4, 3, 0}, Err: err}
		}
		allowed = ok
	}
	if allowed {
		c.Relay = true
		NoteClient.Set(&c.Notes, true)
	}
	return hooks.Result{}
}

// Close closes the lookup table.
func (p *Plugin) Close() error {
	if p.table != nil {
		return p.table.Close()
	}
	return nil
}
