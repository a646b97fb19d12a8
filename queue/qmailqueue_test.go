package queue_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
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
		// qmail_close answers 115 like 11 ("compatibility").
		{"115", true, [3]int{5, 1, 3}, "qmail-queue: address too long (#5.1.3)"},
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

func TestQmailQueueIgnoresQMAILQUEUE(t *testing.T) {
	// The plugin resolves $QMAILQUEUE once, at start; QmailQueue runs Path.
	t.Setenv("QMAILQUEUE", filepath.Join(t.TempDir(), "missing"))
	r := runQQ(t, &queue.QmailQueue{Path: qqcheck}, "a@example.org", []string{"b@example.test"}, testMessage, nil)
	if r.err != nil {
		t.Fatalf("Queue with a bogus QMAILQUEUE set: %v", r.err)
	}
}

func TestQmailQueueMissingProgramIsTemporary(t *testing.T) {
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
			false, [3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)"},
		{"88 D on stderr", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "Dmessage contains a virus (#5.7.1)"},
			true, [3]int{5, 7, 1}, "message contains a virus (#5.7.1)"},
		{"88 Z on stderr", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "Zscanner unavailable\r\nsecond line"},
			false, [3]int{4, 3, 0}, "scanner unavailable"},
		// qmail-smtpd drops the first byte whatever it is.
		{"88 without D or Z", map[string]string{"QQCHECK_EXIT": "88", "QQCHECK_STDERR": "something odd"},
			false, [3]int{4, 3, 0}, "omething odd"},
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

// standIn writes a shell-script qmail-queue stand-in running body, with
// $DIR set to a folder of its own, and returns its path and that folder.
func standIn(t *testing.T, body string) (prog, dir string) {
	t.Helper()
	dir = t.TempDir()
	prog = filepath.Join(dir, "qmail-queue")
	script := "#!/bin/sh\nDIR='" + dir + "'\n" + body + "\n"
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, dir
}

// readInput is the shell for reading the message (fd 0), then the
// envelope (fd 1), as qmail-queue does.
const readInput = `cat >/dev/null && cat <&1 >/dev/null || exit 54`

func TestQmailQueueExitCodesFromAShellProgram(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		permanent    bool
		enhanced     [3]int
		text         string
	}{
		{"exit 115", readInput + "; exit 115", true, [3]int{5, 1, 3}, "qmail-queue: address too long (#5.1.3)"},
		{"exit 82 D", readInput + "; printf 'Dno such user (#5.1.1)\\n' >&6; exit 82", true, [3]int{5, 1, 1}, "no such user (#5.1.1)"},
		{"exit 82 Z", readInput + "; printf 'Ztry again later' >&6; exit 82", false, [3]int{4, 3, 0}, "try again later"},
		// qmail-smtpd answers 451 and drops the first byte, whatever it is.
		{"exit 82 neither D nor Z", readInput + "; printf 'Sorry, spam' >&6; exit 82", false, [3]int{4, 3, 0}, "orry, spam"},
		{"exit 82 neither, 5.x.x code", readInput + "; printf 'X refused (#5.7.1)' >&6; exit 82", false, [3]int{4, 3, 0}, "refused (#5.7.1)"},
		// qmail_close ignores a text of two bytes or less.
		{"exit 82 two bytes", readInput + "; printf 'Dx' >&6; exit 82", false, [3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)"},
		{"exit 82 D then nothing", readInput + "; printf 'D\\n\\n' >&6; exit 82", true, [3]int{5, 3, 0}, "qmail-queue: permanent problem (#5.3.0)"},
		{"exit 82 two lines", readInput + "; printf 'Zfirst\\nsecond' >&6; exit 82", false, [3]int{4, 3, 0}, "first"},
		{"exit 88 D on stderr", readInput + "; echo 'Dvirus found (#5.7.1)' >&2; exit 88", true, [3]int{5, 7, 1}, "virus found (#5.7.1)"},
		// More than a pipe holds: the program must not block writing it.
		{"exit 82 with 200 KB on fd 6", readInput + "; head -c 200000 /dev/zero | tr '\\0' 'y' | sed '1s/^/Z/' >&6; exit 82",
			false, [3]int{4, 3, 0}, strings.Repeat("y", 400)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			prog, _ := standIn(t, tc.script)
			tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 64<<10)
			_, err := (&queue.QmailQueue{Path: prog, Timeout: 10 * time.Second}).Queue(context.Background(), tx)
			checkQQError(t, err, tc.permanent, tc.enhanced, tc.text)
		})
	}
}

