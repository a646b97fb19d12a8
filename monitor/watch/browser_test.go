package watch

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/monitor/watch/watchtest"
)

// Colours of watch.css, as getComputedStyle gives them.
const (
	green  = "rgb(26, 127, 55)"
	amber  = "rgb(212, 167, 44)"
	orange = "rgb(232, 118, 10)"
	red    = "rgb(207, 34, 46)"
)

const hostileHelo = `<img src=x onerror=alert(1)>`

// publishSession publishes what the server would for the connections of
// the browser test.
func publishSessions(bus *monitor.Bus) {
	p := bus.Publish
	// Accepted on mx.
	c := monitor.Event{Listener: "mx", Conn: "c1", Remote: "192.0.2.10:50001"}
	ev := func(base monitor.Event, f func(*monitor.Event)) monitor.Event { f(&base); return base }
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Helo = monitor.KindHelo, "mail.example.org" }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.TLS = monitor.KindTLS, "TLS1.3" }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Tx, e.Sender = monitor.KindMail, "t1", "alice@example.org" }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Hook, e.Plugin, e.Code, e.Rcpt = monitor.KindHook, "t1", "rcpt", "rcptok", "OK", "bob@example.test"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Tx, e.Rcpt = monitor.KindRcpt, "t1", "bob@example.test" }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Plugin, e.QueueID = monitor.KindQueued, "t1", "maildir", "4F2A1C"
	}))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Result, e.Reply, e.Rcpts = monitor.KindTxEnd, "t1", monitor.ResultAccepted, "250 2.0.0 queued as 4F2A1C", []string{"bob@example.test"}
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))

	// Refused on mx, from a client with a hostile HELO.
	c = monitor.Event{Listener: "mx", Conn: "c2", Remote: "198.51.100.7:40000"}
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Helo = monitor.KindHelo, hostileHelo }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Tx, e.Sender = monitor.KindMail, "t1", "spam@example.net" }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Hook, e.Plugin, e.Code, e.Rcpt, e.Reply = monitor.KindHook, "t1", "rcpt", "rcptok", "DENY", "nobody@example.test", "550 5.7.1 no such user here"
	}))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Result, e.Reply = monitor.KindTxEnd, "t1", monitor.ResultRefused, "550 5.7.1 no such user here"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))

	// Deferred by greylisting on submission.
	c = monitor.Event{Listener: "submission", Conn: "c3", Remote: "203.0.113.5:40001"}
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Helo = monitor.KindHelo, "relay.example.com" }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.User = monitor.KindAuth, "carol" }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Tx, e.Sender = monitor.KindMail, "t1", "carol@example.com" }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Hook, e.Plugin, e.Code, e.Rcpt, e.Reply = monitor.KindHook, "t1", "rcpt", "greylist", "DENYSOFT", "dave@example.test", "451 4.7.1 greylisted, try again later"
	}))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Result, e.Reply = monitor.KindTxEnd, "t1", monitor.ResultDeferred, "451 4.7.1 greylisted, try again later"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))

	// Refused at connect, before any transaction.
	c = monitor.Event{Listener: "mx", Conn: "c4", Remote: "192.0.2.99:40002"}
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Hook, e.Plugin, e.Code, e.Reply = monitor.KindHook, "connect", "dnsbl", "DENY_DISCONNECT", "554 5.7.1 listed at zen.example.net"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))

	// Every recipient refused, and the client left: the transaction ends
	// refused, with the last RCPT's reply.
	c = monitor.Event{Listener: "mx", Conn: "c6", Remote: "192.0.2.66:40004"}
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Helo = monitor.KindHelo, "stranger.example" }))
	p(ev(c, func(e *monitor.Event) { e.Kind, e.Tx, e.Sender = monitor.KindMail, "t1", "mallory@example.net" }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Hook, e.Plugin, e.Code, e.Rcpt, e.Reply = monitor.KindHook, "t1", "rcpt", "rcptok", "DENY", "dave@elsewhere.example", "550 5.7.1 relaying denied"
	}))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Tx, e.Result, e.Plugin, e.Reply = monitor.KindTxEnd, "t1", monitor.ResultRefused, "rcptok", "550 5.7.1 relaying denied"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))

	// Deferred at connect and disconnected.
	c = monitor.Event{Listener: "mx", Conn: "c5", Remote: "192.0.2.77:40003"}
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindConnect }))
	p(ev(c, func(e *monitor.Event) {
		e.Kind, e.Hook, e.Plugin, e.Code, e.Reply = monitor.KindHook, "connect", "earlytalker", "DENYSOFT_DISCONNECT", "421 4.7.0 talked before the greeting"
	}))
	p(ev(c, func(e *monitor.Event) { e.Kind = monitor.KindDisconnect }))
}

