package external_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/external"
	_ "github.com/sluice-mta/sluice/plugins/maildir" // the README examples name it
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	_ "github.com/sluice-mta/sluice/plugins/relay"
	"github.com/sluice-mta/sluice/transaction"
)

// TestMain makes the test binary a minimal program of its own when
// EXTERNAL_TEST_RESPONDER=1: it declares rcpt and declines every call, to
// measure the plugin's own cost per call.
func TestMain(m *testing.M) {
	if os.Getenv("EXTERNAL_TEST_RESPONDER") == "1" {
		in := bufio.NewScanner(os.Stdin)
		in.Buffer(nil, 1<<20)
		in.Scan() // the hello
		out := bufio.NewWriter(os.Stdout)
		out.WriteString(`{"hooks":["rcpt"]}` + "\n")
		out.Flush()
		for in.Scan() {
			var r struct{ ID uint64 }
			json.Unmarshal(in.Bytes(), &r)
			fmt.Fprintf(out, `{"id":%d,"code":"declined"}`+"\n", r.ID)
			out.Flush()
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const msg = "Subject: hi\r\nFrom: <a@example.org>\r\n\r\nHello.\r\n"

// examples are the example plugins, each run through the same tests.
var examples = []struct{ name, command string }{
	{"python", `["python3", "examples/blocklist.py"]`},
	{"shell", `["sh", "examples/blocklist.sh"]`},
}

// needPython fails the test when python3 is missing: the Python example
// is part of what must work.
func needPython(t *testing.T, command string) {
	t.Helper()
	if strings.Contains(command, "python3") {
		if _, err := exec.LookPath("python3"); err != nil {
			t.Fatal("python3 is not installed: install the Debian package python3-minimal")
		}
	}
}

// harness builds blocklist (the external plugin running command), rcptok
// and the queue recorder, with the plugin's log in l.
func harness(t *testing.T, command, settings string) (*hookstest.Harness, *external.Plugin, *hookstest.LogBuffer) {
	t.Helper()
	needPython(t, command)
	p := hookstest.BuildAs[*external.Plugin](t, "external", "command = "+command+"\n"+settings)
	l := &hookstest.LogBuffer{}
	external.SetLogger(p, l.Logger())
	h := hookstest.New(t,
		hookstest.Plugin("blocklist", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
	h.Logger = l.Logger()
	return h, p, l
}

// mail starts a transaction from alice@example.org.
func mail(t *testing.T, s *hookstest.Session) {
	t.Helper()
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
}

// eventually retries f until it returns true, for up to 10 seconds.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestExamplesAcceptDenyDefer(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			h, _, _ := harness(t, ex.command, "")
			s := h.Connect("192.0.2.1")
			hookstest.Expect(t, s.Greeting(), 220)
			tr := s.SendAll("alice@example.org", []string{"blocked@example.test", "busy@example.test", "bob@example.test"}, msg)
			hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.1.1 This mailbox is closed")
			hookstest.ExpectReply(t, tr.Rcpt[1], "450 4.2.1 Mailbox busy, try again later")
			hookstest.ExpectReply(t, tr.Rcpt[2], "250 2.1.5 Recipient OK") // declined: rcptok accepted it
			hookstest.Expect(t, tr.Data, 250, "queued as")
			q := h.Queued()
			if len(q) != 1 || strings.Join(q[0].Recipients, ",") != "bob@example.test" {
				t.Fatalf("queued %+v", q)
			}
			// The note the program set, under the instance's name.
			if got := q[0].Notes["blocklist.listed"]; got != "blocked@example.test" {
				t.Errorf("note blocklist.listed = %#v; notes %v", got, q[0].Notes)
			}
			if ex.name == "python" {
				// A JSON whole number is an int note.
				if got := q[0].Notes["blocklist.checked"]; got != 1 {
					t.Errorf("note blocklist.checked = %#v (%T); want int 1", got, got)
				}
				if got := q[0].Notes["blocklist.deferred"]; got != "busy@example.test" {
					t.Errorf("note blocklist.deferred = %#v", got)
				}
			}
		})
	}
}

func TestExamplesCrashFailsClosedThenRestarts(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			h, p, l := harness(t, ex.command, "env = { BLOCKLIST_TEST_FAULTS = \"1\" }\nrestart_backoff = \"20ms\"")
			first := external.PID(p)
			s := h.Connect("192.0.2.1")
			mail(t, s)
			hookstest.ExpectReply(t, s.Rcpt("crash@example.test"), "451 4.3.0 Local error in processing; try again later")
			eventually(t, "logged", func() bool {
				log := l.String()
				return strings.Contains(log, "crashing on purpose") && strings.Contains(log, "external program exited")
			})
			// Restarted after the back-off, and working again.
			eventually(t, "restarted", func() bool { return s.Rcpt("blocked@example.test").Code == 550 })
			hookstest.ExpectReply(t, s.Rcpt("blocked@example.test"), "550 5.1.1 This mailbox is closed")
			hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
			if pid := external.PID(p); pid == 0 || pid == first {
				t.Errorf("pid %d after the restart, %d before", pid, first)
			}
		})
	}
}

