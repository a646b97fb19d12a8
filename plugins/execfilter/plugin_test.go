package execfilter_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

const msg = "From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nBody line.\r\n"

// script writes an executable shell script into a temp dir.
func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "filter")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func harness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return scannertest.Harness(t, "execfilter", settings)
}

func send(h *hookstest.Harness) string {
	return h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test", "c@example.test"}, msg).String()
}

// A filter that rewrites the Subject: the queued message is its output,
// byte for byte; the envelope reached it in the environment.
func TestRewrite(t *testing.T) {
	dir := t.TempDir()
	f := script(t, `env > `+dir+`/env
exec sed 's/^Subject: /Subject: [filtered] /'`)
	h := harness(t, `command = ["`+f+`"]`+"\nrewrite = true")
	if rep := send(h); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	got := h.Queued()[0].WithoutReceived()
	want := "From: a@example.org\r\nTo: b@example.test\r\nSubject: [filtered] hello\r\n\r\nBody line.\r\n"
	if got != want {
		t.Errorf("queued:\n%q\nwant\n%q", got, want)
	}
	env, _ := os.ReadFile(dir + "/env")
	for _, v := range []string{"SENDER=a@example.org\n", "RECIPIENTS=b@example.test\nc@example.test\n", "TCPREMOTEIP=192.0.2.1\n",
		"HELO=client.example.test\n", "PATH=/usr/bin:/bin\n", "QUEUE_ID="} {
		if !strings.Contains(string(env), v) {
			t.Errorf("environment lacks %q:\n%s", v, env)
		}
	}
	if strings.Contains(string(env), "HOME=") || strings.Contains(string(env), "GOPATH") {
		t.Errorf("the environment leaks smtpd's:\n%s", env)
	}
}

// Without rewrite the output is ignored.
func TestNoRewrite(t *testing.T) {
	h := harness(t, `command = ["`+script(t, `cat >/dev/null; echo garbage`)+`"]`)
	if rep := send(h); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	if got := h.Queued()[0].WithoutReceived(); got != msg {
		t.Errorf("queued %q, want the message unchanged", got)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		body, reply string
		queued      int
	}{
		{"exit 0", "250 ", 1},
		{"exit 99", "250 ", 0},
		{"exit 2", "451 4.7.0 execfilter scan failed; try again later", 0}, // a shell's syntax error: never a discard
		{"echo 'Your message smells of spam' >&2; exit 100", "554 5.7.1 Your message smells of spam", 0},
		{"exit 31", "554 5.7.1 Message refused by a content filter", 0},
		{"echo 'Busy, come back' >&2; exit 111", "451 4.7.1 Busy, come back", 0},
		{"exit 71", "451 4.7.1 Message deferred by a content filter; try again later", 0},
		{"exit 5", "451 4.7.0 execfilter scan failed; try again later", 0},
	} {
		t.Run(tc.body, func(t *testing.T) {
			h := harness(t, `command = ["`+script(t, "cat >/dev/null; "+tc.body)+`"]`)
			rep := send(h)
			if tc.reply == "250 " && !strings.HasPrefix(rep, "250 ") || tc.reply != "250 " && rep != tc.reply {
				t.Errorf("reply %q, want %q", rep, tc.reply)
			}
			if n := len(h.Queued()); n != tc.queued {
				t.Errorf("%d queued, want %d", n, tc.queued)
			}
		})
	}
}

// A filter that hangs is killed at timeout, with its children.
func TestTimeout(t *testing.T) {
	dir := t.TempDir()
	f := script(t, `sleep 30 & echo $! > `+dir+`/child; wait`)
	h := harness(t, `command = ["`+f+`"]`+"\ntimeout = \"300ms\"")
	start := time.Now()
	if rep := send(h); rep != "451 4.7.0 execfilter scan failed; try again later" {
		t.Errorf("reply %q", rep)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
	pid, _ := os.ReadFile(dir + "/child")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strings.TrimSpace(string(pid))); err != nil || len(pid) == 0 {
			break
		}
		if stat, _ := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat"); strings.Contains(string(stat), ") Z ") {
			break // killed, waiting for its reaper
		}
		if time.Now().After(deadline) {
			t.Fatalf("the filter's child %s still runs", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTooMuchOutput(t *testing.T) {
	f := script(t, `cat; head -c 200000 /dev/zero | tr '\0' 'x'`)
	h := harness(t, `command = ["`+f+`"]`+"\nrewrite = true\nmax_output = \"64KB\"")
	if rep := send(h); rep != "451 4.7.0 execfilter scan failed; try again later" {
		t.Errorf("reply %q", rep)
	}
	h = harness(t, `command = ["`+f+`"]`+"\nrewrite = true\nmax_output = \"64KB\"\nfailure = \"accept\"")
	if rep := send(h); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q", rep)
	}
	want := "From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\nX-Filter: execfilter failed\r\n\r\nBody line.\r\n"
	if got := h.Queued()[0].WithoutReceived(); got != want {
		t.Errorf("queued %q, want the original with X-Filter", got)
	}
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "execfilter", ``, `command is required`)
	hookstest.ExpectBuildError(t, "execfilter", `command = ["myfilter"]`, `must be an absolute path`)
	hookstest.ExpectBuildError(t, "execfilter", `command = ["/bin/cat"]`+"\nenv = { \"A=B\" = \"x\" }", `is not a valid environment variable`)
}