// wantRow is what one connection's row must show.
type wantRow struct {
	client, listener, helo, tls, user, sender, rcpts string
	badge, colour                                    string
	result                                           string
}

var wantRows = []wantRow{
	{"192.0.2.10:50001", "mx", "mail.example.org", "TLS1.3", "", "alice@example.org", "bob@example.test", "rcptok OK", green, "queued 4F2A1C250 2.0.0 queued as 4F2A1C"},
	{"198.51.100.7:40000", "mx", hostileHelo, "", "", "spam@example.net", "nobody@example.test", "rcptok DENY", red, "refused550 5.7.1 no such user here"},
	{"203.0.113.5:40001", "submission", "relay.example.com", "", "carol", "carol@example.com", "dave@example.test", "greylist DENYSOFT", amber, "deferred451 4.7.1 greylisted, try again later"},
	{"192.0.2.99:40002", "mx", "", "", "", "", "", "dnsbl DENY_DISCONNECT", red, "refused554 5.7.1 listed at zen.example.net"},
	{"192.0.2.66:40004", "mx", "stranger.example", "", "", "mallory@example.net", "dave@elsewhere.example", "rcptok DENY", red, "refused550 5.7.1 relaying denied"},
	{"192.0.2.77:40003", "mx", "", "", "", "", "", "earlytalker DENYSOFT_DISCONNECT", orange, "deferred421 4.7.0 talked before the greeting"},
}

// waitRows waits until the page shows n finished rows and returns them by
// client.
func waitRows(t *testing.T, b *watchtest.Browser, n int) map[string]watchtest.Row {
	t.Helper()
	rows, err := b.WaitRows(n)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != n {
		t.Fatalf("the page shows %d rows, want %d: %+v", len(rows), n, rows)
	}
	by := map[string]watchtest.Row{}
	for _, r := range rows {
		by[r.Client] = r
	}
	return by
}

func checkRows(t *testing.T, by map[string]watchtest.Row) {
	t.Helper()
	for _, w := range wantRows {
		r, ok := by[w.client]
		if !ok {
			t.Errorf("no row for %s", w.client)
			continue
		}
		got := []string{r.Listener, r.Helo, r.TLS, r.User, r.Sender, r.Recipients, r.Result}
		want := []string{w.listener, w.helo, w.tls, w.user, w.sender, w.rcpts, w.result}
		for i, name := range []string{"listener", "HELO", "TLS", "user", "sender", "recipients", "result"} {
			if got[i] != want[i] {
				t.Errorf("%s: %s is %q, want %q", w.client, name, got[i], want[i])
			}
		}
		if len(r.Badges) != 1 || r.Badges[0].Text != w.badge || r.Badges[0].Background != w.colour {
			t.Errorf("%s: decisions %+v, want one badge %q in %s", w.client, r.Badges, w.badge, w.colour)
		}
		if r.Elements != 0 {
			t.Errorf("%s: the row holds %d elements of client text: client text became markup", w.client, r.Elements)
		}
	}
}

// visible returns the clients of the rows shown.
func visible(t *testing.T, b *watchtest.Browser) []string {
	t.Helper()
	clients, err := b.Visible()
	if err != nil {
		t.Fatal(err)
	}
	return clients
}

