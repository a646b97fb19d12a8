package t_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-mta/sluice/monitor"
)

const opsConfig = `
[[listener]]
name = "mx"
address = "127.0.0.1:0"
hostname = "mx.example.test"
max_message_size = 2000
trace = true
plugins = ["rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"

[admin]
address = "127.0.0.1:0"
token = "s3cret"
`

// opsTraffic sends what the operations tests count: on one raw
// connection a message to one good and one refused recipient (accepted),
// a message over max_message_size (refused by the server, 552), a
// transaction whose only recipient rcptok refuses and that the client
// resets (refused by rcptok, 550), one with a good recipient that the
// client resets (aborted), an AUTH attempt; then one message with swaks
// (accepted). 6 RCPT commands in all, 5 transactions, 2 messages in the
// Maildir.
func opsTraffic(t *testing.T, s *smtpd) {
	t.Helper()
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	c.expect("EHLO client.example.org", "250")
	c.expect("MAIL FROM:<a@example.org>", "250 ")
	c.expect("RCPT TO:<b@example.test>", "250 ")
	c.expect("RCPT TO:<b@elsewhere.test>", "5")
	c.expect("DATA", "354 ")
	c.expect("Subject: one\r\n\r\nhello\r\n.", "250 ")
	c.expect("MAIL FROM:<a@example.org>", "250 ")
	c.expect("RCPT TO:<c@example.test>", "250 ")
	c.expect("DATA", "354 ")
	c.expect("Subject: big\r\n\r\n"+strings.Repeat("x", 3000)+"\r\n.", "552 ")
	c.expect("MAIL FROM:<a@example.org>", "250 ")
	c.expect("RCPT TO:<d@elsewhere.test>", "550 5.7.1 ")
	c.expect("RSET", "250 ")
	c.expect("MAIL FROM:<a@example.org>", "250 ")
	c.expect("RCPT TO:<f@example.test>", "250 ")
	c.expect("RSET", "250 ")
	c.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "5")
	c.expect("QUIT", "221 ")
	if out, code := swaks(t, s.Addr("mx"), "--from", "a@example.org", "--to", "e@example.test", "--ehlo", "swaks.example.org"); code != 0 {
		t.Fatalf("swaks exited %d:\n%s", code, out)
	}
}

// statsJSON runs `smtpd stats -json` against s until no connection is
// open (the last one's close may trail its 221) and returns the figures.
func statsJSON(t *testing.T, s *smtpd) monitor.Snapshot {
	t.Helper()
	var snap monitor.Snapshot
	for range 200 {
		cmd := exec.Command(smtpdBin, "stats", "-config", filepath.Join(s.dir, "smtpd.toml"), "-json")
		cmd.Dir = s.dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("smtpd stats -json: %v\n%s", err, out)
		}
		snap = monitor.Snapshot{}
		if err := json.Unmarshal(out, &snap); err != nil {
			t.Fatalf("smtpd stats -json printed no Snapshot: %v\n%s", err, out)
		}
		if snap.ConnectionsOpen == 0 {
			return snap
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("a connection stays open: %+v", snap)
	return snap
}

func latency(list []monitor.Latency, name string) monitor.Latency {
	for _, l := range list {
		if l.Name == name {
			return l
		}
	}
	return monitor.Latency{Name: name}
}

func TestStatsCountWhatWasSent(t *testing.T) {
	s := startSmtpd(t, opsConfig)
	opsTraffic(t, s)
	snap := statsJSON(t, s)
	if snap.ConnectionsTotal != 2 || snap.Transactions != 5 {
		t.Errorf("connections_total %d, transactions %d; want 2 and 5", snap.ConnectionsTotal, snap.Transactions)
	}
	want := []monitor.Outcome{
		{Result: "aborted", Count: 1},
		{Result: "accepted", Count: 2},
		{Result: "refused", Code: "552", Count: 1},
		{Result: "refused", Plugin: "rcptok", Code: "550", Count: 1},
	}
	if len(snap.Messages) != len(want) {
		t.Fatalf("messages %+v, want %+v", snap.Messages, want)
	}
	for i, o := range want {
		if snap.Messages[i] != o {
			t.Errorf("messages[%d] = %+v, want %+v", i, snap.Messages[i], o)
		}
	}
	for _, c := range []struct {
		list []monitor.Latency
		name string
		n    uint64
	}{
		{snap.Hooks, "rcpt", 6}, {snap.Plugins, "rcptok/rcpt", 6},
		{snap.Hooks, "queue", 2}, {snap.Plugins, "maildir/queue", 2},
	} {
		l := latency(c.list, c.name)
		if l.Count != c.n || l.Max <= 0 || l.P50 > l.Max || l.P99 > l.Max || l.P50 > l.P99 {
			t.Errorf("%s: %+v, want %d calls with 0 < p50 <= p99 <= max", c.name, l, c.n)
		}
	}
	if n := len(maildirFiles(t, filepath.Join(s.dir, "var", "mail"))); n != 2 {
		t.Errorf("%d messages in the Maildir, want 2", n)
	}

	// The text form has the same figures.
	out, err := exec.Command(smtpdBin, "stats", "-socket", filepath.Join(s.dir, "var", "smtpd.sock")).CombinedOutput()
	if err != nil {
		t.Fatalf("smtpd stats: %v\n%s", err, out)
	}
	for _, re := range []string{`connections: 0 open, 2 total`, `transactions: 5`, `refused\s+-\s+552\s+1`, `refused\s+rcptok\s+550\s+1`, `aborted\s+-\s+-\s+1`, `accepted\s+-\s+-\s+2`, `rcptok/rcpt\s+6\s`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("smtpd stats does not match %q:\n%s", re, out)
		}
	}

	// The summary lines: one per transaction, with what decided.
	log := s.Log()
	if n := strings.Count(log, "msg=transaction "); n != 5 {
		t.Errorf("%d summary lines, want 5:\n%s", n, log)
	}
	for _, want := range []string{
		`client=127.0.0.1 client_name="" helo=client.example.org tls="" user="" from=a@example.org rcpts=1 size=`,
		`decisions="rcptok/rcpt=OK rcptok/rcpt=DENY maildir/queue=OK" queue_plugin=maildir queue_id=`,
		`result=refused code=552`,
		`from=a@example.org rcpts=0 size=0 decisions="rcptok/rcpt=DENY" queue_plugin="" queue_id="" result=refused code=550`,
		`from=a@example.org rcpts=1 size=0 decisions="rcptok/rcpt=OK" queue_plugin="" queue_id="" result=aborted duration=`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no summary line with %q:\n%s", want, log)
		}
	}
	// The trace: every command, never AUTH's credentials.
	for _, want := range []string{`msg=command listener=mx conn=`, `line="RCPT TO:<b@elsewhere.test>"`, `line="AUTH PLAIN (initial response not logged)"`, `msg=reply listener=mx conn=`} {
		if !strings.Contains(log, want) {
			t.Errorf("trace has no %q", want)
		}
	}
	if strings.Contains(log, "AGFsaWNlAHNlY3JldA") {
		t.Errorf("the trace logged AUTH's credentials:\n%s", log)
	}
}

