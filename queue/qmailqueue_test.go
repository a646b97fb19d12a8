package queue_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/queue"
)

// qqRun runs qqcheck through a QmailQueue with the given QQCHECK_*
// settings and returns the error and the files the checker wrote.
type qqRun struct {
	err      error
	message  []byte
	envelope []byte
}

func runQQ(t *testing.T, q *queue.QmailQueue, from string, to []string, msg string, env map[string]string) qqRun {
	t.Helper()
	dir := t.TempDir()
	msgFile, envFile := filepath.Join(dir, "message"), filepath.Join(dir, "envelope")
	t.Setenv("QQCHECK_MESSAGE", msgFile)
	t.Setenv("QQCHECK_ENVELOPE", envFile)
	for k, v := range env {
		t.Setenv(k, v)
	}
	tx := newTx(t, from, to, msg, 64<<10)
	rc, err := q.Queue(context.Background(), tx)
	if err == nil && rc.ID != tx.ID {
		t.Errorf("receipt id %q, want %q", rc.ID, tx.ID)
	}
	r := qqRun{err: err}
	r.message, _ = os.ReadFile(msgFile)
	r.envelope, _ = os.ReadFile(envFile)
	return r
}

func TestQmailQueueDeliversMessageAndEnvelopeExactly(t *testing.T) {
	for _, tc := range []struct {
		name, from string
		to         []string
		msg        string
		envelope   string
		crlf       bool
	}{
		{"two recipients", "a@example.org", []string{"b@example.test", "c@example.test"}, testMessage,
			"Fa@example.org\x00Tb@example.test\x00Tc@example.test\x00\x00", false},
		{"null sender", "", []string{"postmaster@example.test"}, testMessage,
			"F\x00Tpostmaster@example.test\x00\x00", false},
		// Far larger than a pipe's buffer: the message must be streamed.
		{"1 MiB message", "a@example.org", []string{"b@example.test"}, bigMessage(1 << 20),
			"Fa@example.org\x00Tb@example.test\x00\x00", false},
		{"lone CR kept", "a@example.org", []string{"b@example.test"}, "Subject: x\r\n\r\na\rb\r\n",
			"Fa@example.org\x00Tb@example.test\x00\x00", false},
		{"CRLF kept on request", "a@example.org", []string{"b@example.test"}, bigMessage(200 << 10),
			"Fa@example.org\x00Tb@example.test\x00\x00", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runQQ(t, &queue.QmailQueue{Path: qqcheck, Timeout: 10 * time.Second, CRLF: tc.crlf}, tc.from, tc.to, tc.msg, nil)
			if r.err != nil {
				t.Fatalf("Queue: %v", r.err)
			}
			if string(r.envelope) != tc.envelope {
				t.Errorf("envelope %q, want %q", r.envelope, tc.envelope)
			}
			want := wantMessage(tc.msg)
			if !tc.crlf {
				// qmail's own format: every CRLF is LF.
				want = strings.ReplaceAll(want, "\r\n", "\n")
			}
			if string(r.message) != want {
				t.Errorf("message: got %d bytes, want %d; first difference at %d", len(r.message), len(want), firstDiff(string(r.message), want))
			}
		})
	}
}