func TestBrowserShowsConnectionsLive(t *testing.T) {
	bus := monitor.NewBus(1000)
	stats := func() monitor.Snapshot {
		return monitor.Snapshot{ConnectionsTotal: 6, Transactions: 3, Plugins: []monitor.Latency{
			{Name: "rcptok/rcpt", Count: 3, Mean: 300 * time.Microsecond, P50: 250 * time.Microsecond, P99: 900 * time.Microsecond, Max: 1200 * time.Microsecond},
			{Name: "greylist/rcpt", Count: 1, Mean: 2 * time.Millisecond, P50: 2 * time.Millisecond, P99: 2 * time.Millisecond, Max: 2 * time.Millisecond},
		}}
	}
	srv := newServer(t, Handler(bus, stats))
	b := watchtest.New(t, 60*time.Second) // stops before srv, whose streams it holds open

	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	b.Ctx = ctx
	if err := b.Open(srv.URL + "/watch"); err != nil {
		t.Fatal(err)
	}

	// The events come after the page opened: the rows are built live.
	publishSessions(bus)
	checkRows(t, waitRows(t, b, len(wantRows)))

	// The latency table, read from /watch/stats.
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelectorAll('#latency-rows tr').length === 2`)); err != nil {
		t.Fatalf("the latency table did not fill: %v", err)
	}
	latency, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](`[...document.querySelectorAll('#latency-rows tr')].map(tr => [...tr.cells].map(td => td.textContent))`))
	if err != nil {
		t.Fatal(err)
	}
	wantLatency := [][]string{
		{"greylist/rcpt", "1", "2.00 ms", "2.00 ms", "2.00 ms", "2.00 ms"},
		{"rcptok/rcpt", "3", "300.0 µs", "250.0 µs", "900.0 µs", "1.20 ms"},
	}
	if fmt.Sprint(latency) != fmt.Sprint(wantLatency) {
		t.Errorf("latency table\n%q\nwant\n%q", latency, wantLatency)
	}

	// Filters: client IP (typed), listener, result.
	all := visible(t, b)
	if len(all) != len(wantRows) {
		t.Fatalf("before filtering %d rows are shown: %v", len(all), all)
	}
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("f-client"), "198.51")); err != nil {
		t.Fatal(err)
	}
	if got := visible(t, b); fmt.Sprint(got) != "[198.51.100.7:40000]" {
		t.Errorf("client filter 198.51 shows %v", got)
	}
	if err := chromedp.Do(ctx, watchtest.ClearInput("f-client"), watchtest.Choose("f-listener", "submission")); err != nil {
		t.Fatal(err)
	}
	if got := visible(t, b); fmt.Sprint(got) != "[203.0.113.5:40001]" {
		t.Errorf("listener filter submission shows %v", got)
	}
	if err := chromedp.Do(ctx, watchtest.Choose("f-listener", ""), watchtest.Choose("f-result", "refused")); err != nil {
		t.Fatal(err)
	}
	if got := visible(t, b); fmt.Sprint(got) != "[192.0.2.66:40004 192.0.2.99:40002 198.51.100.7:40000]" {
		t.Errorf("result filter refused shows %v", got)
	}
	counter, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("shown")))
	if err != nil {
		t.Fatal(err)
	}
	if counter != "3 of 6 shown" {
		t.Errorf("the counter says %q, want \"3 of 6 shown\"", counter)
	}
	if err := chromedp.Do(ctx, watchtest.Choose("f-result", "")); err != nil {
		t.Fatal(err)
	}

	if path := os.Getenv("WATCH_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot in %s", path)
	}

	// A page opened late (here: reloaded) rebuilds the same rows from the
	// kept events.
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`#status.status-live`))); err != nil {
		t.Fatal(err)
	}
	checkRows(t, waitRows(t, b, len(wantRows)))

	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the page reported problems:\n%s", strings.Join(p, "\n"))
	}
}
