package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
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
	// Path is the program to run. The QMAILQUEUE environment variable, when
	// set, overrides it, as it does for qmail-smtpd.
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
}

// Program returns the program Queue runs: $QMAILQUEUE, else Path, else
// DefaultQmailQueuePath.
func (q *QmailQueue) Program() string {
	if p := os.Getenv("QMAILQUEUE"); p != "" {
		return p
	}
	if q.Path != "" {
		return q.Path
	}
	return DefaultQmailQueuePath
}

func (q *QmailQueue) timeout() time.Duration {
	if q.Timeout > 0 {
		return q.Timeout
	}
	return DefaultQmailQueueTimeout
}

// Queue runs the program once for tx. It returns nil only when the program
// exited 0; otherwise an *Error whose Msg carries the documented meaning
// of the exit code, permanent for exits 11 to 40 (and a custom 'D' text),
// temporary for everything else, including a crash, a timeout and a
// program that cannot be started.
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
	stderr   *limitedBuffer
}

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
	return q.verdict(ctx, prog, r, waitErr, writeErr)
}

// startQmailQueue starts prog with a pipe on fd 0 (message), fd 1
// (envelope) and fd 6 (notqmail's custom error channel), and stderr kept
// for exit 88.
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
	r := &qqRun{msg: parentEnds[0], env: parentEnds[1], custom: parentEnds[2], stderr: &limitedBuffer{max: 1024}}
	r.cmd = exec.CommandContext(ctx, prog)
	r.cmd.Stdin = childEnds[0]
	r.cmd.Stdout = childEnds[1]
	r.cmd.Stderr = r.stderr
	r.cmd.ExtraFiles = []*os.File{nil, nil, nil, childEnds[2]} // fd 3, 4, 5 closed; fd 6
	r.cmd.WaitDelay = time.Second
	err := r.cmd.Start()
	// The child has its copies; ours would keep the pipes open forever.
	closeAll(childEnds)
	if err != nil {
		closeAll(parentEnds)
		return nil, err
	}
	return r, nil
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
	if cerr := r.env.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the envelope to fd 1: %w", err)
	}
	return nil
}

// readCustom returns what the program wrote on fd 6. It runs after the
// program exited, so the text is waiting in the pipe; the short deadline
// covers a grandchild that still holds the pipe open.
func (r *qqRun) readCustom() string {
	r.custom.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	b, _ := io.ReadAll(io.LimitReader(r.custom, 1024))
	return string(b)
}

func (q *QmailQueue) verdict(ctx context.Context, prog string, r *qqRun, waitErr, writeErr error) error {
	if waitErr == nil && writeErr == nil {
		return nil
	}
	if ctx.Err() != nil {
		return temporary([3]int{4, 3, 0}, "qmail-queue: timeout (#4.3.0)",
			fmt.Errorf("%s did not finish within %s: %w", prog, q.timeout(), ctx.Err()))
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
		return customError(r.readCustom(), cause)
	case 88:
		return customError(r.stderr.String(), cause)
	}
	return exitCodeError(code, cause)
}

// qqExit is the documented meaning of one qmail-queue exit code.
type qqExit struct {
	text     string
	enhanced [3]int
}

// qqExits are the exit codes of qmail-queue(8); codes 11 to 40 are
// permanent, all others temporary.
var qqExits = map[int]qqExit{
	11: {"address too long", [3]int{5, 1, 3}},
	31: {"mail server permanently refuses to send the message to any recipients", [3]int{5, 3, 0}},
	51: {"out of memory", [3]int{4, 3, 0}},
	52: {"timeout", [3]int{4, 3, 0}},
	53: {"write error or disk full", [3]int{4, 3, 0}},
	54: {"unable to read the message or envelope", [3]int{4, 3, 0}},
	55: {"unable to read a configuration file", [3]int{4, 3, 0}},
	56: {"problem making a network connection", [3]int{4, 3, 0}},
	61: {"problem with the qmail home directory", [3]int{4, 3, 0}},
	62: {"problem with the queue directory", [3]int{4, 3, 0}},
	63: {"problem with queue/pid", [3]int{4, 3, 0}},
	64: {"problem with queue/mess", [3]int{4, 3, 0}},
	65: {"problem with queue/intd", [3]int{4, 3, 0}},
	66: {"problem with queue/todo", [3]int{4, 3, 0}},
	71: {"mail server temporarily refuses to send the message to any recipients", [3]int{4, 3, 0}},
	72: {"connection to mail server timed out", [3]int{4, 4, 1}},
	73: {"connection to mail server rejected", [3]int{4, 4, 1}},
	74: {"communication with mail server failed", [3]int{4, 4, 2}},
	81: {"internal bug", [3]int{4, 3, 0}},
	91: {"envelope format error", [3]int{4, 3, 0}},
}

// exitCodeError maps a non-zero exit code to its reply.
func exitCodeError(code int, cause error) error {
	perm := code >= 11 && code <= 40
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

// customError turns notqmail's and IndiMail's custom error text (exit 82
// on fd 6, exit 88 on stderr) into a reply: a leading 'D' is permanent, a
// leading 'Z' temporary, and the rest of the first line is the text. An
// enhanced code written as "(#5.7.1)" is kept.
func customError(text string, cause error) error {
	line, _, _ := strings.Cut(strings.TrimLeft(text, " \t\r\n"), "\n")
	line = strings.TrimSpace(printable(line))
	perm := strings.HasPrefix(line, "D")
	if perm || strings.HasPrefix(line, "Z") {
		line = strings.TrimSpace(line[1:])
	}
	enhanced := [3]int{4, 3, 0}
	if perm {
		enhanced = [3]int{5, 3, 0}
	}
	if m := hashCode.FindStringSubmatch(line); m != nil && (m[1] == "5") == perm && m[1] != "2" {
		enhanced = [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
	}
	if line == "" {
		line = fmt.Sprintf("qmail-queue: custom error (#%d.%d.%d)", enhanced[0], enhanced[1], enhanced[2])
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