func TestQmailQueueExitCodes(t *testing.T) {
	for _, tc := range []struct {
		exit      string
		permanent bool
		enhanced  [3]int
		text      string
	}{
		{"11", true, [3]int{5, 1, 3}, "qmail-queue: address too long (#5.1.3)"},
		{"31", true, [3]int{5, 3, 0}, "qmail-queue: mail server permanently refuses to send the message to any recipients (#5.3.0)"},
		{"40", true, [3]int{5, 3, 0}, "qmail-queue: permanent problem (#5.3.0)"},
		{"51", false, [3]int{4, 3, 0}, "qmail-queue: out of memory (#4.3.0)"},
		{"53", false, [3]int{4, 3, 0}, "qmail-queue: write error or disk full (#4.3.0)"},
		{"62", false, [3]int{4, 3, 0}, "qmail-queue: problem with the queue directory (#4.3.0)"},
		{"74", false, [3]int{4, 4, 2}, "qmail-queue: communication with mail server failed (#4.4.2)"},
		{"81", false, [3]int{4, 3, 0}, "qmail-queue: internal bug (#4.3.0)"},
		{"91", false, [3]int{4, 3, 0}, "qmail-queue: envelope format error (#4.3.0)"},
		{"10", false, [3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)"},
		{"41", false, [3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)"},
		{"120", false, [3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)"},
	} {
		t.Run("exit "+tc.exit, func(t *testing.T) {
			r := runQQ(t, &queue.QmailQueue{Path: qqcheck}, "a@example.org", []string{"b@example.test"}, testMessage,
				map[string]string{"QQCHECK_EXIT": tc.exit})
			checkQQError(t, r.err, tc.permanent, tc.enhanced, tc.text)
		})
	}
}

// checkQQError checks the error, the hook result it becomes and the reply
// the client gets.
func checkQQError(t *testing.T, err error, permanent bool, enhanced [3]int, text string) {
	t.Helper()
	var qe *queue.Error
	if !errors.As(err, &qe) {
		t.Fatalf("error %v (%T), want a *queue.Error", err, err)
	}
	if qe.Permanent != permanent || qe.Enhanced != enhanced || qe.Msg != text {
		t.Errorf("got permanent=%v %v %q, want permanent=%v %v %q", qe.Permanent, qe.Enhanced, qe.Msg, permanent, enhanced, text)
	}
	res := queue.Result(err)
	want := hooks.DenySoft
	if permanent {
		want = hooks.Deny
	}
	if res.Code != want || res.Err == nil {
		t.Errorf("Result = %v (Err %v), want %v with the cause logged", res.Code, res.Err, want)
	}
	rep := hooks.ReplyFor(hooks.HookQueue, res)
	wantCode := map[bool]int{true: 554, false: 451}[permanent]
	if rep.Code != wantCode || !strings.Contains(rep.String(), text) {
		t.Errorf("reply %q, want %d with %q", rep, wantCode, text)
	}
}

func TestQmailQueueKilledBySignalIsTemporary(t *testing.T) {
	r := runQQ(t, &queue.QmailQueue{Path: qqcheck}, "a@example.org", []string{"b@example.test"}, testMessage,
		map[string]string{"QQCHECK_SIGNAL": "1"})
	checkQQError(t, r.err, false, [3]int{4, 3, 0}, "qmail-queue: crashed (#4.3.0)")
}

func TestQmailQueueHungProgramIsKilledAfterTimeout(t *testing.T) {
	start := time.Now()
	// The message is larger than a pipe's buffer, so the writer blocks too.
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, bigMessage(256<<10), 64<<10)
	t.Setenv("QQCHECK_HANG", "1")
	_, err := (&queue.QmailQueue{Path: qqcheck, Timeout: time.Second}).Queue(context.Background(), tx)
	checkQQError(t, err, false, [3]int{4, 3, 0}, "qmail-queue: timeout (#4.3.0)")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v with a 1s timeout", d)
	}
}

func TestQmailQueueEnvironmentOverridesPath(t *testing.T) {
	t.Setenv("QMAILQUEUE", qqcheck)
	q := &queue.QmailQueue{Path: "/nonexistent/qmail-queue"}
	if q.Program() != qqcheck {
		t.Fatalf("Program() = %q, want $QMAILQUEUE %q", q.Program(), qqcheck)
	}
	r := runQQ(t, q, "a@example.org", []string{"b@example.test"}, testMessage, nil)
	if r.err != nil {
		t.Fatalf("Queue with QMAILQUEUE set: %v", r.err)
	}
	if string(r.envelope) != "Fa@example.org\x00Tb@example.test\x00\x00" {
		t.Errorf("envelope %q", r.envelope)
	}
}

func TestQmailQueueMissingProgramIsTemporary(t *testing.T) {
	t.Setenv("QMAILQUEUE", "")
	r := runQQ(t, &queue.QmailQueue{Path: filepath.Join(t.TempDir(), "qmail-queue")}, "a@example.org", []string{"b@example.test"}, testMessage, nil)
	checkQQError(t, r.err, false, [3]int{4, 3, 0}, "qmail-queue: unable to run the queue program (#4.3.0)")
}

func TestQmailQueueCustomErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       map[string]string
		permanent bool
		enhanced  [3]int
		text      string
	}{
		{"82 D on fd 6", map[string]string{"QQCHECK_EXIT": "82", "QQCHECK_FD6": "Dno such mailbox here (#5.1.1)\n"},
			true, [3]int{5, 1, 1}, "no such mailbox here (#5.1.1)"},
		{"82 Z on fd 6", map[string]string{"QQCHECK_EXIT": "82", "QQCHECK_FD6": "Zgreylisted, come back later"},
			false, [3]int{4, 3, 0}, "greylisted, come back later"},
		{"82 nothing on fd 6", map[string]string{"QQCHECK_EXIT": "82"},
			false, [3]int{4, 3, 0}, "qmail-queue: custom error (#4.3.0)"},
		{"88 D on stderr", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "Dmessage contains a virus (#5.7.1)"},
			true, [3]int{5, 7, 1}, "message contains a virus (#5.7.1)"},
		{"88 Z on stderr", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "Zscanner unavailable\r\nsecond line"},
			false, [3]int{4, 3, 0}, "scanner unavailable"},
		{"88 without D or Z", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "something odd"},
			false, [3]int{4, 3, 0}, "something odd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runQQ(t, &queue.QmailQueue{Path: qqcheck}, "a@example.org", []string{"b@example.test"}, testMessage, tc.env)
			checkQQError(t, r.err, tc.permanent, tc.enhanced, tc.text)
		})
	}
}