var adminRe = regexp.MustCompile(`msg="admin listener" address=(\S+)`)

func TestMetricsAndHealth(t *testing.T) {
	s := startSmtpd(t, opsConfig)
	m := adminRe.FindStringSubmatch(s.Log())
	if m == nil {
		t.Fatalf("no admin listener in the log:\n%s", s.Log())
	}
	base := "http://" + m[1]
	get := func(path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		cl := &http.Client{Timeout: 10 * time.Second}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics", ""); code != 401 {
		t.Errorf("/metrics without the token: %d %q, want 401", code, body)
	}
	if code, _ := get("/healthz", "wrong"); code != 401 {
		t.Errorf("/healthz with a wrong token: %d, want 401", code)
	}
	if code, body := get("/healthz?token=s3cret", ""); code != 200 || body != "ready\n" {
		t.Errorf("/healthz: %d %q, want 200 ready", code, body)
	}

	opsTraffic(t, s)
	statsJSON(t, s) // waits for the connections to close
	code, body := get("/metrics", "s3cret")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f := fams[name]
		if f == nil {
			return 0, false
		}
	metrics:
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sluice_connections_total", nil, 2},
		{"sluice_connections_open", nil, 0},
		{"sluice_transactions_total", nil, 5},
		{"sluice_messages_total", map[string]string{"result": "accepted", "plugin": "", "code": ""}, 2},
		{"sluice_messages_total", map[string]string{"result": "refused", "plugin": "", "code": "552"}, 1},
		{"sluice_messages_total", map[string]string{"result": "refused", "plugin": "rcptok", "code": "550"}, 1},
		{"sluice_messages_total", map[string]string{"result": "aborted", "plugin": "", "code": ""}, 1},
		{"sluice_hook_duration_seconds", map[string]string{"hook": "rcpt"}, 6},
		{"sluice_plugin_duration_seconds", map[string]string{"plugin": "rcptok", "hook": "rcpt"}, 6},
		{"sluice_plugin_duration_seconds", map[string]string{"plugin": "maildir", "hook": "queue"}, 2},
	} {
		if got, ok := value(c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if f := fams["go_goroutines"]; f == nil || f.GetType() != dto.MetricType_GAUGE {
		t.Errorf("no Go runtime metrics (go_goroutines)")
	}
	// The histogram's buckets are cumulative and end at the count.
	h := fams["sluice_plugin_duration_seconds"].Metric[0].Histogram
	var last uint64
	for _, b := range h.Bucket {
		if b.GetCumulativeCount() < last {
			t.Errorf("bucket le=%v: %d, below the one before (%d)", b.GetUpperBound(), b.GetCumulativeCount(), last)
		}
		last = b.GetCumulativeCount()
	}
	if last > h.GetSampleCount() {
		t.Errorf("last bucket %d > count %d", last, h.GetSampleCount())
	}

	// Draining: /healthz says so while SIGTERM waits for a transaction.
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	c.expect("EHLO client.example.org", "250")
	c.expect("MAIL FROM:<a@example.org>", "250 ")
	s.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get("/healthz", "s3cret")
		if code == 503 && body == "draining\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz during shutdown: %d %q, want 503 draining", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.expect("QUIT", "221 ")
}

func TestAdminOffLoopbackNeedsAuth(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "smtpd.toml", strings.Replace(opsConfig, "address = \"127.0.0.1:0\"\ntoken = \"s3cret\"", "address = \"0.0.0.0:9025\"", 1))
	out, err := exec.Command(smtpdBin, "check", "-config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `[admin] address = "0.0.0.0:9025" is not a loopback address: set token`) {
		t.Errorf("smtpd check: %v\n%s\nwant a refusal of a non-loopback admin address without auth", err, out)
	}
}
