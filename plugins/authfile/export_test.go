package authfile

import "time"

// SetClock replaces the clock that paces the file's re-reads.
func (p *Plugin) SetClock(now func() time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = now
}

// Occupy takes every hash-checking slot until the returned func runs.
func (p *Plugin) Occupy() (release func()) {
	for range cap(p.sem) {
		p.sem <- struct{}{}
	}
	return func() {
		for range cap(p.sem) {
			<-p.sem
		}
	}
}
