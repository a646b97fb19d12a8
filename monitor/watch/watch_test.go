package watch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/monitor"
)

// sse is one server-sent event as the stream framed it.
type sse struct {
	id   string
	data string
}

// sseReader reads the events of one stream, comments aside.
type sseReader struct {
	t        *testing.T
	sc       *bufio.Scanner
	comments []string
}

func newSSEReader(t *testing.T, r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &sseReader{t: t, sc: sc}
}

// next returns the next event that has data.
func (r *sseReader) next() sse {
	r.t.Helper()
	var e sse
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case line == "":
			if e.data != "" {
				return e
			}
			e = sse{}
		case strings.HasPrefix(line, ":"):
			r.comments = append(r.comments, line)
		case strings.HasPrefix(line, "id: "):
			e.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			if e.data != "" {
				r.t.Fatalf("event %s has two data lines: %q and %q", e.id, e.data, line)
			}
			e.data = strings.TrimPrefix(line, "data: ")
		case strings.HasPrefix(line, "retry: "):
		default:
			r.t.Fatalf("the stream has a line that is no SSE field: %q", line)
		}
	}
	r.t.Fatalf("the stream ended before the next event: %v", r.sc.Err())
	return e
}

// nextEvent returns the next event decoded, and checks its id is its Seq.
func (r *sseReader) nextEvent() monitor.Event {
	r.t.Helper()
	s := r.next()
	var e monitor.Event
	if err := json.Unmarshal([]byte(s.data), &e); err != nil {
		r.t.Fatalf("event %s: data is not an Event as JSON: %v: %s", s.id, err, s.data)
	}
	if s.id != strconv.FormatUint(e.Seq, 10) {
		r.t.Fatalf("event id %q, want its seq %d", s.id, e.Seq)
	}
	return e
}

// openStream opens /watch/events with the given Last-Event-ID ("" for
// none); the stream ends when the test does.
func openStream(t *testing.T, srv *httptest.Server, lastID string) (*http.Response, *sseReader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/watch/events", nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET /watch/events: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("GET /watch/events: status %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("GET /watch/events: Content-Type %q, want text/event-stream", ct)
	}
	return resp, newSSEReader(t, resp.Body)
}

// newServer serves h until the test and its cleanups (the streams it
// opened) are done.
func newServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func publishN(bus *monitor.Bus, from, to int) {
	for i := from; i <= to; i++ {
		bus.Publish(monitor.Event{Kind: monitor.KindConnect, Listener: "mx", Conn: fmt.Sprintf("c%d", i), Remote: fmt.Sprintf("192.0.2.%d:4000", i)})
	}
}

func TestEventsKeptThenLiveInOrder(t *testing.T) {
	bus := monitor.NewBus(100)
	srv := newServer(t, Handler(bus, nil))

	publishN(bus, 1, 3)
	_, r := openStream(t, srv, "")
	for want := uint64(1); want <= 3; want++ {
		if e := r.nextEvent(); e.Seq != want || e.Conn != fmt.Sprintf("c%d", want) || e.Remote != fmt.Sprintf("192.0.2.%d:4000", want) {
			t.Fatalf("kept event %d: got %+v", want, e)
		}
	}
	// Live ones follow, flushed one by one: each arrives before the next
	// is published.
	for i := 4; i <= 6; i++ {
		bus.Publish(monitor.Event{Kind: monitor.KindHelo, Conn: "c1", Helo: fmt.Sprintf("host%d.example", i)})
		e := r.nextEvent()
		if e.Seq != uint64(i) || e.Kind != monitor.KindHelo || e.Helo != fmt.Sprintf("host%d.example", i) {
			t.Fatalf("live event %d: got %+v", i, e)
		}
	}
}

func TestEventsResumeAfterLastEventID(t *testing.T) {
	bus := monitor.NewBus(100)
	srv := newServer(t, Handler(bus, nil))
	publishN(bus, 1, 5)

	_, r := openStream(t, srv, "3")
	if e := r.nextEvent(); e.Seq != 4 {
		t.Fatalf("after Last-Event-ID 3 the first event is %d, want 4", e.Seq)
	}
	if e := r.nextEvent(); e.Seq != 5 {
		t.Fatalf("then %d, want 5", e.Seq)
	}
	bus.Publish(monitor.Event{Kind: monitor.KindDisconnect, Conn: "c1"})
	if e := r.nextEvent(); e.Seq != 6 || e.Kind != monitor.KindDisconnect {
		t.Fatalf("then %+v, want the live disconnect 6", e)
	}

	// A Last-Event-ID beyond the newest is from before a restart: the
	// stream starts again from the oldest kept.
	_, r = openStream(t, srv, "999")
	if e := r.nextEvent(); e.Seq != 1 {
		t.Fatalf("after Last-Event-ID 999 (a restarted server) the first event is %d, want 1", e.Seq)
	}
}