func TestExamplesHangTimesOutAndRestarts(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			h, p, l := harness(t, ex.command, "env = { BLOCKLIST_TEST_FAULTS = \"1\" }\ntimeout = \"1s\"\nrestart_backoff = \"20ms\"")
			first := external.PID(p)
			s := h.Connect("192.0.2.1")
			mail(t, s)
			start := time.Now()
			hookstest.ExpectReply(t, s.Rcpt("hang@example.test"), "451 4.3.0 Local error in processing; try again later")
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("the hung call took %v; timeout is 1s", took)
			}
			if log := l.String(); !strings.Contains(log, "no answer within the timeout (1s): killed, it restarts") {
				t.Errorf("the log does not say why:\n%s", log)
			}
			// The hung process is gone: killed with its process group.
			eventually(t, "killed", func() bool { return syscall.Kill(first, 0) != nil })
			eventually(t, "restarted", func() bool { return s.Rcpt("busy@example.test").Code == 450 })
			hookstest.ExpectReply(t, s.Rcpt("blocked@example.test"), "550 5.1.1 This mailbox is closed")
		})
	}
}

func TestDownDuringBackoffFailsClosedWithoutCalling(t *testing.T) {
	h, _, l := harness(t, examples[0].command, "env = { BLOCKLIST_TEST_FAULTS = \"1\" }\nrestart_backoff = \"1h\"\nrestart_backoff_max = \"1h\"")
	s := h.Connect("192.0.2.1")
	mail(t, s)
	hookstest.ExpectReply(t, s.Rcpt("crash@example.test"), "451 4.3.0 Local error in processing; try again later")
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.3.0 Local error in processing; try again later")
	if log := l.String(); !strings.Contains(log, "the program is down") || !strings.Contains(log, "next start in") {
		t.Errorf("the log does not say it is down:\n%s", log)
	}
}

func TestOnFailureDeclineFailsOpen(t *testing.T) {
	h, _, l := harness(t, examples[0].command, "env = { BLOCKLIST_TEST_FAULTS = \"1\" }\non_failure = \"decline\"")
	s := h.Connect("192.0.2.1")
	mail(t, s)
	hookstest.ExpectReply(t, s.Rcpt("crash@example.test"), "250 2.1.5 Recipient OK") // rcptok decided
	if log := l.String(); !strings.Contains(log, `external plugin failed: declining`) {
		t.Errorf("the failure is not logged:\n%s", log)
	}
}

