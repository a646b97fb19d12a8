package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/transaction"
)

// DefaultQmailQueuePath is where qmail installs qmail-queue.
const DefaultQmailQueuePath = "/var/qmail/bin/qmail-queue"

// DefaultQmailQueueTimeout bounds one run of qmail-queue.
const DefaultQmailQueueTimeout = 5 * time.Minute

// QmailQueue hands messages to a qmail-queue(8) compatible program: the
// message on its fd 0, the envelope on its fd 1, and its exit code as the
// verdict. A QmailQueue is safe for concurrent use.
type QmailQueue struct {
	// Path is the program to run; "" means DefaultQmailQueuePath. It is
	// used as given: $QMAILQUEUE is the plugin's business (it resolves
	// the variable once, at start).
	Path string
	// Timeout bounds one run; a program still running then is killed and
	// the message deferred. Zero means DefaultQmailQueueTimeout.
	Timeout time.Duration
	// CRLF passes the message with its CRLF line endings as received. By
	// default each CRLF becomes LF, as qmail-smtpd does: qmail stores and
	// delivers LF-terminated messages, and a CR left in its queue reaches
	// mailboxes and is sent on as CR CR LF by qmail-remote. A lone CR is
	// kept either way.
	CRLF bool
	// Log receives what the program wrote on stderr after a successful
	// run, and the warning that a program killed at the deadline had
	// already read the whole message and envelope (it may have queued
	// it: a possible duplicate). Nil means slog.Default().
	Log *slog.Logger
}

// Program returns the program Queue runs: Path, else
// DefaultQmailQueuePath.
func (q *QmailQueue) Program() string {
	if q.Path != "" {
		return q.Path
	}
	return DefaultQmailQueuePath
}

func (q *QmailQueue) log() *slog.Logger {
	if q.Log != nil {
		return q.Log
	}
	return slog.Default()
}

func (q *QmailQueue) timeout() time.Duration {
	if q.Timeout > 0 {
		return q.Timeout
	}
	return DefaultQmailQueueTimeout
}

// Queue runs the program once for tx. It returns nil only when the program
// exited 0 after reading the whole message and envelope; otherwise an
// *Error whose Msg carries the meaning of the exit code as qmail-smtpd
// gives it: permanent for exits 11 to 40 and 115 (and a custom error
// text starting with 'D'), temporary for everything else, including a
// crash, a timeout and a program that cannot be started.
func (q *QmailQueue) Queue(ctx context.Context, tx *transaction.Transaction) (Receipt, error) {
	if err := checkEnvelope(tx, "qmail-queue: "); err != nil {
		return Receipt{}, err
	}
	if err := q.run(ctx, tx, Envelope(tx.Sender, tx.Recipients)); err != nil {
		return Receipt{}, err
	}
	return Receipt{ID: tx.ID}, nil
}

// Envelope encodes sender and recipients in qmail-queue's envelope format:
// "F" sender NUL, "T" recipient NUL for each recipient, then a final NUL.
// The addresses must not contain NUL.
func Envelope(sender string, recipients []string) []byte {
	var b bytes.Buffer
	b.WriteByte('F')
	b.WriteString(sender)
	b.WriteByte(0)
	for _, r := range recipients {
		b.WriteByte('T')
		b.WriteString(r)
		b.WriteByte(0)
	}
	b.WriteByte(0)
	return b.Bytes()
}

// qqRun is one run of the program: the pipes the parent keeps.
type qqRun struct {
	cmd      *exec.Cmd
	msg, env *os.File // write ends: fd 0 and fd 1 of the child
	custom   *os.File // read end of the child's fd 6
	// customText is what collectCustom read from custom.
	customText chan string
	stderr     *limitedBuffer
	// pipes identify the message and envelope pipes, to find them again
	// among the child's descriptors.
	pipes [2]os.FileInfo
	// sent is set once the whole message and envelope are written (the
	// message pipe closed, the envelope pipe about to be).
	sent atomic.Bool
	// atKill is what the program had read when the deadline killed it;
	// set by cmd.Cancel, read after cmd.Wait returned.
	atKill readState
}

