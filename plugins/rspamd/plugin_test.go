package rspamd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/rspamd"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

const gtube = scannertest.GTUBE

const ham = "From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: lunch\r\n" +
	"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\nMessage-ID: <lunch-1@example.org>\r\n\r\nLunch tomorrow at noon?\r\n"

func harness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return scannertest.Harness(t, "rspamd", settings)
}

func send(h *hookstest.Harness, msg string) string {
	return h.Connect("192.0.2.1:40000").Send("alice@example.org", []string{"bob@example.test"}, msg).String()
}

func TestRealRspamdGTUBE(t *testing.T) {
	needRspamd(t)
	h := harness(t, `url = "`+daemon.url+`"`)
	if rep := send(h, "Subject: test\r\nFrom: a@example.org\r\n\r\n"+gtube+"\r\n"); rep != "550 5.7.1 Gtube pattern" {
		t.Errorf("reply %q, want rspamd's reject with its text", rep)
	}
	if n := len(h.Queued()); n != 0 {
		t.Errorf("%d queued", n)
	}
}

func TestRealRspamdHam(t *testing.T) {
	needRspamd(t)
	h := harness(t, `url = "`+daemon.url+`"`)
	if rep := send(h, ham); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	q := h.Queued()[0]
	got := q.WithoutReceived()
	if !strings.Contains(got, "\r\nX-Spam-Status: No, score=") || !strings.Contains(got, `action="no action"`) {
		t.Errorf("queued message lacks the status:\n%s", got)
	}
	v, ok := q.Notes["rspamd.result"].(rspamd.Verdict)
	if !ok || v.Action != "no action" || v.Required != 15 || len(v.Symbols) == 0 {
		t.Errorf("note = %+v", q.Notes["rspamd.result"])
	}
}

// replay is an rspamd stand-in answering a fixed JSON reply, recording
// the request it got, for the actions a real rspamd gives only with
// particular rules and scores.
type replay struct {
	mu      sync.Mutex
	headers http.Header
	body    string
}

