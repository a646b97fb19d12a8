// Package watchtest drives the live web view (package watch) in a real
// browser, for tests: Debian's chromium, headless, through chromedp. The
// view's own tests and the end-to-end tests in t/ share it.
package watchtest

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
)

// Browser is one headless chromium with one tab. It gathers what the page
// reported (script errors, console errors, security policy violations,
// dialogs) for Problems.
type Browser struct {
	// Ctx is the tab's context: chromedp actions run on it.
	Ctx context.Context

	mu       sync.Mutex
	problems []string
}

// Chromium returns the chromium binary. As root (CI, where .ci/deps.sh
// installs it) a missing chromium fails the test; otherwise it skips.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "chromium"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("chromium is not installed: run .ci/deps.sh (it installs the Debian package chromium)")
	}
	t.Skip("chromium is not installed and this is not root: install it with `sudo apt-get install -y chromium` to run the browser tests")
	return ""
}

// New starts a headless chromium with a fresh profile; everything it does
// is bounded by timeout. It stops when the test ends, before the cleanups
// registered earlier run (so a server the test started before it can
// close: the page's event stream is gone by then).
func New(t *testing.T, timeout time.Duration) *Browser {
	t.Helper()
	path := Chromium(t)
	profile := t.TempDir() // removed after chromium stopped: cleanups run last first
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // as root chromium does not start otherwise
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
	bctx, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(cancelTab)
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

// Open loads the view at url ("http://127.0.0.1:PORT/watch") and waits
// until its event stream is live.
func (b *Browser) Open(url string) error {
	if err := chromedp.Do(b.Ctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`#status.status-live`)),
	); err != nil {
		return fmt.Errorf("opening %s: %w; the page reported %v", url, err, b.Problems())
	}
	return nil
}

// Badge is one decision shown in a row.
type Badge struct {
	Text       string `json:"text"`
	Background string `json:"bg"` // the computed colour, "rgb(207, 34, 46)"
}

// Row is one row of the connections table as the browser shows it: the
// text of each cell, and what is not text.
type Row struct {
	Time       string  `json:"time"`
	Listener   string  `json:"listener"`
	Client     string  `json:"client"`
	Helo       string  `json:"helo"`
	TLS        string  `json:"tls"`
	User       string  `json:"user"`
	Sender     string  `json:"sender"`
	Recipients string  `json:"rcpts"` // the recipients' texts run together
	Badges     []Badge `json:"badges"`
	Result     string  `json:"result"`   // "queued ID" then the reply, run together
	Hidden     bool    `json:"hidden"`   // a filter hides it
	Elements   int     `json:"elements"` // elements in the client-given cells beside the view's own (0 unless text became markup)
}

// readRows reads the table: each cell's text, each badge's text and
// computed background colour.
const readRows = `[...document.querySelectorAll('#rows tr')].map(tr => {
	const c = [...tr.cells].map(td => td.textContent);
	const own = tr.querySelectorAll('span.badge, span.result, span.reply, td.rcpts > div').length;
	return {
		time: c[0], listener: c[1], client: c[2], helo: c[3], tls: c[4], user: c[5], sender: c[6], rcpts: c[7], result: c[9],
		badges: [...tr.querySelectorAll('.badge')].map(b => ({text: b.textContent, bg: getComputedStyle(b).backgroundColor})),
		hidden: getComputedStyle(tr).display === 'none',
		elements: tr.querySelectorAll('*').length - tr.cells.length - own,
	};
})`

// Rows returns the rows shown now, newest first.
func (b *Browser) Rows() ([]Row, error) {
	return chromedp.Run(b.Ctx, chromedp.Evaluate[[]Row](readRows))
}

// WaitRows waits until the page holds n rows or more whose result is
// final (not "in progress"), and returns all rows.
func (b *Browser) WaitRows(n int) ([]Row, error) {
	cond := fmt.Sprintf(`[...document.querySelectorAll('#rows tr')].filter(tr => tr.dataset.result && tr.dataset.result !== 'open').length >= %d`, n)
	if _, err := chromedp.Run(b.Ctx, chromedp.Poll[bool](cond)); err != nil {
		rows, _ := b.Rows()
		return rows, fmt.Errorf("waiting for %d finished rows: %w; rows: %+v; the page reported %v", n, err, rows, b.Problems())
	}
	return b.Rows()
}

// Visible returns the clients of the rows a filter leaves shown, sorted.
func (b *Browser) Visible() ([]string, error) {
	return chromedp.Run(b.Ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#rows tr')].filter(tr => getComputedStyle(tr).display !== 'none').map(tr => tr.cells[2].textContent).sort()`))
}

// Choose picks an option of a select, as a user would: the change event
// fires.
func Choose(id, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event('change')) })()`, id, value))
}

// ClearInput empties a text field, as a user would: the input event fires.
func ClearInput(id string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = ''; s.dispatchEvent(new Event('input')) })()`, id))
}