// readState says how much of its input a killed program had read.
type readState int

const (
	notKilled   readState = iota
	readPart              // part of the message or envelope was still unread
	readAll               // the program had read both pipes to the end (or closed them)
	readUnknown           // the pipes could not be inspected (no /proc)
)

func (q *QmailQueue) run(ctx context.Context, tx *transaction.Transaction, envelope []byte) error {
	ctx, cancel := context.WithTimeout(ctx, q.timeout())
	defer cancel()
	prog := q.Program()
	r, err := startQmailQueue(ctx, prog)
	if err != nil {
		return temporary([3]int{4, 3, 0}, "qmail-queue: unable to run the queue program (#4.3.0)",
			fmt.Errorf("start %s: %w", prog, err))
	}
	defer r.custom.Close()
	writeErr := r.send(tx, envelope, q.CRLF)
	waitErr := r.cmd.Wait()
	err = q.verdict(ctx, prog, r, waitErr, writeErr)
	q.logRun(tx, prog, r, err)
	return err
}

// logRun logs what the client's reply does not say: the stderr of a
// program that succeeded (a failure's stderr is in the error), and a
// program killed at the deadline after it had read everything, which may
// have queued the message although the client is told 451.
func (q *QmailQueue) logRun(tx *transaction.Transaction, prog string, r *qqRun, err error) {
	switch {
	case err == nil && r.stderr.buf.Len() > 0:
		q.log().Warn("qmail-queue wrote on stderr", "queue_id", tx.ID, "program", prog, "stderr", r.stderr.String())
	case r.atKill == readAll || r.atKill == readUnknown:
		how := "it had read the whole message and envelope"
		if r.atKill == readUnknown {
			how = "the whole message and envelope were written to it (whether it read them is unknown)"
		}
		q.log().Warn("qmail-queue killed at the deadline: possible duplicate", "queue_id", tx.ID, "program", prog,
			"timeout", q.timeout().String(), "why", how+"; it may have queued the message while the client was told 451 and will send it again",
			"stderr", r.stderr.String())
	}
}

// startQmailQueue starts prog with a pipe on fd 0 (message), fd 1
// (envelope) and fd 6 (notqmail's custom error channel), and stderr kept
// for exit 88 and the log. Every other descriptor is closed in the child.
func startQmailQueue(ctx context.Context, prog string) (*qqRun, error) {
	var parentEnds, childEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	for range 3 {
		rd, wr, err := os.Pipe()
		if err != nil {
			closeAll(parentEnds)
			closeAll(childEnds)
			return nil, fmt.Errorf("create a pipe: %w", err)
		}
		parentEnds = append(parentEnds, wr)
		childEnds = append(childEnds, rd)
	}
	// The third pipe runs the other way: the child writes fd 6.
	parentEnds[2], childEnds[2] = childEnds[2], parentEnds[2]
	r := &qqRun{msg: parentEnds[0], env: parentEnds[1], custom: parentEnds[2], customText: make(chan string, 1),
		stderr: &limitedBuffer{max: 1024}}
	for i := range r.pipes {
		if fi, err := parentEnds[i].Stat(); err == nil {
			r.pipes[i] = fi
		}
	}
	r.cmd = exec.CommandContext(ctx, prog)
	r.cmd.Stdin = childEnds[0]
	r.cmd.Stdout = childEnds[1]
	r.cmd.Stderr = r.stderr
	r.cmd.ExtraFiles = childFiles(childEnds[2])
	r.cmd.WaitDelay = time.Second
	r.cmd.Cancel = func() error {
		r.atKill = r.inputState()
		return r.cmd.Process.Kill()
	}
	err := r.cmd.Start()
	// The child has its copies; ours would keep the pipes open forever.
	closeAll(childEnds)
	if err != nil {
		closeAll(parentEnds)
		return nil, err
	}
	go r.collectCustom() // ends when the pipe closes, at the latest at r.custom.Close
	return r, nil
}