// recorder is a program that writes every request to $OUT, one per line,
// and answers each with what $ANSWER says (after "id":N,).
const recorder = `["sh", "-c", "read -r hello; printf '%s\\n' \"$hello\" > \"$OUT\"; printf '%s\\n' \"$HANDSHAKE\"; while IFS= read -r l; do printf '%s\\n' \"$l\" >> \"$OUT\"; id=${l#'{\"id\":'}; id=${id%%,*}; printf '{\"id\":%s,%s}\\n' \"$id\" \"$ANSWER\"; done"]`

func record(t *testing.T, handshake, answer, settings string) (*hookstest.Harness, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "requests")
	h, _, _ := harness(t, recorder, fmt.Sprintf("env = { OUT = %q, HANDSHAKE = %q, ANSWER = %q }\n%s", out, handshake, answer, settings))
	return h, out
}

func lines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestRequestsCarryTheProtocolsFields(t *testing.T) {
	h, out := record(t, `{"hooks":["helo","ehlo","mail","rcpt","data_post"]}`,
		`"code":"declined","notes":{"seen":true},"connection_notes":{"score":1.5}`, "max_body = 1000")
	s := h.Connect("192.0.2.1:4321")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250, "queued as")
	reqs := lines(t, out)
	var hooksSeen []string
	for _, r := range reqs[1:] {
		hooksSeen = append(hooksSeen, r["hook"].(string))
	}
	// connect, data and the rest were not declared: not sent.
	if got := strings.Join(hooksSeen, " "); got != "ehlo mail rcpt data_post" {
		t.Fatalf("hooks sent: %s", got)
	}
	hello := reqs[0]
	if hello["sluice"] != 1.0 || hello["max_body"] != 1000.0 || hello["timeout_ms"] != 5000.0 {
		t.Errorf("hello = %v", hello)
	}
	ehlo := reqs[1]
	c := ehlo["connection"].(map[string]any)
	if c["remote_ip"] != "192.0.2.1" || c["remote_port"] != 4321.0 || c["helo"] != "client.example.org" || c["tls"] != false || c["relay"] != false {
		t.Errorf("connection = %v", c)
	}
	if ehlo["args"].(map[string]any)["host"] != "client.example.org" || ehlo["transaction"] != nil || ehlo["id"] == nil {
		t.Errorf("ehlo request = %v", ehlo)
	}
	rcpt := reqs[3]
	tx := rcpt["transaction"].(map[string]any)
	if tx["sender"] != "alice@example.org" || len(tx["recipients"].([]any)) != 0 || rcpt["args"].(map[string]any)["recipient"] != "bob@example.test" {
		t.Errorf("rcpt request = %v", rcpt)
	}
	// The notes set at mail are in the next request: the transaction's
	// under blocklist.seen, the connection's under blocklist.score.
	if tx["notes"].(map[string]any)["blocklist.seen"] != true || rcpt["connection"].(map[string]any)["notes"].(map[string]any)["blocklist.score"] != 1.5 {
		t.Errorf("notes in the rcpt request: %v / %v", tx["notes"], rcpt["connection"])
	}
	post := reqs[4]["transaction"].(map[string]any)
	headers := fmt.Sprint(post["headers"])
	if !strings.Contains(headers, "[Subject hi]") || !strings.Contains(headers, "[From <a@example.org>]") {
		t.Errorf("data_post headers = %s", headers)
	}
	m, err := base64.StdEncoding.DecodeString(post["message"].(string))
	if err != nil || !strings.HasSuffix(string(m), msg) || post["size"] != float64(len(m)) {
		t.Errorf("data_post message (%v) = %q, size %v", err, m, post["size"])
	}
	q := h.Queued()
	if len(q) != 1 || q[0].Notes["blocklist.seen"] != true {
		t.Errorf("queued %+v", q)
	}
}

func TestMessageIsNotSentOverMaxBody(t *testing.T) {
	h, out := record(t, `{"hooks":["data_post"]}`, `"code":"deny","msg":"No thanks"`, "max_body = 10")
	s := h.Connect("192.0.2.1")
	hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), "552 5.7.1 No thanks")
	tx := lines(t, out)[1]["transaction"].(map[string]any)
	if _, ok := tx["message"]; ok || tx["size"].(float64) <= 10 {
		t.Errorf("data_post transaction = %v", tx)
	}
}

