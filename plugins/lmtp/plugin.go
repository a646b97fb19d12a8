// Package lmtp is the lmtp queue plugin: smtpforward speaking LMTP (RFC
// 2033) by default, for handing each accepted message to a mailbox
// server's LMTP service (Dovecot, Cyrus) over TCP or a unix socket. It is
// Haraka's queue/lmtp.
package lmtp

import (
	"errors"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/plugins/smtpforward"
)

func init() { hooks.Register("lmtp", New) }

// DefaultHost is the LMTP server used when the host setting is absent:
// port 24, the LMTP port (Haraka's queue/lmtp default).
const DefaultHost = "127.0.0.1:24"

// NoteRemoteID is the transaction note that holds the LMTP server's own
// queue id, when its reply named one.
var NoteRemoteID = notes.NewKey[string]("lmtp.remote_id")

// Settings are the plugin's [plugins.lmtp] table: smtpforward's keys,
// with lmtp = true and host = DefaultHost by default.
type Settings = smtpforward.Settings

// New builds the plugin from its settings; a bad setting is an error that
// names it.
func New(decode hooks.Decoder) (*smtpforward.Plugin, error) {
	s := smtpforward.DefaultSettings()
	s.Host, s.LMTP = DefaultHost, true
	if err := decode(&s); err != nil {
		return nil, err
	}
	if !s.LMTP {
		return nil, errors.New("lmtp = false: this plugin speaks LMTP; use the smtpforward plugin to forward over SMTP")
	}
	return smtpforward.FromSettings(s, NoteRemoteID)
}
