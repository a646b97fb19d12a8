// Package maildir is the maildir queue plugin: it stores each accepted
// message in a Maildir (tmp/, fsync, new/) and answers 250 only once the
// file is durable.
package maildir

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("maildir", New) }

// DefaultPath is the Maildir used when the path setting is absent.
const DefaultPath = "./var/mail"

// Settings are the plugin's [plugins.maildir] table.
type Settings struct {
	// Path is the Maildir's root directory; cur/, new/ and tmp/ are created
	// (mode 0700) when missing.
	Path string `toml:"path"`
}

// Plugin is a configured maildir instance.
type Plugin struct {
	md *queue.Maildir
}

var _ hooks.Queue = (*Plugin)(nil)

// New builds the plugin from its settings and creates the Maildir.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Path: DefaultPath}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.Path == "" {
		return nil, fmt.Errorf("path = \"\": set it to the Maildir directory, e.g. %q", DefaultPath)
	}
	md, err := queue.NewMaildir(s.Path)
	if err != nil {
		return nil, fmt.Errorf("path = %q: %w (check the directory exists or can be created, and is writable)", s.Path, err)
	}
	return &Plugin{md: md}, nil
}

// Queue implements hooks.Queue: it writes the message into new/ and
// accepts it with the transaction's id as the queue id; a failure defers
// the message (451).
func (p *Plugin) Queue(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	rc, err := p.md.Deliver(ctx, tx)
	if err != nil {
		return queue.Result(err)
	}
	tx.QueueID = rc.ID
	NoteFile.Set(&tx.Notes, rc.Path)
	// The client's reply is always "Ok: queued as ID"; the file goes to
	// the server's log line for the message.
	return hooks.Result{Code: hooks.OK, Detail: "delivered to " + rc.Path}
}

// NoteFile is the transaction note holding the delivered file's path.
var NoteFile = notes.NewKey[string]("maildir.file")