func TestEveryCode(t *testing.T) {
	for _, c := range []struct {
		answer, want string
	}{
		{`"code":"ok","msg":"Welcome"`, "250 2.1.5 Welcome"},
		{`"code":"declined"`, "250 2.1.5 Recipient OK"}, // rcptok
		{`"code":"deny"`, "550 5.7.1 Recipient rejected"},
		{`"code":"DENYSOFT","enhanced":"4.7.26","msg":"Later"`, "450 4.7.26 Later"},
		{`"code":"denysoft","reply_code":452,"enhanced":"4.5.3","msg":"Too many"`, "452 4.5.3 Too many"},
		{`"code":"deny_disconnect","msg":"Go away"`, "550 5.7.1 Go away"},
		{`"code":"denysoft_disconnect"`, "421 4.7.1 Recipient temporarily rejected"},
		{`"code":"done","msg":"Taken"`, "250 2.1.5 Taken"},
		// Broken answers fail closed.
		{`"code":"maybe"`, "451 4.3.0 Local error in processing; try again later"},
		{`"code":"deny","enhanced":"5.7"`, "451 4.3.0 Local error in processing; try again later"},
		{`"code":"ok","notes":{"bad key":1}`, "451 4.3.0 Local error in processing; try again later"},
	} {
		t.Run(c.answer, func(t *testing.T) {
			h, _ := record(t, `{"hooks":["rcpt"]}`, c.answer, "")
			s := h.Connect("192.0.2.1")
			mail(t, s)
			hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), c.want)
		})
	}
}

func TestStrayLineRestartsTheProgram(t *testing.T) {
	// The program answers with an id no call waits for.
	h, _, l := harness(t, `["sh", "-c", "read -r h; echo '{\"hooks\":[\"rcpt\"]}'; while read -r l; do echo '{\"id\":999999,\"code\":\"ok\"}'; done"]`, "restart_backoff = \"1h\"\nrestart_backoff_max = \"1h\"")
	s := h.Connect("192.0.2.1")
	mail(t, s)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.3.0 Local error in processing; try again later")
	if log := l.String(); !strings.Contains(log, "a response to id 999999, which no call is waiting for") {
		t.Errorf("the log does not say why:\n%s", log)
	}
}

