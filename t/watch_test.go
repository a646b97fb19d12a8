package t_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sluice-mta/sluice/monitor/watch/watchtest"
)

// watchConfig is an inbound listener for example.test with the admin
// listener on, which serves the live view at /watch.
const watchConfig = `hostname = "mx.example.test"
data_dir = "./var"

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"
`

var watchAdminRe = regexp.MustCompile(`msg="admin listener" address=(\S+)`)

// The live view of a running smtpd, in a real browser, shows the mail that
// swaks sends as it happens: one message accepted for one recipient and
// refused for the other, one refused altogether.
func TestWatchShowsSwaksMailInBrowser(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "smtpd.toml", watchConfig)
	check := exec.Command(smtpdBin, "check", "-config", path)
	check.Dir = dir
	if out, err := check.CombinedOutput(); err != nil {
		if regexp.MustCompile(`unknown (table \[admin\]|key "admin)`).Match(out) {
			t.Skipf("this smtpd has no [admin] listener yet (%s)", strings.TrimSpace(string(out)))
		}
		t.Fatalf("smtpd check refused the config (%v):\n%s", err, out)
	}

	s := startSmtpdIn(t, dir, watchConfig)
	s.waitLog(`msg="admin listener"`)
	m := watchAdminRe.FindStringSubmatch(s.Log())
	if m == nil {
		t.Fatalf("the log names no admin address:\n%s", s.Log())
	}
	page := "http://" + m[1] + "/watch"
	resp, err := http.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("GET %s: %s, Content-Security-Policy %q: the admin listener does not serve the live view", page, resp.Status, resp.Header.Get("Content-Security-Policy"))
	}

	b := watchtest.New(t, 60*time.Second) // stops before smtpd, whose stream it holds
	if err := b.Open(page); err != nil {
		t.Fatal(err)
	}

	// The page is open: the rows come live.
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org",
		"--to", "bob@example.test,carol@elsewhere.example", "--data", dataFile(t))
	if code != 0 || !strings.Contains(out, "<** 5") {
		t.Fatalf("swaks to one good and one bad recipient (exit %d): want 250 at the end, a 5xx for carol:\n%s", code, out)
	}
	queued := regexp.MustCompile(`<-  250 .*(?:queued|id)[^0-9A-Z]*([0-9A-Z]{8,})`).FindStringSubmatch(out)
	out2, code2 := swaks(t, s.Addr("mx"), "--ehlo", "stranger.example", "--from", "mallory@example.net",
		"--to", "dave@elsewhere.example")
	if code2 == 0 {
		t.Fatalf("swaks to a recipient rcptok refuses succeeded:\n%s", out2)
	}
	if files := maildirFiles(t, filepath.Join(s.dir, "var/mail")); len(files) != 1 {
		t.Fatalf("the Maildir holds %d messages, want 1", len(files))
	}

	rows, err := b.WaitRows(2)
	if err != nil {
		t.Fatal(err)
	}
	byHelo := map[string]watchtest.Row{}
	for _, r := range rows {
		byHelo[r.Helo] = r
	}
	const green, red = "rgb(26, 127, 55)", "rgb(207, 34, 46)"

	ok, found := byHelo["client.example"]
	if !found {
		t.Fatalf("no row for HELO client.example: %+v", rows)
	}
	if ok.Listener != "mx" || !strings.HasPrefix(ok.Client, "127.0.0.1:") || ok.Sender != "alice@example.org" {
		t.Errorf("accepted row: listener %q, client %q, sender %q", ok.Listener, ok.Client, ok.Sender)
	}
	if !strings.HasPrefix(ok.Recipients, "bob@example.test") {
		t.Errorf("accepted row: recipients %q, want bob@example.test first", ok.Recipients)
	}
	if !strings.HasPrefix(ok.Result, "queued") {
		t.Errorf("accepted row: result %q, want queued", ok.Result)
	}
	if queued != nil && !strings.Contains(ok.Result, queued[1]) {
		t.Errorf("accepted row: result %q lacks the queue id %s the client got", ok.Result, queued[1])
	}
	if !hasBadge(ok.Badges, "rcptok DENY", red) {
		t.Errorf("accepted row: decisions %+v, want a red rcptok DENY for carol", ok.Badges)
	}
	for _, bd := range ok.Badges {
		if strings.HasSuffix(bd.Text, " OK") && bd.Background != green {
			t.Errorf("accepted row: %q is %s, want green %s", bd.Text, bd.Background, green)
		}
	}

	bad, found := byHelo["stranger.example"]
	if !found {
		t.Fatalf("no row for HELO stranger.example: %+v", rows)
	}
	if bad.Sender != "mallory@example.net" || !strings.HasPrefix(bad.Result, "refused") {
		t.Errorf("refused row: sender %q, result %q, want mallory@example.net, refused", bad.Sender, bad.Result)
	}
	if !hasBadge(bad.Badges, "rcptok DENY", red) {
		t.Errorf("refused row: decisions %+v, want a red rcptok DENY", bad.Badges)
	}
	if path := os.Getenv("WATCH_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(b.Ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(path, png, 0o644)
		}
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
	}
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the page reported problems:\n%s", strings.Join(p, "\n"))
	}
}

func hasBadge(badges []watchtest.Badge, text, colour string) bool {
	for _, b := range badges {
		if b.Text == text && b.Background == colour {
			return true
		}
	}
	return false
}