func (r *replay) start(t *testing.T, answer string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.headers, r.body = req.Header.Clone(), string(b)
		r.mu.Unlock()
		if req.URL.Path != "/checkv2" || req.Method != http.MethodPost {
			http.Error(w, "bad path", 404)
			return
		}
		io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestActions(t *testing.T) {
	for _, tc := range []struct {
		name, answer, settings, reply, has string
	}{
		{"soft reject", `{"action":"soft reject","score":9,"required_score":15,"messages":{"smtp_message":"Ratelimited"}}`, "", "451 4.7.1 Ratelimited", ""},
		{"greylist", `{"action":"greylist","score":4,"required_score":15}`, "", "451 4.7.1 Try again later", ""},
		{"greylist accepted", `{"action":"greylist","score":4,"required_score":15}`, `greylist = "accept"`, "250 ", `X-Spam-Status: No, score=4.00 required=15.00 action="greylist"`},
		{"add header", `{"action":"add header","score":7,"required_score":15}`, "", "250 ", "\r\nX-Spam: Yes\r\n"},
		{"rewrite subject", `{"action":"rewrite subject","score":8,"required_score":15,"subject":"***SPAM*** lunch"}`, "", "250 ", "\r\nSubject: ***SPAM*** lunch\r\n"},
		{"rewrite subject, template", `{"action":"rewrite subject","score":8,"required_score":15}`, `subject = "[spam?] %s"`, "250 ", "\r\nSubject: [spam?] lunch\r\n"},
		{"reject without text", `{"action":"reject","score":20,"required_score":15}`, "", "550 5.7.1 Spam message rejected", ""},
		{"add header after milter removals", `{"action":"add header","score":7,"required_score":15,"milter":{"remove_headers":{"X-Spam":0}}}`, "", "250 ", "\r\nX-Spam: Yes\r\n"},
		{"milter headers", `{"action":"no action","score":1,"required_score":15,"milter":{"add_headers":{"X-Rspamd-Server":"mx1","X-Top":{"value":"first","order":0},"X-Two":[{"value":"a","order":1},"b"]},"remove_headers":{"X-Old":0}}}`,
			"", "250 ", "\r\nX-Rspamd-Server: mx1\r\nX-Two: a\r\nX-Two: b\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rp replay
			url := rp.start(t, tc.answer)
			h := harness(t, `url = "`+url+`"`+"\n"+tc.settings)
			rep := send(h, "X-Old: gone\r\n"+ham)
			if tc.reply == "250 " && !strings.HasPrefix(rep, "250 ") || tc.reply != "250 " && rep != tc.reply {
				t.Fatalf("reply %q, want %q", rep, tc.reply)
			}
			if tc.has != "" {
				got := h.Queued()[0].WithoutReceived()
				if !strings.Contains(got, tc.has) {
					t.Errorf("queued message lacks %q:\n%s", tc.has, got)
				}
				if tc.name == "milter headers" && (!strings.HasPrefix(got, "X-Top: first\r\n") || strings.Contains(got, "X-Old")) {
					t.Errorf("milter: want X-Top on top and X-Old removed:\n%s", got)
				}
			}
			rp.mu.Lock()
			defer rp.mu.Unlock()
			if rp.headers.Get("From") != "alice@example.org" || rp.headers.Get("Rcpt") != "bob@example.test" ||
				rp.headers.Get("IP") != "192.0.2.1" || rp.headers.Get("Helo") != "client.example.test" || rp.headers.Get("Queue-Id") == "" {
				t.Errorf("request headers %v", rp.headers)
			}
			if !strings.HasSuffix(rp.body, ham) {
				t.Errorf("request body %q, want the message", rp.body)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	dead := "http://" + scannertest.Closed(t)
	h := harness(t, `url = "`+dead+`"`)
	if rep := send(h, ham); rep != "451 4.7.0 rspamd scan failed; try again later" {
		t.Errorf("down: reply %q", rep)
	}
	h = harness(t, `url = "`+dead+`"`+"\nfailure = \"accept\"")
	if rep := send(h, ham); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("down, accept: reply %q", rep)
	}
	if got := h.Queued()[0].WithoutReceived(); !strings.Contains(got, "\r\nX-Spam-Status: Unknown, scan failed\r\n") {
		t.Errorf("down, accept: %s", got)
	}
	var rp replay
	h = harness(t, `url = "`+rp.start(t, `<html>not rspamd</html>`)+`"`)
	if rep := send(h, ham); rep != "451 4.7.0 rspamd scan failed; try again later" {
		t.Errorf("garbage: reply %q", rep)
	}

	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // then the server notices the client leave
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer hang.Close()
	h = harness(t, `url = "`+hang.URL+`"`+"\ntimeout = \"300ms\"")
	start := time.Now()
	if rep := send(h, ham); rep != "451 4.7.0 rspamd scan failed; try again later" {
		t.Errorf("hang: reply %q", rep)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hang: took %s", d)
	}
}

func TestSkipAuthenticated(t *testing.T) {
	var rp replay
	h := harness(t, `url = "`+rp.start(t, `{"action":"reject","score":20,"required_score":15}`)+`"`)
	s := h.Connect("192.0.2.1:40000")
	s.Conn().AuthUser = "alice"
	if rep := s.Send("alice@example.org", []string{"bob@example.test"}, ham).String(); !strings.HasPrefix(rep, "250 ") {
		t.Errorf("authenticated: reply %q, want it not scanned", rep)
	}
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "rspamd", `url = "127.0.0.1:11333"`, `want rspamd's normal worker`)
	hookstest.ExpectBuildError(t, "rspamd", `greylist = "maybe"`, `greylist = "maybe"`)
	hookstest.ExpectBuildError(t, "rspamd", `subject = "%d spam"`, `use %s once`)
}
