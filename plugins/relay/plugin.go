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
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
)

func init() { hooks.Register("relay", New) }

// Settings are the keys of a [plugins.relay] table.
type Settings struct {
	// Allow lists the networks that may relay: CIDR prefixes
	// ("192.0.2.0/24", "2001:db8::/32") or single addresses ("192.0.2.10").
	// Empty (the default) lets nobody relay.
	Allow []string `toml:"allow"`
}

// NoteClient is the connection note set to true for a relay client.
var NoteClient = notes.NewKey[bool]("relay.client")

// Plugin is a relay instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	allow []netip.Prefix
}

var _ hooks.Connect = (*Plugin)(nil)

// New builds a relay instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{}
	for _, entry := range s.Allow {
		pfx, err := parse(entry)
		if err != nil {
			return nil, fmt.Errorf("allow: %q is not an IP address or CIDR prefix: want \"192.0.2.10\", \"192.0.2.0/24\" or \"2001:db8::/32\"", entry)
		}
		p.allow = append(p.allow, pfx)
	}
	return p, nil
}

// parse reads "192.0.2.0/24" or "192.0.2.10" (a /32 or /128). IPv4-mapped
// IPv6 entries ("::ffff:192.0.2.10") become IPv4, as Connection.RemoteIP
// reports clients.
func parse(entry string) (netip.Prefix, error) {
	entry = strings.TrimSpace(entry)
	if strings.Contains(entry, "/") {
		pfx, err := netip.ParsePrefix(entry)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a := pfx.Addr(); a.Is4In6() {
			if pfx.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("mapped prefix wider than /96")
			}
			pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
		}
		return pfx.Masked(), nil
	}
	a, err := netip.ParseAddr(entry)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zone not allowed")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Connect marks the client as a relay client when its address is allowed.
// It always declines: whether the connection is accepted is for other
// plugins to say.
func (p *Plugin) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	ip := c.RemoteIP()
	for _, pfx := range p.allow {
		if pfx.Contains(ip) {
			c.Relay = true
			NoteClient.Set(&c.Notes, true)
			break
		}
	}
	return hooks.Result{}
}