// childFiles is the child's descriptors from 3 on: fd 6 is the custom
// error pipe, and every other number up to the highest descriptor open
// here is nil, which makes os/exec close it in the child. Go opens its
// own descriptors close-on-exec, but not those smtpd inherited (a
// supervisor's lock file, a socket a wrapper left open): without this
// they would reach qmail-queue, as qmail-smtpd's do not.
func childFiles(custom *os.File) []*os.File {
	files := []*os.File{nil, nil, nil, custom} // fd 3, 4, 5 closed; fd 6
	for fd := len(files) + 3; fd <= highestOpenFD(); fd++ {
		files = append(files, nil)
	}
	return files
}

// highestOpenFD returns the highest descriptor number open in this
// process, or -1 when it cannot tell (no /proc/self/fd or /dev/fd).
func highestOpenFD() int {
	for _, dir := range []string{"/proc/self/fd", "/dev/fd"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		highest := -1
		for _, e := range entries {
			if n, err := strconv.Atoi(e.Name()); err == nil && n > highest {
				highest = n
			}
		}
		return highest
	}
	return -1
}

// inputState looks, just before the child is killed, whether it had read
// its fd 0 and fd 1 to the end: through /proc/PID/fd, a pipe the child
// still has open is opened once more and read without blocking (the
// child is about to die, so taking a byte from it changes nothing).
func (r *qqRun) inputState() readState {
	if !r.sent.Load() {
		return readPart
	}
	dir := "/proc/" + strconv.Itoa(r.cmd.Process.Pid) + "/fd/"
	if _, err := os.Stat(dir); err != nil {
		return readUnknown
	}
	for fd, pipe := range r.pipes {
		name := dir + strconv.Itoa(fd)
		fi, err := os.Stat(name)
		if err != nil || pipe == nil || !os.SameFile(fi, pipe) {
			continue // closed or replaced: the child is done with it
		}
		f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return readUnknown
		}
		f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := f.Read(make([]byte, 1))
		f.Close()
		switch {
		case n > 0:
			return readPart
		case !errors.Is(err, io.EOF):
			return readUnknown
		}
	}
	return readAll
}

// send streams the message to fd 0 (CRLF turned into LF unless crlf),
// closes it, then writes the envelope to fd 1 and closes it, in the order
// qmail-queue reads them. A write error (the program exited early) is
// returned, but the exit code decides.
func (r *qqRun) send(tx *transaction.Transaction, envelope []byte, crlf bool) error {
	var w interface {
		io.Writer
		Flush() error
	} = bufio.NewWriterSize(r.msg, 64<<10)
	if !crlf {
		w = &lfWriter{w: bufio.NewWriterSize(r.msg, 64<<10)}
	}
	_, err := tx.WriteTo(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := r.msg.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		r.env.Close()
		return fmt.Errorf("write the message to fd 0: %w", err)
	}
	_, err = r.env.Write(envelope)
	// Set before the close, which is what lets the program finish
	// reading: a deadline that finds it done must find sent set.
	r.sent.Store(err == nil)
	if cerr := r.env.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the envelope to fd 1: %w", err)
	}
	return nil
}

// collectCustom reads fd 6 while the program runs, as qmail-smtpd does:
// the first KiB is kept and the rest drained, so a program that writes
// more than a pipe holds does not block on it.
func (r *qqRun) collectCustom() {
	b, _ := io.ReadAll(io.LimitReader(r.custom, 1024))
	io.Copy(io.Discard, r.custom)
	r.customText <- string(b)
}

// readCustom returns what the program wrote on fd 6. It runs after the
// program exited, so the text is in; the short deadline covers a
// grandchild that still holds the pipe open.
func (r *qqRun) readCustom() string {
	r.custom.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	return <-r.customText
}

