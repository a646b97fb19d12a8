package admin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/monitor/admin"
)

// get asks h for path with the request changed by prep; it returns the
// status, the body and the WWW-Authenticate header.
func get(t *testing.T, h http.Handler, path string, prep func(*http.Request)) (int, string, string) {
	t.Helper()
	r := httptest.NewRequest("GET", path, nil)
	if prep != nil {
		prep(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b), w.Header().Get("WWW-Authenticate")
}

func TestBasicAuth(t *testing.T) {
	h := admin.Handler(admin.Config{Recorder: monitor.NewRecorder(), Bus: monitor.NewBus(10),
		State: func() string { return "ready" }, User: "ops", Password: "pw"})
	for _, c := range []struct {
		name       string
		path       string
		prep       func(*http.Request)
		code       int
		body       string
		challenged bool
	}{
		{"no credentials", "/healthz", nil, 401, "401 unauthorized", true},
		{"wrong password", "/healthz", func(r *http.Request) { r.SetBasicAuth("ops", "nope") }, 401, "401 unauthorized", true},
		{"wrong user", "/healthz", func(r *http.Request) { r.SetBasicAuth("root", "pw") }, 401, "401 unauthorized", true},
		{"a token, none configured", "/healthz?token=pw", nil, 401, "401 unauthorized", true},
		{"right", "/healthz", func(r *http.Request) { r.SetBasicAuth("ops", "pw") }, 200, "ready\n", false},
		{"metrics", "/metrics", func(r *http.Request) { r.SetBasicAuth("ops", "pw") }, 200, "# HELP sluice_connections_open", false},
		{"the page needs it", "/watch", nil, 401, "401 unauthorized", true},
		{"its script does not", "/watch/watch.js", nil, 200, "", false},
		{"its feed does", "/watch/stats", nil, 401, "401 unauthorized", true},
	} {
		code, body, challenge := get(t, h, c.path, c.prep)
		if code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s: GET %s = %d %.80q, want %d with %q", c.name, c.path, code, body, c.code, c.body)
		}
		if c.challenged != (challenge == `Basic realm="sluice"`) {
			t.Errorf("%s: WWW-Authenticate %q, want a Basic challenge: %v", c.name, challenge, c.challenged)
		}
	}
}

func TestToken(t *testing.T) {
	h := admin.Handler(admin.Config{Recorder: monitor.NewRecorder(), Token: "s3cret"})
	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	for _, c := range []struct {
		path string
		prep func(*http.Request)
		code int
	}{
		{"/healthz", nil, 401},
		{"/healthz", bearer("s3cre"), 401},
		{"/healthz", bearer("s3cret"), 200},
		{"/healthz?token=s3cret", nil, 200},
		{"/healthz?token=S3CRET", nil, 401},
	} {
		code, body, challenge := get(t, h, c.path, c.prep)
		if code != c.code {
			t.Errorf("GET %s: %d %q, want %d", c.path, code, body, c.code)
		}
		if challenge != "" {
			t.Errorf("GET %s: a basic-auth challenge %q without a user configured", c.path, challenge)
		}
	}
}

func TestHealthzFollowsTheServerState(t *testing.T) {
	state := "starting"
	h := admin.Handler(admin.Config{State: func() string { return state }})
	for _, c := range []struct {
		state string
		code  int
	}{{"starting", 503}, {"ready", 200}, {"draining", 503}} {
		state = c.state
		if code, body, _ := get(t, h, "/healthz", nil); code != c.code || body != c.state+"\n" {
			t.Errorf("state %s: /healthz %d %q, want %d %q", c.state, code, body, c.code, c.state+"\n")
		}
	}
}

// A duration exactly at a bucket's bound counts in that bound's "le", as
// Prometheus defines le (less than or equal); one nanosecond more does not.
func TestMetricsBucketsIncludeTheirBound(t *testing.T) {
	r := monitor.NewRecorder()
	h := r.Histogram("rcpt", "")
	h.Observe(1024 * time.Nanosecond) // the first bound, 1.024 µs
	h.Observe(1025 * time.Nanosecond)
	h.Observe(4096 * time.Nanosecond) // the second, 4.096 µs
	code, body, _ := get(t, admin.Handler(admin.Config{Recorder: r}), "/metrics", nil)
	if code != 200 {
		t.Fatalf("GET /metrics = %d\n%s", code, body)
	}
	for _, want := range []string{
		`sluice_hook_duration_seconds_bucket{hook="rcpt",le="1.024e-06"} 1` + "\n",
		`sluice_hook_duration_seconds_bucket{hook="rcpt",le="4.096e-06"} 3` + "\n",
		`sluice_hook_duration_seconds_count{hook="rcpt"} 3` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}