func TestEventsKeepAlive(t *testing.T) {
	defer func(d time.Duration) { keepAlive = d }(keepAlive)
	keepAlive = 20 * time.Millisecond
	bus := monitor.NewBus(10)
	srv := newServer(t, Handler(bus, nil))

	_, r := openStream(t, srv, "")
	// Two comments, then an event: the stream stays usable.
	for len(r.comments) < 2 {
		if !r.sc.Scan() {
			t.Fatalf("the stream ended: %v", r.sc.Err())
		}
		if line := r.sc.Text(); strings.HasPrefix(line, ":") {
			if line != ": keep-alive" {
				t.Fatalf("comment %q, want \": keep-alive\"", line)
			}
			r.comments = append(r.comments, line)
		}
	}
	bus.Publish(monitor.Event{Kind: monitor.KindConnect, Conn: "c1"})
	if e := r.nextEvent(); e.Seq != 1 {
		t.Fatalf("after keep-alives got %+v, want event 1", e)
	}
}

// collect reads a stream's events into a channel until it ends.
func collect(body io.Reader) <-chan monitor.Event {
	out := make(chan monitor.Event, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e monitor.Event
				if json.Unmarshal([]byte(data), &e) == nil {
					out <- e
				}
			}
		}
	}()
	return out
}

// A client that stops reading holds up neither Publish nor other pages: it
// loses events, and sees the gap in the ids when it reads again.
func TestSlowClientDoesNotBlockPublish(t *testing.T) {
	bus := monitor.NewBus(100)
	srv := newServer(t, Handler(bus, nil))

	slow, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /watch/events HTTP/1.1\r\nHost: watch\r\n\r\n")
	// Its stream is subscribed once the response starts (the retry field
	// is written after Subscribe).
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil {
		t.Fatalf("the slow client's stream did not start: %v", err)
	}
	slow.SetReadDeadline(time.Time{})

	fastResp, _ := openStream(t, srv, "")
	fast := collect(fastResp.Body)

	// Far more than the socket buffers and the subscription hold: 8 KiB
	// per event, 40 MiB in all.
	const total = 5000
	big := strings.Repeat("x", 8<<10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range total {
			bus.Publish(monitor.Event{Kind: monitor.KindHook, Conn: "c1", Reply: big})
		}
	}()
	fastGot := 0
	var fastPrev uint64
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case e, ok := <-fast:
			if !ok {
				t.Fatal("the reading client's stream ended")
			}
			if e.Seq <= fastPrev {
				t.Fatalf("the reading client got %d after %d", e.Seq, fastPrev)
			}
			fastPrev = e.Seq
			fastGot++
		case <-time.After(20 * time.Second):
			t.Fatal("Publish blocked on a client that does not read")
		}
	}

	// The slow one reads again. Both streams then get a marker published
	// after the flood (published again until it arrives: the streams
	// first drain what they hold).
	slowEvents := collect(resp.Body)
	var slowPrev uint64
	slowGot := 0
	var fastMarker, slowMarker bool
	deadline := time.After(30 * time.Second)
	for !fastMarker || !slowMarker {
		bus.Publish(monitor.Event{Kind: monitor.KindDisconnect, Conn: "marker"})
		tick := time.After(100 * time.Millisecond)
	drain:
		for {
			select {
			case e, ok := <-fast:
				if !ok {
					t.Fatal("the reading client's stream ended")
				}
				if e.Seq <= fastPrev {
					t.Fatalf("the reading client got %d after %d", e.Seq, fastPrev)
				}
				fastPrev = e.Seq
				fastMarker = fastMarker || e.Conn == "marker"
				if e.Seq <= total {
					fastGot++
				}
			case e, ok := <-slowEvents:
				if !ok {
					t.Fatal("the slow client's stream ended")
				}
				if e.Seq <= slowPrev {
					t.Fatalf("the slow client got %d after %d", e.Seq, slowPrev)
				}
				slowPrev = e.Seq
				slowMarker = slowMarker || e.Conn == "marker"
				if e.Seq <= total {
					slowGot++
				}
			case <-tick:
				break drain
			case <-deadline:
				t.Fatalf("a marker published after the flood did not reach both clients (reading: %v, slow: %v)", fastMarker, slowMarker)
			}
		}
	}
	if slowGot >= total {
		t.Fatalf("the slow client got all %d events: the test did not make it fall behind", total)
	}
	t.Logf("of %d events the slow client got %d, the reading one %d", total, slowGot, fastGot)
}

