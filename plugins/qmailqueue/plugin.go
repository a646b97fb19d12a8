// Package qmailqueue is the qmailqueue queue plugin: it hands each accepted
// message to qmail-queue (or a compatible program such as IndiMail's or
// notqmail's) and turns the program's exit code into the reply.
package qmailqueue

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("qmailqueue", New) }

// Settings are the plugin's [plugins.qmailqueue] table.
type Settings struct {
	// Path is the qmail-queue program; $QMAILQUEUE, when set, overrides
	// it (resolved once, when the plugin is built). Default
	// queue.DefaultQmailQueuePath.
	Path string `toml:"path"`
	// Timeout bounds one run of the program ("5m").
	Timeout string `toml:"timeout"`
	// LineEndings is "lf" (CRLF becomes LF, as qmail expects) or "crlf"
	// (the message as received).
	LineEndings string `toml:"line_endings"`
}

// Plugin is a configured qmailqueue instance.
type Plugin struct {
	qq *queue.QmailQueue
}

var _ hooks.Queue = (*Plugin)(nil)

// New builds the plugin from its settings. It does not require `path` to
// exist yet: a missing program defers mail (451) and logs the path. A
// $QMAILQUEUE that is set overrides `path`, as it does for qmail-smtpd;
// it is resolved to an absolute path here, once, logged, and must name an
// executable program.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Path: queue.DefaultQmailQueuePath, LineEndings: "lf"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(s.Path) {
		return nil, fmt.Errorf("path = %q: want the absolute path of the qmail-queue program, e.g. %q", s.Path, queue.DefaultQmailQueuePath)
	}
	timeout, err := queue.ParseTimeout("timeout", s.Timeout, queue.DefaultQmailQueueTimeout)
	if err != nil {
		return nil, err
	}
	if s.LineEndings != "lf" && s.LineEndings != "crlf" {
		return nil, fmt.Errorf("line_endings = %q: want \"lf\" (what qmail stores) or \"crlf\" (the message as received)", s.LineEndings)
	}
	prog := s.Path
	if v := os.Getenv("QMAILQUEUE"); v != "" {
		if prog, err = resolveProgram(v); err != nil {
			return nil, fmt.Errorf("$QMAILQUEUE = %q (it overrides path = %q): %w; set it to an executable qmail-queue program or unset it", v, s.Path, err)
		}
		slog.Info("qmailqueue: $QMAILQUEUE overrides path", "plugin", "qmailqueue", "program", prog, "path", s.Path)
	}
	return &Plugin{qq: &queue.QmailQueue{Path: prog, Timeout: timeout, CRLF: s.LineEndings == "crlf"}}, nil
}

// resolveProgram finds name as a shell would (in $PATH when it has no
// slash, else from the working directory) and returns its absolute path.
func resolveProgram(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}

// Queue implements hooks.Queue: exit 0 accepts the message (250), exits
// 11 to 40 and 115 and a custom 'D' error refuse it permanently, anything
// else defers it (451).
func (p *Plugin) Queue(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	rc, err := p.qq.Queue(ctx, tx)
	if err != nil {
		return queue.Result(err)
	}
	tx.QueueID = rc.ID
	return hooks.Result{Code: hooks.OK}
}
