// Package admin is the optional HTTP listener for the operator: /metrics
// (the Recorder's figures in Prometheus' exposition format, with the Go
// runtime's), /healthz (ready, starting or draining) and the live web view
// (/watch, package monitor/watch), behind a token or basic auth when it
// listens beyond loopback.
package admin

import (
	"crypto/subtle"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/monitor/watch"
)

// Config is what the admin listener serves and who may read it.
type Config struct {
	Recorder *monitor.Recorder
	// Bus, when set, feeds the live web view at /watch.
	Bus *monitor.Bus
	// State returns the server's state: "ready" answers /healthz with 200,
	// anything else ("starting", "draining") with 503.
	State func() string
	// Token, when set, is accepted as "Authorization: Bearer TOKEN" or
	// "?token=TOKEN".
	Token string
	// User and Password, when set, are accepted as basic auth.
	User, Password string
}

// Handler returns the admin listener's handler.
func Handler(cfg Config) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Recorder != nil {
		reg.MustRegister(&collector{r: cfg.Recorder})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := "ready"
		if cfg.State != nil {
			st = cfg.State()
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if st != "ready" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		w.Write([]byte(st + "\n"))
	})
	if cfg.Bus != nil {
		stats := func() monitor.Snapshot { return monitor.Snapshot{} }
		if cfg.Recorder != nil {
			stats = cfg.Recorder.Snapshot
		}
		h := watch.Handler(cfg.Bus, stats)
		mux.Handle("/watch", h)
		mux.Handle("/watch/", h)
	}
	return guard(cfg, mux)
}

// guard refuses a request without the token or the basic auth, when
// either is configured.
func guard(cfg Config, next http.Handler) http.Handler {
	if cfg.Token == "" && cfg.User == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if publicAsset[r.URL.Path] {
			// The web view's script and style hold no data; a browser
			// fetches them without the page's ?token=.
			next.ServeHTTP(w, r)
			return
		}
		if cfg.Token != "" {
			tok := r.URL.Query().Get("token")
			if h := r.Header.Get("Authorization"); len(h) > 7 && h[:7] == "Bearer " {
				tok = h[7:]
			}
			if tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(cfg.Token)) == 1 {
				next.ServeHTTP(w, r)
				return
			}
		}
		if cfg.User != "" {
			u, p, ok := r.BasicAuth()
			if ok && subtle.ConstantTimeCompare([]byte(u), []byte(cfg.User)) == 1 &&
				subtle.ConstantTimeCompare([]byte(p), []byte(cfg.Password)) == 1 {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="sluice"`)
		}
		http.Error(w, "401 unauthorized: give the admin token (Authorization: Bearer, or ?token=) or the user and password", http.StatusUnauthorized)
	})
}

// publicAsset lists the paths served without the token: static files
// that tell nothing about the server.
var publicAsset = map[string]bool{"/watch/watch.js": true, "/watch/watch.css": true}

// The metrics.
var (
	descConnsTotal = prometheus.NewDesc("sluice_connections_total", "Connections accepted since start.", nil, nil)
	descConnsOpen  = prometheus.NewDesc("sluice_connections_open", "Connections open now.", nil, nil)
	descTxTotal    = prometheus.NewDesc("sluice_transactions_total", "Transactions (MAIL accepted) since start.", nil, nil)
	descMessages   = prometheus.NewDesc("sluice_messages_total", "Transactions ended, by result (accepted, deferred, refused, aborted), deciding plugin and SMTP reply code.",
		[]string{"result", "plugin", "code"}, nil)
	descHook   = prometheus.NewDesc("sluice_hook_duration_seconds", "Time of a hook's run through a chain (all its plugins).", []string{"hook"}, nil)
	descPlugin = prometheus.NewDesc("sluice_plugin_duration_seconds", "Time of one plugin's call at one hook.", []string{"plugin", "hook"}, nil)
)

// bounds are the histograms' upper bounds: every fourth power of two of
// the Recorder's buckets (1.024 µs to 68.7 s, x4 apart), so each count is
// exact.
var bounds = func() []int {
	var b []int // bucket indexes whose low edge is a bound
	for i := 1; i < monitor.BucketCount; i++ {
		lo := int64(monitor.BucketLow(i))
		if lo >= 1<<10 && lo <= 1<<36 && lo&(lo-1) == 0 && (bitsOf(lo)-10)%2 == 0 {
			b = append(b, i)
		}
	}
	return b
}()

func bitsOf(v int64) int {
	n := 0
	for v > 1 {
		v >>= 1
		n++
	}
	return n
}

// collector reads the Recorder at every scrape.
type collector struct{ r *monitor.Recorder }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnsTotal, descConnsOpen, descTxTotal, descMessages, descHook, descPlugin} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Snapshot()
	ch <- prometheus.MustNewConstMetric(descConnsTotal, prometheus.CounterValue, float64(s.ConnectionsTotal))
	ch <- prometheus.MustNewConstMetric(descConnsOpen, prometheus.GaugeValue, float64(s.ConnectionsOpen))
	ch <- prometheus.MustNewConstMetric(descTxTotal, prometheus.CounterValue, float64(s.Transactions))
	for _, o := range s.Messages {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(o.Count), o.Result, o.Plugin, o.Code)
	}
	var buf []uint64
	c.r.Each(func(hook, plugin string, h *monitor.Histogram) {
		buf = h.Buckets(buf)
		_, sum := h.Count()
		cum := make(map[float64]uint64, len(bounds))
		var n uint64
		next := 0
		for i, v := range buf {
			for next < len(bounds) && bounds[next] == i {
				cum[monitor.BucketLow(i).Seconds()] = n
				next++
			}
			n += v
		}
		if plugin == "" {
			ch <- prometheus.MustNewConstHistogram(descHook, n, sum.Seconds(), cum, hook)
		} else {
			ch <- prometheus.MustNewConstHistogram(descPlugin, n, sum.Seconds(), cum, plugin, hook)
		}
	})
}
