package dmarc

// SetSample replaces the pct= draw of p (a number in [0, n)), so a test
// decides which messages a pct= below 100 samples in.
func SetSample(p *Plugin, f func(n int) int) { p.sample = f }