func TestQmailQueueRefusesForgedEnvelopesBeforeExec(t *testing.T) {
	for _, tc := range []struct {
		name, from string
		to         []string
		text       string
	}{
		{"NUL in sender", "a@example.org\x00Tevil@example.net", []string{"b@example.test"}, "sender address"},
		{"LF in recipient", "a@example.org", []string{"b@example.test\nTevil@example.net"}, "recipient address"},
		{"CR in recipient", "a@example.org", []string{"ok@example.test", "b@example.test\r"}, "recipient address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runQQ(t, &queue.QmailQueue{Path: qqcheck}, tc.from, tc.to, testMessage, nil)
			var qe *queue.Error
			if !errors.As(r.err, &qe) || !qe.Permanent || !strings.Contains(qe.Msg, tc.text) {
				t.Fatalf("error %v, want a permanent refusal about the %s", r.err, tc.text)
			}
			if r.envelope != nil || r.message != nil {
				t.Errorf("the program ran (it wrote envelope %q)", r.envelope)
			}
		})
	}
}

// TestQQCheckIsStrict makes sure the checker the tests rely on rejects
// malformed envelopes (exit 91) and accepts a good one.
func TestQQCheckIsStrict(t *testing.T) {
	for _, tc := range []struct {
		env  string
		exit int
	}{
		{"Fa@x\x00Tb@y\x00\x00", 0},
		{"F\x00Tb@y\x00Tc@y\x00\x00", 0},
		{"", 91},
		{"Fa@x\x00\x00", 91},             // no recipient
		{"Fa@x\x00Tb@y\x00", 91},         // no final NUL
		{"Fa@x\x00Tb@y\x00\x00junk", 91}, // bytes after the final NUL
		{"Fa@x\x00Tb@y\r\n\x00\x00", 91}, // CRLF inside an address
		{"Ta@x\x00Tb@y\x00\x00", 91},     // no F record
		{"Fa@x\x00Xb@y\x00\x00", 91},     // unknown record
		{"Fa@x\x00Tb@y", 91},             // truncated
	} {
		rd, wr, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(qqcheck)
		cmd.Stdin = strings.NewReader("Subject: x\r\n\r\nbody\r\n")
		cmd.Stdout = rd
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rd.Close()
		wr.WriteString(tc.env)
		wr.Close()
		err = cmd.Wait()
		exit := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			exit = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if exit != tc.exit {
			t.Errorf("envelope %q: qqcheck exited %d, want %d", tc.env, exit, tc.exit)
		}
	}
}
