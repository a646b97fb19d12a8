// Package watch is the live web view of a running server, Haraka's watch
// done better: one page that shows every connection and transaction as it
// happens (listener, client, HELO, TLS, user, sender, recipients, each
// plugin decision that was not DECLINED, the queue result), with filters,
// and the latency per plugin. It reads monitor.Bus and monitor.Snapshot;
// the admin listener mounts Handler.
package watch

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/monitor"
)

//go:embed static
var static embed.FS

// securityPolicy lets the page load its own script, style and feeds and
// nothing else: no inline script or style, no other origin, no frames,
// no forms, no plugins. Everything the page shows that came from a client
// (HELO, addresses, replies) is put in the page as text, never as markup;
// the policy is the second wall should that ever slip.
const securityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Tunables of the event stream; variables so that tests can shorten them.
var (
	// keepAlive is how long the stream stays quiet before it sends a
	// comment, so that proxies and the browser keep it open.
	keepAlive = 15 * time.Second
	// writeTimeout bounds each write to a client: one that stops reading
	// loses its stream instead of holding a goroutine for ever.
	writeTimeout = 10 * time.Second
)

// subscriberBuffer is how many events a stream may fall behind before the
// Bus drops events for it (the page shows the gap).
const subscriberBuffer = 1024

// Handler returns the live view:
//
//   - /watch: the page (its script and style are /watch/watch.js and
//     /watch/watch.css; nothing is loaded from elsewhere, so it works
//     offline);
//   - /watch/events: the events as server-sent events, each a
//     monitor.Event as JSON with its Seq as id; a stream starts with the
//     kept events (those after Last-Event-ID when the browser reconnects)
//     and then follows the live ones;
//   - /watch/stats: stats() as JSON (an empty Snapshot when stats is nil).
//
// Mount it for both "/watch" and "/watch/" on the admin listener's mux.
// Handler does no authentication and no access control of its own: the
// page shows client addresses, HELO names, senders and recipients, so
// whatever serves it (the admin listener) must restrict who reaches it.
func Handler(bus *monitor.Bus, stats func() monitor.Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /watch", serveFile("static/index.html", "text/html; charset=utf-8"))
	mux.HandleFunc("GET /watch/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/watch", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /watch/watch.js", serveFile("static/watch.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /watch/watch.css", serveFile("static/watch.css", "text/css; charset=utf-8"))
	mux.Handle("GET /watch/events", &stream{bus: bus})
	mux.HandleFunc("GET /watch/stats", func(w http.ResponseWriter, r *http.Request) {
		var snap monitor.Snapshot
		if stats != nil {
			snap = stats()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(snap)
	})
	return secure(mux)
}

// secure sets the headers every answer carries.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", securityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

// serveFile serves one embedded file.
func serveFile(name, contentType string) http.HandlerFunc {
	body, err := static.ReadFile(name)
	if err != nil {
		panic("watch: the embedded " + name + " is missing: " + err.Error())
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(body)
	}
}

// stream serves /watch/events.
type stream struct {
	bus *monitor.Bus
}

func (s *stream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.bus == nil {
		http.Error(w, "no event feed: the server publishes none", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	// Subscribe before reading the kept events, so that an event published
	// in between is in one or the other; Seq drops the doubles.
	live, stop := s.bus.Subscribe(subscriberBuffer)
	defer stop()
	recent := s.bus.Recent()

	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	if n := len(recent); n == 0 || after > recent[n-1].Seq {
		// The browser saw a server that has since restarted (its Seq
		// started again): send everything kept.
		after = 0
	}

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// retry: how long the browser waits before it reconnects.
	if !s.write(w, rc, "retry: 2000\n\n") {
		return
	}
	for _, e := range recent {
		if e.Seq <= after {
			continue
		}
		if !s.send(w, rc, e) {
			return
		}
		after = e.Seq
	}

	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-live:
			if e.Seq <= after {
				continue
			}
			if !s.send(w, rc, e) {
				return
			}
			after = e.Seq
		case <-tick.C:
			if !s.write(w, rc, ": keep-alive\n\n") {
				return
			}
		}
	}
}

// send writes one event and flushes it.
func (s *stream) send(w io.Writer, rc *http.ResponseController, e monitor.Event) bool {
	data, err := json.Marshal(e)
	if err != nil {
		// An Event is strings, numbers and times: this does not happen.
		return true
	}
	// JSON has no raw newline, so one data line holds the event.
	return s.write(w, rc, fmt.Sprintf("id: %d\ndata: %s\n\n", e.Seq, data))
}

// write writes text within writeTimeout and flushes it; false means the
// client is gone or stuck and the stream ends.
func (s *stream) write(w io.Writer, rc *http.ResponseController, text string) bool {
	if err := rc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return false
	}
	if _, err := io.WriteString(w, text); err != nil {
		return false
	}
	return rc.Flush() == nil
}
