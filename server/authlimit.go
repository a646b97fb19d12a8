package server

import (
	"net/netip"
	"strings"
	"sync"
	"time"
)

// AuthLimiter counts failed AUTH attempts per client IP and per user name
// within a window, against brute force. One limiter is shared by every
// listener of a server, so a client cannot spread its guesses over ports.
type AuthLimiter struct {
	// MaxFailures is how many failures a client IP or a user name may have
	// within Window; past it AUTH answers 535 after Delay and the connection
	// is closed. Defaults 5 and 15 minutes.
	MaxFailures int
	Window      time.Duration
	// Delay is how long a refused client waits for its 535. Default 2s.
	Delay time.Duration

	mu      sync.Mutex
	windows map[string]*failWindow
}

type failWindow struct {
	start time.Time
	n     int
}

const maxTrackedKeys = 100_000

func (l *AuthLimiter) defaults() (int, time.Duration) {
	max, win := l.MaxFailures, l.Window
	if max <= 0 {
		max = 5
	}
	if win <= 0 {
		win = 15 * time.Minute
	}
	return max, win
}

func keys(ip netip.Addr, user string) []string {
	k := []string{"ip " + ip.String()}
	if user != "" {
		k = append(k, "user "+strings.ToLower(user))
	}
	return k
}

// Blocked reports whether ip or user has used up its failures.
func (l *AuthLimiter) Blocked(ip netip.Addr, user string) bool {
	max, win := l.defaults()
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys(ip, user) {
		if w := l.windows[k]; w != nil && now.Sub(w.start) < win && w.n >= max {
			return true
		}
	}
	return false
}

// Fail records a failed attempt and reports whether ip or user is now
// blocked.
func (l *AuthLimiter) Fail(ip netip.Addr, user string) bool {
	max, win := l.defaults()
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windows == nil {
		l.windows = map[string]*failWindow{}
	}
	if len(l.windows) >= maxTrackedKeys {
		for k, w := range l.windows {
			if now.Sub(w.start) >= win {
				delete(l.windows, k)
			}
		}
	}
	blocked := false
	for _, k := range keys(ip, user) {
		w := l.windows[k]
		if w == nil || now.Sub(w.start) >= win {
			w = &failWindow{start: now}
			l.windows[k] = w
		}
		w.n++
		if w.n >= max {
			blocked = true
		}
	}
	return blocked
}

func (l *AuthLimiter) delay() time.Duration {
	if l.Delay <= 0 {
		return 2 * time.Second
	}
	return l.Delay
}
