package greylist

import "time"

// SetClock replaces the plugin's clock.
func (p *Plugin) SetClock(now func() time.Time) { p.now = now }