func TestHookDeadlineShorterThanTimeout(t *testing.T) {
	p := hookstest.BuildAs[*external.Plugin](t, "external", `command = ["python3", "examples/blocklist.py"]
env = { BLOCKLIST_TEST_FAULTS = "1" }`)
	external.SetLogger(p, (&hookstest.LogBuffer{}).Logger())
	h := hookstest.NewWithOptions(t, hookstest.Options{Timeout: 300 * time.Millisecond}, hookstest.Plugin("blocklist", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	mail(t, s)
	start := time.Now()
	hookstest.ExpectReply(t, s.Rcpt("hang@example.test"), "451 4.3.0 Local error in processing; try again later")
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v: the hook's 300ms deadline was not kept", took)
	}
}

func TestCloseEndsTheProgram(t *testing.T) {
	for _, c := range []struct{ name, command string }{
		{"exits at EOF", `["python3", "examples/blocklist.py"]`},
		{"ignores EOF and SIGTERM", `["sh", "-c", "trap '' TERM; read -r h; echo '{\"hooks\":[\"rcpt\"]}'; while :; do sleep 1; done"]`},
	} {
		t.Run(c.name, func(t *testing.T) {
			needPython(t, c.command)
			p, err := hookstest.BuildErr("external", "command = "+c.command)
			if err != nil {
				t.Fatal(err)
			}
			pl := p.(*external.Plugin)
			external.SetStopGrace(pl, 100*time.Millisecond)
			pid := external.PID(pl)
			if err := pl.Close(); err != nil {
				t.Fatal(err)
			}
			if syscall.Kill(pid, 0) == nil {
				t.Errorf("pid %d still runs after Close", pid)
			}
			// A call after Close fails closed.
			c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1234"))
			tx := transaction.New(t.TempDir(), 0)
			if r := pl.Rcpt(context.Background(), c, tx, "bob@example.test"); r.Code != hooks.DenySoft {
				t.Errorf("Rcpt after Close = %v", r)
			}
		})
	}
}

func TestBadSettingsAreRefused(t *testing.T) {
	for _, c := range []struct{ settings, want string }{
		{``, "command: required"},
		{`command = []`, "command: required"},
		{`command = ["no-such-program-for-sluice"]`, `"no-such-program-for-sluice": executable file not found`},
		{`command = ["sh", "-c", "exit 3"]`, "exited before its handshake"},
		{`command = ["sh", "-c", "read h; echo nonsense"]`, `handshake "nonsense": not a JSON object`},
		{`command = ["sh", "-c", "read h; echo '{\"hooks\":[]}'"]`, "declares no hook"},
		{`command = ["sh", "-c", "read h; echo '{\"hooks\":[\"auth\"]}'"]`, `hook "auth": the external plugin forwards only`},
		{`command = ["sh", "-c", "read h; echo '{\"hooks\":[\"queue\"]}'"]`, `hook "queue"`},
		{"command = [\"sh\", \"-c\", \"sleep 10\"]\nstart_timeout = \"200ms\"", "no handshake from /usr/bin/sh within 200ms"},
		{"command = [\"cat\"]\ntimeout = \"0s\"", "timeout: 0s: want a positive duration"},
		{"command = [\"cat\"]\non_failure = \"accept\"", `on_failure = "accept": want "defer" or "decline"`},
		{"command = [\"cat\"]\ndir = \"/no/such/dir\"", `dir: stat /no/such/dir: no such file or directory`},
		{"command = [\"cat\"]\nrestart_backoff = \"1m\"\nrestart_backoff_max = \"1s\"", "restart_backoff_max: 1s is less than restart_backoff"},
		{"command = [\"cat\"]\ncomand = 1", "comand"},
	} {
		hookstest.ExpectBuildError(t, "external", c.settings, c.want)
	}
}

func TestReadmeExamplesWork(t *testing.T) {
	needPython(t, "python3")
	abs, err := filepath.Abs("examples")
	if err != nil {
		t.Fatal(err)
	}
	for i, text := range hookstest.ReadmeExamples(t, "README.md") {
		// The second example runs a copy of examples/ in /usr/local/lib/sluice.
		text = strings.ReplaceAll(text, `"/usr/local/lib/sluice"`, fmt.Sprintf("%q", abs))
		cfg, err := config.Parse("README.md", text)
		if err != nil {
			t.Fatalf("example %d: %v", i+1, err)
		}
		built, err := cfg.Build()
		if err != nil {
			t.Fatalf("example %d: %v", i+1, err)
		}
		var ins []hooks.Instance
		for _, name := range cfg.Listeners[0].Plugins {
			if name != "maildir" {
				ins = append(ins, hookstest.Plugin(name, built[name]))
			}
		}
		h := hookstest.New(t, append(ins, hookstest.Queue())...)
		s := h.Connect("192.0.2.1")
		mail(t, s)
		switch i {
		case 0:
			hookstest.ExpectReply(t, s.Rcpt("nobody@example.test"), "550 5.1.1 No such user")
		case 1:
			hookstest.ExpectReply(t, s.Rcpt("blocked@example.test"), "550 5.1.1 This mailbox is closed")
		}
		hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	}
}

// BenchmarkRcptCall measures one rcpt hook call: the request encoded,
// written, answered by the program, read and decoded. "go" is the test
// binary as a minimal program (the plugin's own cost and the pipes'),
// "python" and "sh" the examples.
func BenchmarkRcptCall(b *testing.B) {
	for _, ex := range []struct{ name, command string }{
		{"python", `["python3", "examples/blocklist.py"]`},
		{"go", fmt.Sprintf("[%q]\nenv = { EXTERNAL_TEST_RESPONDER = \"1\" }", os.Args[0])},
		{"sh", `["sh", "examples/blocklist.sh"]`},
	} {
		b.Run(ex.name, func(b *testing.B) {
			p := hookstest.BuildAs[*external.Plugin](b, "external", "command = "+ex.command)
			external.SetLogger(p, (&hookstest.LogBuffer{}).Logger())
			b.Cleanup(func() { p.Close() })
			c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1234"))
			c.Helo = "client.example.org"
			tx := transaction.New(b.TempDir(), 0)
			tx.Sender = "alice@example.org"
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if r := p.Rcpt(ctx, c, tx, "bob@example.test"); r.Code != hooks.Declined {
					b.Fatalf("Rcpt = %+v", r)
				}
			}
		})
	}
}

