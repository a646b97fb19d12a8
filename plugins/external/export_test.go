package external

import (
	"log/slog"
	"time"
)

// SetLogger sends the plugin's own log lines (the program's stderr, its
// starts and exits) to l.
func SetLogger(p *Plugin, l *slog.Logger) { p.log.Store(l) }

// PID is the running program's process id, or 0 while it is down.
func PID(p *Plugin) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return 0
	}
	return p.proc.cmd.Process.Pid
}

// SetStopGrace shortens Close's grace periods for a test.
func SetStopGrace(p *Plugin, d time.Duration) { p.grace = d }
