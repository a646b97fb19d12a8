package verify

import "log/slog"

// Asked returns how many times the downstream was asked (RCPT probes or
// userdb lookups): a check answered from the cache asks nothing.
func (p *Plugin) Asked() int64 {
	switch c := p.checker.(type) {
	case *prober:
		return c.probes.Load()
	case *userdb:
		return c.lookups.Load()
	}
	return -1
}

// Idle returns how many probe connections are open and idle.
func (p *Plugin) Idle() int {
	pr, ok := p.checker.(*prober)
	if !ok {
		return 0
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return len(pr.idle)
}

// SetLogger replaces the plugin's logger.
func (p *Plugin) SetLogger(l *slog.Logger) { p.log = l }
