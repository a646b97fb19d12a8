package watch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/sluice-mta/sluice/monitor"
)

// Browser drives Debian's chromium, headless, through chromedp. It
// gathers what the page reported (script errors, policy violations, dialogs)
// for Problems.
type Browser struct {
	Ctx context.Context

	mu       sync.Mutex
	problems []string
}

// chromiumPath returns the chromium binary. As root (CI, where .ci/deps.sh
// installs it) a missing chromium fails the test; otherwise it skips.
func chromiumPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "chromium"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("chromium is not installed: run .ci/deps.sh (it installs the Debian package chromium)")
	}
	t.Skip("chromium is not installed and this is not root: install it with `sudo apt-get install -y chromium` to run the browser test")
	return ""
}

// newBrowser starts a headless chromium with a fresh profile; everything it
// does is bounded by timeout. It stops at the end of the test.
func newBrowser(t *testing.T, timeout time.Duration) *Browser {
	t.Helper()
	path := chromiumPath(t)
	profile := t.TempDir() // removed after chromium stopped (cleanups run last first)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // as root chromium refuses to start otherwise
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.WindowSize(1400, 900),
	)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	b := &Browser{Ctx: bctx}
	// Start chromium and open the tab first: Listen needs the tab.
	if _, err := chromedp.Run(bctx, chromedp.Title()); err != nil {
		t.Fatalf("starting chromium (%s): %v", path, err)
	}
	err := chromedp.Listen(bctx, func(ev any) {
		var p string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			p = "script error: " + ev.ExceptionDetails.Text
			if ev.ExceptionDetails.Exception != nil {
				p += " " + ev.ExceptionDetails.Exception.Description
			}
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError && !strings.HasSuffix(ev.Entry.URL, "/favicon.ico") {
				p = fmt.Sprintf("console %s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening:
			p = fmt.Sprintf("the page opened a %s dialog: %q", ev.Type, ev.Message)
			go chromedp.Call(bctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
		if p != "" {
			b.mu.Lock()
			b.problems = append(b.problems, p)
			b.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("listening to chromium's tab: %v", err)
	}
	return b
}

// Problems returns what went wrong in the page so far.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// shownRow is a row of the connections table as the browser shows it.
type shownRow struct {
	Hidden  bool        `json:"hidden"`
	Cells   []string    `json:"cells"`
	Badges  []shownBadg `json:"badges"`
	Result  string      `json:"result"`
	ImgTags int         `json:"imgs"`
}

type shownBadg struct {
	Text       string `json:"text"`
	Background string `json:"bg"`
}

// readRows is the script that reads the table: each cell's text, each
// badge's text and computed background colour.
const readRows = `[...document.querySelectorAll('#rows tr')].map(tr => ({
	hidden: tr.hidden || getComputedStyle(tr).display === 'none',
	cells: [...tr.cells].map(td => td.textContent),
	badges: [...tr.querySelectorAll('.badge')].map(b => ({text: b.textContent, bg: getComputedStyle(b).backgroundColor})),
	result: tr.cells[9].textContent,
	imgs: tr.querySelectorAll('img').length,
}))`

// Columns of the connections table.
const (
	colTime = iota
	colListener
	colClient
	colHelo
	colTLS
	colUser
	colSender
	colRcpts
	colDecisions
	colResult
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
	{"192.0.2.77:40003", "mx", "", "", "", "", "", "earlytalker DENYSOFT_DISCONNECT", orange, "deferred421 4.7.0 talked before the greeting"},
}

// rowsByClient waits until the table has n rows and returns them by client.
func waitRows(t *testing.T, b *Browser, n int) map[string]shownRow {
	t.Helper()
	if _, err := chromedp.Run(b.Ctx, chromedp.Poll[bool](fmt.Sprintf("document.querySelectorAll('#rows tr').length >= %d", n))); err != nil {
		t.Fatalf("the page did not show %d rows: %v; problems: %v", n, err, b.Problems())
	}
	rows, err := chromedp.Run(b.Ctx, chromedp.Evaluate[[]shownRow](readRows))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != n {
		t.Fatalf("the page shows %d rows, want %d: %+v", len(rows), n, rows)
	}
	by := map[string]shownRow{}
	for _, r := range rows {
		by[r.Cells[colClient]] = r
	}
	return by
}

func checkRows(t *testing.T, by map[string]shownRow) {
	t.Helper()
	for _, w := range wantRows {
		r, ok := by[w.client]
		if !ok {
			t.Errorf("no row for %s", w.client)
			continue
		}
		got := []string{r.Cells[colListener], r.Cells[colHelo], r.Cells[colTLS], r.Cells[colUser], r.Cells[colSender], r.Cells[colRcpts], r.Cells[colResult]}
		want := []string{w.listener, w.helo, w.tls, w.user, w.sender, w.rcpts, w.result}
		for i, name := range []string{"listener", "HELO", "TLS", "user", "sender", "recipients", "result"} {
			if got[i] != want[i] {
				t.Errorf("%s: %s is %q, want %q", w.client, name, got[i], want[i])
			}
		}
		if len(r.Badges) != 1 || r.Badges[0].Text != w.badge || r.Badges[0].Background != w.colour {
			t.Errorf("%s: decisions %+v, want one badge %q in %s", w.client, r.Badges, w.badge, w.colour)
		}
		if r.ImgTags != 0 {
			t.Errorf("%s: the row holds %d img elements: client text became markup", w.client, r.ImgTags)
		}
	}
}

// visible returns the clients of the rows shown.
func visible(t *testing.T, b *Browser) []string {
	t.Helper()
	clients, err := chromedp.Run(b.Ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#rows tr')].filter(tr => getComputedStyle(tr).display !== 'none').map(tr => tr.cells[2].textContent).sort()`))
	if err != nil {
		t.Fatal(err)
	}
	return clients
}

// choose picks an option of a select as a user would (the change event
// fires).
func choose(id, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event('change')) })()`, id, value))
}

// clearInput empties a text field as a user would (the input event fires).
func clearInput(id string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = ''; s.dispatchEvent(new Event('input')) })()`, id))
}