func (q *QmailQueue) verdict(ctx context.Context, prog string, r *qqRun, waitErr, writeErr error) error {
	if waitErr == nil && writeErr == nil {
		return nil
	}
	if ctx.Err() != nil {
		cause := fmt.Errorf("%s did not finish within %s: %w", prog, q.timeout(), ctx.Err())
		if r.atKill == readAll {
			cause = fmt.Errorf("%w; it had read the whole message and envelope: possible duplicate", cause)
		}
		return temporary([3]int{4, 3, 0}, "qmail-queue: timeout (#4.3.0)", cause)
	}
	var exitErr *exec.ExitError
	if !errors.As(waitErr, &exitErr) {
		if waitErr == nil {
			// Exit 0 without having read the whole message: do not trust it.
			return temporary([3]int{4, 3, 0}, "qmail-queue: unable to read the message or envelope (#4.3.0)",
				fmt.Errorf("%s exited 0 but: %w", prog, writeErr))
		}
		return temporary([3]int{4, 3, 0}, "qmail-queue: temporary problem (#4.3.0)", fmt.Errorf("%s: %w", prog, waitErr))
	}
	if !exitErr.Exited() {
		return temporary([3]int{4, 3, 0}, "qmail-queue: crashed (#4.3.0)",
			fmt.Errorf("%s: %s; stderr: %q", prog, exitErr.ProcessState, r.stderr))
	}
	code := exitErr.ExitCode()
	cause := fmt.Errorf("%s exited %d; stderr: %q", prog, code, r.stderr)
	switch code {
	case 82:
		return customError(code, r.readCustom(), cause)
	case 88:
		return customError(code, r.stderr.String(), cause)
	}
	return exitCodeError(code, cause)
}

// qqExit is the documented meaning of one qmail-queue exit code.
type qqExit struct {
	text     string
	enhanced [3]int
}

// qqExits are the exit codes of qmail-queue(8); codes 11 to 40 are
// permanent, all others temporary, except 115 (see exitCodeError).
var qqExits = map[int]qqExit{
	11:  {"address too long", [3]int{5, 1, 3}},
	31:  {"mail server permanently refuses to send the message to any recipients", [3]int{5, 3, 0}},
	51:  {"out of memory", [3]int{4, 3, 0}},
	52:  {"timeout", [3]int{4, 3, 0}},
	53:  {"write error or disk full", [3]int{4, 3, 0}},
	54:  {"unable to read the message or envelope", [3]int{4, 3, 0}},
	55:  {"unable to read a configuration file", [3]int{4, 3, 0}},
	56:  {"problem making a network connection", [3]int{4, 3, 0}},
	61:  {"problem with the qmail home directory", [3]int{4, 3, 0}},
	62:  {"problem with the queue directory", [3]int{4, 3, 0}},
	63:  {"problem with queue/pid", [3]int{4, 3, 0}},
	64:  {"problem with queue/mess", [3]int{4, 3, 0}},
	65:  {"problem with queue/intd", [3]int{4, 3, 0}},
	66:  {"problem with queue/todo", [3]int{4, 3, 0}},
	71:  {"mail server temporarily refuses to send the message to any recipients", [3]int{4, 3, 0}},
	72:  {"connection to mail server timed out", [3]int{4, 4, 1}},
	73:  {"connection to mail server rejected", [3]int{4, 4, 1}},
	74:  {"communication with mail server failed", [3]int{4, 4, 2}},
	81:  {"internal bug", [3]int{4, 3, 0}},
	91:  {"envelope format error", [3]int{4, 3, 0}},
	115: {"address too long", [3]int{5, 1, 3}},
}

