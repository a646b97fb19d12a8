// Package queue hands accepted messages over to durable storage: a Maildir,
// a qmail-queue(8) compatible program, or a downstream SMTP or LMTP server.
// Each handoff streams the message once from its spool (tx.WriteTo: the
// header with the Received field the core prepended, then the body, byte for
// byte; only qmail-queue gets LF line endings by default, as qmail expects)
// and reports success only once the receiving side has taken
// responsibility for it.
//
// The queue plugins (plugins/maildir, plugins/qmailqueue,
// plugins/smtpforward) are thin wrappers: they build one of the types here
// from their settings and turn its error into a hook result with Result.
package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// Receipt says what a handoff did with a message.
type Receipt struct {
	// ID is the queue id to announce to the client: the transaction's id.
	ID string
	// Path is the file a Maildir delivery created (in new/); "" otherwise.
	Path string
	// RemoteID is the downstream's own queue id when its reply named one
	// ("250 2.0.0 Ok: queued as 4Xyz"); "" otherwise.
	RemoteID string
	// Outcomes say what became of each recipient at a downstream server
	// (Forwarder), in the transaction's order; nil for the other handoffs
	// and when the downstream was not reached.
	Outcomes Outcomes
	// DSN is true when the downstream offered DSN, so that it took the
	// DSN parameters and sends the notices from there on; false means
	// Routes.NotifySuccess must send the success notices itself.
	DSN bool
}

// Error is a failed handoff: the reply the client should get and the cause.
// Handoffs return it for failures they can classify; any other error is a
// local failure and counts as temporary.
type Error struct {
	// Permanent means retrying cannot help (a 5xx reply); false means the
	// client should try again later (a 4xx reply).
	Permanent bool
	// Code is the SMTP reply code. Zero means 554 when Permanent and 451
	// otherwise: qmail-smtpd's replies, and the codes RFC 5321 lists for
	// the end of DATA.
	Code int
	// Enhanced is the RFC 3463 status code for the reply, e.g. {4, 3, 0}.
	Enhanced [3]int
	// Msg is the reply text. It is safe to show to the client: it never
	// holds local paths or internal error text.
	Msg string
	// Err is the cause, for the log only; it may be nil.
	Err error
}

// Error returns the reply text followed by the cause.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func temporary(enhanced [3]int, msg string, err error) *Error {
	return &Error{Enhanced: enhanced, Msg: msg, Err: err}
}

func permanent(enhanced [3]int, msg string, err error) *Error {
	return &Error{Permanent: true, Enhanced: enhanced, Msg: msg, Err: err}
}

// The reply codes of a failed handoff when Error.Code is zero.
const (
	PermanentCode = 554
	TemporaryCode = 451
)

// Result turns a handoff's error into the queue hook's result: nil is OK;
// a permanent *Error is Deny with reply 554 (or its Code); anything else is
// DenySoft with reply 451 ("defer rather than lose"). The full error goes
// into Result.Err for the log; the client sees only Msg.
func Result(err error) hooks.Result {
	if err == nil {
		return hooks.Result{Code: hooks.OK}
	}
	var qe *Error
	if !errors.As(err, &qe) {
		qe = localFailure(err)
	}
	code, reply := hooks.DenySoft, TemporaryCode
	if qe.Permanent {
		code, reply = hooks.Deny, PermanentCode
	}
	if qe.Code != 0 {
		reply = qe.Code
	}
	return hooks.Result{Code: code, ReplyCode: reply, Msg: qe.Msg, Enhanced: qe.Enhanced, Err: err}
}

// localFailure classifies an error of our own (disk, permissions, a
// deadline) as a temporary failure with a generic text.
func localFailure(err error) *Error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		e := temporary([3]int{4, 3, 1}, "Insufficient system storage; try again later", err)
		e.Code = 452 // RFC 5321: insufficient system storage
		return e
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return temporary([3]int{4, 3, 0}, "Queueing timed out; try again later", err)
	}
	return temporary([3]int{4, 3, 0}, "Queueing failed; try again later", err)
}

// checkEnvelope refuses a sender or recipient holding NUL, CR or LF: no
// handoff may let an address forge protocol lines or envelope records.
func checkEnvelope(tx *transaction.Transaction, prefix string) error {
	if strings.ContainsAny(tx.Sender, "\x00\r\n") {
		return permanent([3]int{5, 1, 7}, prefix+"sender address contains a NUL, CR or LF (#5.1.7)", nil)
	}
	if len(tx.Recipients) == 0 {
		return permanent([3]int{5, 5, 1}, prefix+"no recipients (#5.5.1)", nil)
	}
	for _, r := range tx.Recipients {
		if strings.ContainsAny(r, "\x00\r\n") {
			return permanent([3]int{5, 1, 3}, prefix+"recipient address contains a NUL, CR or LF (#5.1.3)", nil)
		}
	}
	return nil
}

// ParseTimeout parses a duration setting such as connect_timeout = "30s".
// An empty value gives def; a value that does not parse or is not positive
// is an error that names the setting.
func ParseTimeout(setting, value string, def time.Duration) (time.Duration, error) {
	if value == "" {
		return def, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return 0, fmt.Errorf("%s = %q: not a duration; write it like \"30s\" or \"5m\"", setting, value)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s = %q: must be positive", setting, value)
	}
	return d, nil
}

// CheckHost validates a downstream address setting ("host = ..."):
// "host:port" with a numeric port, or "unix:" and an absolute socket
// path. example is the "host:port" the error suggests.
func CheckHost(host, example string) error {
	network, addr := Network(host)
	if network == "unix" {
		if !filepath.IsAbs(addr) {
			return fmt.Errorf("host = %q: want \"unix:\" followed by the socket's absolute path", host)
		}
		return nil
	}
	h, port, err := net.SplitHostPort(addr)
	if err != nil || h == "" {
		return fmt.Errorf("host = %q: want \"host:port\" (e.g. %q) or \"unix:/path/to/socket\"", host, example)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("host = %q: the port must be a number from 1 to 65535", host)
	}
	return nil
}

// HeloName returns the EHLO/LHLO name of a "helo = ..." setting: the
// setting, or this machine's name ("localhost" when it has none usable).
func HeloName(helo string) (string, error) {
	if helo == "" {
		h, err := os.Hostname()
		if err != nil || h == "" || strings.ContainsAny(h, " \t\r\n") {
			h = "localhost"
		}
		return h, nil
	}
	if len(helo) > 255 || strings.IndexFunc(helo, func(r rune) bool { return r <= ' ' || r >= 127 }) >= 0 {
		return "", fmt.Errorf("helo = %q: want a host name without spaces or control characters", helo)
	}
	return helo, nil
}