// The stream's handler returns when the client goes, and so unsubscribes.
func TestEventsEndWhenClientGoes(t *testing.T) {
	bus := monitor.NewBus(10)
	returned := make(chan struct{}, 1)
	h := Handler(bus, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.URL.Path == "/watch/events" {
			returned <- struct{}{}
		}
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/watch/events", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	bus.Publish(monitor.Event{Kind: monitor.KindConnect, Conn: "c1"})
	if e := newSSEReader(t, resp.Body).nextEvent(); e.Seq != 1 {
		t.Fatalf("got %+v", e)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's handler still runs after its client went")
	}
}

// What a client sends cannot break the stream's framing: one event stays
// one data line, and markup arrives as JSON text, not as markup.
func TestEventsEscapeClientText(t *testing.T) {
	bus := monitor.NewBus(10)
	srv := newServer(t, Handler(bus, nil))
	helo := "<img src=x onerror=alert(1)>\r\nid: 99\ndata: {\"kind\":\"forged\"}\n\n"
	bus.Publish(monitor.Event{Kind: monitor.KindHelo, Conn: "c1", Helo: helo})
	bus.Publish(monitor.Event{Kind: monitor.KindDisconnect, Conn: "c1"})

	_, r := openStream(t, srv, "")
	s := r.next()
	if strings.ContainsAny(s.data, "<>") {
		t.Errorf("data carries raw markup: %s", s.data)
	}
	var e monitor.Event
	if err := json.Unmarshal([]byte(s.data), &e); err != nil || e.Helo != helo || e.Seq != 1 {
		t.Fatalf("the HELO did not come through intact: %+v (%v)", e, err)
	}
	if e := r.nextEvent(); e.Seq != 2 || e.Kind != monitor.KindDisconnect {
		t.Fatalf("the event after the hostile HELO is %+v, want the disconnect 2", e)
	}
}

func TestStats(t *testing.T) {
	want := monitor.Snapshot{
		Started:          time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
		ConnectionsOpen:  2,
		ConnectionsTotal: 40,
		Transactions:     31,
		Messages:         []monitor.Outcome{{Result: monitor.ResultRefused, Plugin: "rcptok", Code: "550", Count: 4}},
		Plugins: []monitor.Latency{{Name: "rcptok/rcpt", Count: 31, Mean: 120 * time.Microsecond,
			P50: 100 * time.Microsecond, P99: 900 * time.Microsecond, Max: 2 * time.Millisecond}},
	}
	srv := newServer(t, Handler(monitor.NewBus(1), func() monitor.Snapshot { return want }))
	resp, err := srv.Client().Get(srv.URL + "/watch/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	body, _ := io.ReadAll(resp.Body)
	for _, field := range []string{`"name":"rcptok/rcpt"`, `"p99_ns":900000`, `"connections_total":40`} {
		if !strings.Contains(string(body), field) {
			t.Errorf("/watch/stats lacks %s: %s", field, body)
		}
	}
	var got monitor.Snapshot
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("/watch/stats gave\n%+v\nwant\n%+v", got, want)
	}

	// Without figures, an empty Snapshot, not an error.
	srv2 := newServer(t, Handler(monitor.NewBus(1), nil))
	resp2, err := srv2.Client().Get(srv2.URL + "/watch/stats")
	if err != nil {
		t.Fatal(err)
	}
	body2, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != 200 || !strings.Contains(string(body2), `"connections_total":0`) {
		t.Errorf("/watch/stats with no stats: %s %s", resp2.Status, body2)
	}
}

func TestHeadersAndAssets(t *testing.T) {
	bus := monitor.NewBus(1)
	srv := newServer(t, Handler(bus, nil))
	for _, c := range []struct{ path, contentType, contains string }{
		{"/watch", "text/html; charset=utf-8", `<script src="/watch/watch.js" defer></script>`},
		{"/watch/watch.js", "text/javascript; charset=utf-8", "new EventSource(feed(\"/watch/events\"))"},
		{"/watch/watch.css", "text/css; charset=utf-8", ".code-DENY"},
		{"/watch/stats", "application/json", "connections_open"},
	} {
		resp, err := srv.Client().Get(srv.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %s", c.path, resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); ct != c.contentType {
			t.Errorf("%s: Content-Type %q, want %q", c.path, ct, c.contentType)
		}
		if !strings.Contains(string(body), c.contains) {
			t.Errorf("%s lacks %q", c.path, c.contains)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: Content-Security-Policy %q lacks %s", c.path, csp, d)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: Content-Security-Policy allows inline code: %q", c.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no X-Content-Type-Options: nosniff", c.path)
		}
	}
	resp, err := srv.Client().Get(srv.URL + "/watch/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("/watch/nothing: %s, want 404", resp.Status)
	}
}

// The page holds no inline script or style (the policy would block it),
// and the script never parses data as markup.
func TestPageBuildsTextNotMarkup(t *testing.T) {
	html, _ := static.ReadFile("static/index.html")
	for _, re := range []string{`<script>`, `<script [^>]*>[^<]`, `<style`, `\sstyle=`, `\son[a-z]+=`, `https?://`} {
		if m := regexp.MustCompile(re).Find(html); m != nil {
			t.Errorf("index.html has %q (inline code, inline style or an outside asset)", m)
		}
	}
	js, _ := static.ReadFile("static/watch.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setTimeout(\"", "https://", "http://"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("watch.js uses %s", bad)
		}
	}
	css, _ := static.ReadFile("static/watch.css")
	if regexp.MustCompile(`url\(|@import`).Match(css) {
		t.Errorf("watch.css loads something from elsewhere")
	}
}