// exitCodeError maps a non-zero exit code to its reply as qmail-smtpd
// does (notqmail qmail.c, qmail_close): 11 to 40 permanent, and 115 too,
// which qmail_close answers like 11 ("case 115: /* compatibility */",
// IndiMail's QQ_COMPAT in qmail.h); every other code temporary.
func exitCodeError(code int, cause error) error {
	perm := code >= 11 && code <= 40 || code == 115
	e, known := qqExits[code]
	if !known {
		e = qqExit{"temporary problem", [3]int{4, 3, 0}}
		if perm {
			e = qqExit{"permanent problem", [3]int{5, 3, 0}}
		}
	}
	msg := fmt.Sprintf("qmail-queue: %s (#%d.%d.%d)", e.text, e.enhanced[0], e.enhanced[1], e.enhanced[2])
	return &Error{Permanent: perm, Enhanced: e.enhanced, Msg: msg, Err: cause}
}

var hashCode = regexp.MustCompile(`\(#([245])\.(\d{1,3})\.(\d{1,3})\)`)

// customError turns the text of a custom error (notqmail's exit 82 on
// fd 6, IndiMail's exit 88 on stderr) into a reply the way qmail-smtpd
// does (notqmail qmail.c qmail_close and qmail-smtpd.c smtp_data;
// IndiMail qmail.c and smtpd.c):
//
//   - text of 2 bytes or less is ignored: the exit is then an ordinary
//     temporary failure (qmail_close uses the text only when errlen > 2);
//   - the first byte is the verdict and never part of the reply:
//     'D' is permanent (554), any other byte temporary (451) — qmail-smtpd
//     writes "554 " for 'D', else "451 ", then the text after its first
//     byte, so "Zbusy" and "Xbusy" both give "451 busy";
//   - the reply text is the rest of the first line, control characters
//     dropped, at most 400 bytes; an enhanced code written as "(#5.7.1)"
//     is used when its class matches.
func customError(code int, text string, cause error) error {
	if len(text) <= 2 {
		return exitCodeError(code, cause)
	}
	perm := text[0] == 'D'
	line, _, _ := strings.Cut(text[1:], "\n")
	line = strings.TrimSpace(printable(line))
	enhanced := [3]int{4, 3, 0}
	if perm {
		enhanced = [3]int{5, 3, 0}
	}
	if m := hashCode.FindStringSubmatch(line); m != nil && (m[1] == "5") == perm && m[1] != "2" {
		enhanced = [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
	}
	if line == "" {
		line = "qmail-queue: temporary problem (#4.3.0)"
		if perm {
			line = "qmail-queue: permanent problem (#5.3.0)"
		}
	}
	if len(line) > 400 {
		line = line[:400]
	}
	return &Error{Permanent: perm, Enhanced: enhanced, Msg: line, Err: cause}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// printable drops control characters and non-ASCII bytes, so a program's
// text cannot break the reply line.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' && r != '\t' || r >= 127 {
			return -1
		}
		return r
	}, s)
}

// limitedBuffer keeps the first max bytes written to it and discards the
// rest, so a chatty program cannot fill memory.
type limitedBuffer struct {
	max int
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string { return b.buf.String() }

// lfWriter turns each CRLF into LF on its way to w; a lone CR passes.
type lfWriter struct {
	w  *bufio.Writer
	cr bool // the last byte written was a CR, not yet passed on
}

func (l *lfWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if l.cr {
			l.cr = false
			if p[0] != '\n' {
				if err := l.w.WriteByte('\r'); err != nil {
					return 0, err
				}
			}
		}
		i := bytes.IndexByte(p, '\r')
		if i < 0 {
			if _, err := l.w.Write(p); err != nil {
				return 0, err
			}
			break
		}
		if _, err := l.w.Write(p[:i]); err != nil {
			return 0, err
		}
		l.cr = true
		p = p[i+1:]
	}
	return n, nil
}

// Flush passes on a trailing CR and flushes w.
func (l *lfWriter) Flush() error {
	if l.cr {
		l.cr = false
		if err := l.w.WriteByte('\r'); err != nil {
			return err
		}
	}
	return l.w.Flush()
}
