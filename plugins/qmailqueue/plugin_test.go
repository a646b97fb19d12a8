package qmailqueue_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/qmailqueue"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

var qqcheck string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qmailqueue-test-")
	if err == nil {
		qqcheck, err = queuetest.BuildQQCheck(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type acceptAll struct{}

func (acceptAll) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

const body = "Subject: hi\r\n\r\nbody\r\n"

// send runs one transaction through acceptAll and qmailqueue with the
// given settings and returns the reply and what qqcheck received.
func send(t *testing.T, settings string, env map[string]string) (hooks.Reply, string, string) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("QMAILQUEUE", "")
	t.Setenv("QQCHECK_MESSAGE", filepath.Join(dir, "message"))
	t.Setenv("QQCHECK_ENVELOPE", filepath.Join(dir, "envelope"))
	for k, v := range env {
		t.Setenv(k, v)
	}
	p := hookstest.Build(t, "qmailqueue", settings)
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("qmailqueue", p))
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"b@example.test", "c@example.test"}, body)
	msg, _ := os.ReadFile(filepath.Join(dir, "message"))
	envelope, _ := os.ReadFile(filepath.Join(dir, "envelope"))
	return rep, string(msg), string(envelope)
}

func TestAcceptedMessage(t *testing.T) {
	for _, tc := range []struct{ settings, eol string }{
		{"", "\n"}, // the default: qmail's LF
		{`line_endings = "crlf"`, "\r\n"},
	} {
		rep, msg, envelope := send(t, `path = "`+qqcheck+`"`+"\n"+tc.settings, nil)
		hookstest.Expect(t, rep, 250, "queued as")
		if envelope != "Fa@example.org\x00Tb@example.test\x00Tc@example.test\x00\x00" {
			t.Errorf("envelope %q", envelope)
		}
		id := strings.TrimPrefix(rep.Msg, "Ok: queued as ")
		want := "Received: from client.example.test ([192.0.2.1])\r\n\tby mx.example.test (Sluice) with ESMTP id " + id +
			"; Fri, 02 Jan 2026 03:04:05 +0000\r\n" + body
		if want = strings.ReplaceAll(want, "\r\n", tc.eol); msg != want {
			t.Errorf("%s: qmail-queue got\n%q\nwant\n%q", tc.settings, msg, want)
		}
	}
}

// logBuffer makes slog.Default write into a buffer for the test.
func logBuffer(t *testing.T) *hookstest.LogBuffer {
	var log hookstest.LogBuffer
	old := slog.Default()
	slog.SetDefault(log.Logger())
	t.Cleanup(func() { slog.SetDefault(old) })
	return &log
}

// TestQMAILQUEUEOverridesPath: $QMAILQUEUE is resolved to an absolute
// path when the plugin is built, logged once, and used from then on.
func TestQMAILQUEUEOverridesPath(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"absolute", qqcheck},
		{"found in PATH", filepath.Base(qqcheck)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := logBuffer(t)
			t.Setenv("PATH", filepath.Dir(qqcheck))
			t.Setenv("QMAILQUEUE", tc.value)
			p := hookstest.Build(t, "qmailqueue", `path = "/nonexistent/qmail-queue"`)
			want := "qmailqueue: $QMAILQUEUE overrides path\" plugin=qmailqueue program=" + qqcheck + " path=/nonexistent/qmail-queue"
			if l := log.String(); strings.Count(l, "overrides path") != 1 || !strings.Contains(l, "level=INFO") || !strings.Contains(l, want) {
				t.Errorf("log:\n%s\nwant one INFO line with %q", l, want)
			}
			// Resolved at start: a later change of the variable (or of
			// PATH) does not matter.
			t.Setenv("QMAILQUEUE", "/nonexistent/other-qmail-queue")
			t.Setenv("PATH", "/nonexistent")
			dir := t.TempDir()
			t.Setenv("QQCHECK_MESSAGE", filepath.Join(dir, "message"))
			t.Setenv("QQCHECK_ENVELOPE", filepath.Join(dir, "envelope"))
			h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("qmailqueue", p))
			hookstest.Expect(t, h.Connect("192.0.2.1").Send("a@example.org", []string{"b@example.test"}, body), 250, "queued as")
			if env, _ := os.ReadFile(filepath.Join(dir, "envelope")); string(env) != "Fa@example.org\x00Tb@example.test\x00\x00" {
				t.Errorf("$QMAILQUEUE's program got envelope %q", env)
			}
		})
	}
}