// TestQmailQueueChildGetsOnlyItsDescriptors: the program has fd 0, 1, 2
// and 6 and nothing else, even when smtpd holds a descriptor that is not
// close-on-exec (as one inherited from a supervisor is); what it writes on
// stderr goes to the log.
func TestQmailQueueChildGetsOnlyItsDescriptors(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd")
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	leaked, err := syscall.Dup(int(devnull.Fd())) // dup(2): not close-on-exec
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(leaked)
	// ls lists its own descriptors: its fd 3 is the directory it reads.
	prog, dir := standIn(t, readInput+`; echo "note from the queue program" >&2; exec ls /proc/self/fd >"$DIR/fds"`)
	var log hookstest.LogBuffer
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 64<<10)
	if _, err := (&queue.QmailQueue{Path: prog, Log: log.Logger()}).Queue(context.Background(), tx); err != nil {
		t.Fatalf("Queue: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fds"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(string(b)), " "); got != "0 1 2 3 6" {
		t.Errorf("the program had descriptors %s, want 0 1 2 6 (and ls's own 3); this process holds fd %d without close-on-exec", got, leaked)
	}
	if l := log.String(); !strings.Contains(l, "qmail-queue wrote on stderr") || !strings.Contains(l, "note from the queue program") ||
		!strings.Contains(l, "queue_id="+tx.ID) {
		t.Errorf("the program's stderr is not logged with the queue id:\n%s", l)
	}
}

// TestQmailQueueKilledAfterReadingEverythingIsAPossibleDuplicate: a
// program killed at the deadline after it read the whole message and
// envelope may have queued the message: the client gets 451 and the log
// says "possible duplicate". One killed before that is not.
func TestQmailQueueKilledAfterReadingEverythingIsAPossibleDuplicate(t *testing.T) {
	const ready = `: >"$DIR/ready"; exec sleep 600`
	for _, tc := range []struct {
		name, script string
		duplicate    bool
	}{
		{"read both", readInput + "; " + ready, true},
		{"read both and closed them", readInput + "; exec 0<&- 1>&-; " + ready, true},
		{"read the message only", "cat >/dev/null; " + ready, false},
		{"read nothing", ready, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			prog, dir := standIn(t, tc.script)
			var log hookstest.LogBuffer
			tx := newTx(t, "a@example.org", []string{"b@example.test"}, testMessage, 64<<10)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := (&queue.QmailQueue{Path: prog, Timeout: time.Minute, Log: log.Logger()}).Queue(ctx, tx)
				done <- err
			}()
			waitForFile(t, filepath.Join(dir, "ready"))
			cancel() // the handoff's deadline
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Queue did not return 10s after its deadline")
			}
			checkQQError(t, err, false, [3]int{4, 3, 0}, "qmail-queue: timeout (#4.3.0)")
			logged := strings.Contains(log.String(), "possible duplicate") && strings.Contains(log.String(), "queue_id="+tx.ID)
			if logged != tc.duplicate {
				t.Errorf("possible duplicate logged with the queue id: %v, want %v; log:\n%s", logged, tc.duplicate, log.String())
			}
			if strings.Contains(err.Error(), "possible duplicate") != tc.duplicate {
				t.Errorf("error %q: mention of a possible duplicate should be %v", err, tc.duplicate)
			}
		})
	}
}

// waitForFile waits up to 10 seconds for path to exist.
func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("%s did not appear within 10s", path)
		case <-tick.C:
		}
	}
}