// pairs is a concurrent program: it waits for two requests, then answers
// the second first, each with a refusal naming its recipient.
const pairs = `["python3", "-c", """
import json, sys
sys.stdin.readline()
print(json.dumps({"hooks": ["rcpt"], "concurrent": True}), flush=True)
held = []
for line in sys.stdin:
    held.append(json.loads(line))
    if len(held) == 2:
        for r in reversed(held):
            print(json.dumps({"id": r["id"], "code": "deny", "msg": "No " + r["args"]["recipient"]}), flush=True)
        held = []
"""]`

func TestConcurrentProgramAnswersInAnyOrder(t *testing.T) {
	h, _, _ := harness(t, pairs, "")
	var sessions [2]*hookstest.Session
	for i := range sessions {
		sessions[i] = h.Connect("192.0.2.1")
		mail(t, sessions[i])
	}
	var replies [2]hooks.Reply
	done := make(chan int)
	for i, s := range sessions {
		go func() {
			replies[i] = s.Rcpt(fmt.Sprintf("u%d@example.test", i))
			done <- i
		}()
	}
	<-done
	<-done
	for i, r := range replies {
		hookstest.ExpectReply(t, r, fmt.Sprintf("550 5.7.1 No u%d@example.test", i))
	}
}

// slow answers every rcpt call with declined after half a second, one call
// at a time.
const slow = `["sh", "-c", "read -r h; echo '{\"hooks\":[\"rcpt\"]}'; while IFS= read -r l; do sleep 0.5; id=${l#'{\"id\":'}; id=${id%%,*}; echo \"{\\\"id\\\":$id,\\\"code\\\":\\\"declined\\\"}\"; done"]`

func TestCallQueuedPastItsDeadlineLeavesTheProgramRunning(t *testing.T) {
	p := hookstest.BuildAs[*external.Plugin](t, "external", "command = "+slow)
	l := &hookstest.LogBuffer{}
	external.SetLogger(p, l.Logger())
	t.Cleanup(func() { p.Close() })
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:1234"))
	tx := transaction.New(t.TempDir(), 0)
	first := external.PID(p)
	done := make(chan hooks.Result)
	go func() { done <- p.Rcpt(context.Background(), c, tx, "a@example.test") }()
	time.Sleep(100 * time.Millisecond) // the first call is under way
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if r := p.Rcpt(ctx, c, tx, "b@example.test"); r.Err == nil || !strings.Contains(r.Err.Error(), "busy with another call") {
		t.Errorf("the queued call = %+v; want a failure saying the program was busy", r)
	}
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Errorf("the queued call took %v; its deadline was 100ms", took)
	}
	if r := <-done; r.Code != hooks.Declined || r.Err != nil {
		t.Errorf("the first call = %+v", r)
	}
	if pid := external.PID(p); pid != first {
		t.Errorf("pid %d, was %d: the program was killed for a call that never reached it\n%s", pid, first, l.String())
	}
}
