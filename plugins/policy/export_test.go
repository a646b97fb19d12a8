package policy

import "log/slog"

// SetLogger sends the plugin's own log lines (WARN, INFO, failure_action
// accept) to l.
func (p *Plugin) SetLogger(l *slog.Logger) { p.log = l }