func TestQMAILQUEUEMustNameAProgram(t *testing.T) {
	notExecutable := filepath.Join(t.TempDir(), "qmail-queue")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, value := range []string{"/nonexistent/qmail-queue", notExecutable, "no-such-qmail-queue"} {
		t.Setenv("QMAILQUEUE", value)
		hookstest.ExpectBuildError(t, "qmailqueue", "", `$QMAILQUEUE = "`+value+`" (it overrides path = "/var/qmail/bin/qmail-queue")`)
	}
	t.Setenv("QMAILQUEUE", "")
	hookstest.Build(t, "qmailqueue", "") // an empty $QMAILQUEUE counts as unset
}

func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings string
		env      map[string]string
		code     int
		text     string
	}{
		// Permanent failures answer 554, as qmail-smtpd does.
		{"exit 11", "", map[string]string{"QQCHECK_EXIT": "11"}, 554, "554 5.1.3 qmail-queue: address too long (#5.1.3)"},
		{"exit 115", "", map[string]string{"QQCHECK_EXIT": "115"}, 554, "554 5.1.3 qmail-queue: address too long (#5.1.3)"},
		{"exit 31", "", map[string]string{"QQCHECK_EXIT": "31"}, 554, "5.3.0 qmail-queue: mail server permanently refuses"},
		{"exit 53", "", map[string]string{"QQCHECK_EXIT": "53"}, 451, "4.3.0 qmail-queue: write error or disk full (#4.3.0)"},
		{"exit 81", "", map[string]string{"QQCHECK_EXIT": "81"}, 451, "qmail-queue: internal bug (#4.3.0)"},
		{"exit 91", "", map[string]string{"QQCHECK_EXIT": "91"}, 451, "qmail-queue: envelope format error (#4.3.0)"},
		{"killed", "", map[string]string{"QQCHECK_SIGNAL": "1"}, 451, "qmail-queue: crashed"},
		{"hung", `timeout = "1s"`, map[string]string{"QQCHECK_HANG": "1"}, 451, "qmail-queue: timeout (#4.3.0)"},
		{"exit 82", "", map[string]string{"QQCHECK_EXIT": "82", "QQCHECK_FD6": "DSorry, no mailbox here by that name (#5.1.1)"}, 554, "5.1.1 Sorry, no mailbox here by that name (#5.1.1)"},
		// Without D or Z: 451, and the first byte is dropped, as qmail-smtpd does.
		{"exit 82 without D or Z", "", map[string]string{"QQCHECK_EXIT": "82", "QQCHECK_FD6": "Sorry, over quota"}, 451, "451 4.3.0 orry, over quota"},
		{"exit 88", "", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "Zvirus scanner busy (#4.3.0)"}, 451, "virus scanner busy (#4.3.0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, _, _ := send(t, `path = "`+qqcheck+`"`+"\n"+tc.settings, tc.env)
			t.Logf("reply: %s", rep)
			hookstest.Expect(t, rep, tc.code, tc.text)
		})
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, wantErr string }{
		{`path = "qmail-queue"`, "path"},
		{`path = ""`, "path"},
		{`timeout = "soon"`, "timeout"},
		{`timeout = "-1s"`, "timeout"},
		{`timeout = 5`, "timeout"},
		{`pth = "/x"`, "pth"},
		{`line_endings = "cr"`, "line_endings"},
	} {
		hookstest.ExpectBuildError(t, "qmailqueue", tc.settings, tc.wantErr)
	}
	hookstest.Build(t, "qmailqueue", "") // the defaults build
}
