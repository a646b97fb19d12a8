package ratelimit

import "time"

// SetClock replaces the clock the windows are measured with.
func (p *Plugin) SetClock(now func() time.Time) { p.now = now }