func TestBrowserShowsConnectionsLive(t *testing.T) {
	bus := monitor.NewBus(1000)
	stats := func() monitor.Snapshot {
		return monitor.Snapshot{ConnectionsTotal: 5, Transactions: 3, Plugins: []monitor.Latency{
			{Name: "rcptok/rcpt", Count: 3, Mean: 300 * time.Microsecond, P50: 250 * time.Microsecond, P99: 900 * time.Microsecond, Max: 1200 * time.Microsecond},
			{Name: "greylist/rcpt", Count: 1, Mean: 2 * time.Millisecond, P50: 2 * time.Millisecond, P99: 2 * time.Millisecond, Max: 2 * time.Millisecond},
		}}
	}
	srv := newServer(t, Handler(bus, stats))
	b := newBrowser(t, 60*time.Second) // stops before srv, whose streams it holds open

	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	b.Ctx = ctx
	if err := chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/watch"),
		chromedp.WaitVisible(chromedp.CSS(`#status.status-live`)),
	); err != nil {
		t.Fatalf("opening %s/watch: %v; problems: %v", srv.URL, err, b.Problems())
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
	if err := chromedp.Do(ctx, clearInput("f-client"), choose("f-listener", "submission")); err != nil {
		t.Fatal(err)
	}
	if got := visible(t, b); fmt.Sprint(got) != "[203.0.113.5:40001]" {
		t.Errorf("listener filter submission shows %v", got)
	}
	if err := chromedp.Do(ctx, choose("f-listener", ""), choose("f-result", "refused")); err != nil {
		t.Fatal(err)
	}
	if got := visible(t, b); fmt.Sprint(got) != "[192.0.2.99:40002 198.51.100.7:40000]" {
		t.Errorf("result filter refused shows %v", got)
	}
	counter, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("shown")))
	if err != nil {
		t.Fatal(err)
	}
	if counter != "2 of 5 shown" {
		t.Errorf("the counter says %q, want \"2 of 5 shown\"", counter)
	}
	if err := chromedp.Do(ctx, choose("f-result", "")); err != nil {
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
