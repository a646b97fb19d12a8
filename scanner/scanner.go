// Package scanner holds what the content filter plugins (clamav,
// spamassassin, rspamd, milter, execfilter) share: how an admin writes a
// scanner's address, how a plugin connects to it within a timeout, and
// what a scanner failure means for the message.
package scanner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// ParseAddress turns a scanner address as admins write it into a network
// and an address for net.Dial: "unix:/run/clamav/clamd.sock" or an
// absolute path is a unix socket; "inet:127.0.0.1:3310" (Postfix's milter
// spelling), "127.0.0.1:3310" and "[::1]:3310" are TCP.
func ParseAddress(s string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		network, address = "unix", strings.TrimPrefix(s, "unix:")
	case strings.HasPrefix(s, "local:"):
		network, address = "unix", strings.TrimPrefix(s, "local:")
	case strings.HasPrefix(s, "/"):
		network, address = "unix", s
	case strings.HasPrefix(s, "inet:"), strings.HasPrefix(s, "inet6:"):
		network, address = "tcp", s[strings.IndexByte(s, ':')+1:]
		// Postfix also writes inet:port@host.
		if port, host, ok := strings.Cut(address, "@"); ok {
			address = net.JoinHostPort(host, port)
		}
	default:
		network, address = "tcp", s
	}
	if network == "unix" && address == "" {
		return "", "", fmt.Errorf("address %q: no socket path after the prefix", s)
	}
	if network == "tcp" {
		if _, _, err := net.SplitHostPort(address); err != nil {
			return "", "", fmt.Errorf("address %q: want host:port, unix:/path/to/socket or an absolute socket path", s)
		}
	}
	return network, address, nil
}

// Dial connects to network/address within timeout, and within ctx. The
// connection's deadline is ctx's, and a read or write under way when ctx
// is cancelled returns at once; the caller closes the connection.
func Dial(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return &stopConn{Conn: conn, stop: stop}, nil
}

// stopConn is a connection that Dial watches ctx for; Close stops the
// watch.
type stopConn struct {
	net.Conn
	stop func() bool
}

func (c *stopConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// CheckLimits checks the settings the scanning plugins share:
// connect_timeout, timeout and max_size must be positive. timeoutEx and
// sizeEx are the examples the errors give ("60s", "25MB"), the plugin's
// defaults.
func CheckLimits(connectTimeout, timeout time.Duration, maxSize int64, timeoutEx, sizeEx string) error {
	switch {
	case connectTimeout <= 0:
		return fmt.Errorf("connect_timeout = %s: want a positive duration such as \"5s\"", connectTimeout)
	case timeout <= 0:
		return fmt.Errorf("timeout = %s: want a positive duration such as %q", timeout, timeoutEx)
	case maxSize <= 0:
		return fmt.Errorf("max_size = %d: want a positive size such as %q", maxSize, sizeEx)
	}
	return nil
}

// Failure is what a scanner failure (unreachable, timed out, an answer
// that makes no sense) does to the message: Defer (the default, fail
// closed as the rest of Sluice: 451 4.7.0 and the client retries) or
// Accept (the message goes on, with a header field saying the scan did not
// run).
type Failure struct {
	// Accept is failure = "accept".
	Accept bool
}

// ParseFailure reads a failure setting: "defer" (or "") and "accept".
func ParseFailure(key, v string) (Failure, error) {
	switch v {
	case "", "defer":
		return Failure{}, nil
	case "accept":
		return Failure{Accept: true}, nil
	}
	return Failure{}, fmt.Errorf("%s = %q: want \"defer\" (the default: a temporary refusal, the client retries) or \"accept\" (deliver with a header saying the scan did not run)", key, v)
}

// Result is the hook's answer when scanner (the plugin's name) failed
// with err: a DenySoft "451 4.7.0 <scanner> scan failed; try again later"
// that logs err, or, with Accept, a Declined after logging err at WARN and
// adding header (when not "") with value at the end of the message's
// header.
func (f Failure) Result(tx *transaction.Transaction, scanner, header, value string, err error) hooks.Result {
	if f.Accept {
		slog.Default().Warn("scan failed; message accepted unscanned (failure = \"accept\")", "plugin", scanner, "tx", tx.ID, "err", err.Error())
		if header != "" {
			tx.Header.Add(header, value)
		}
		return hooks.Result{}
	}
	return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Msg: scanner + " scan failed; try again later", Enhanced: [3]int{4, 7, 0}, Err: err}
}

// Describe makes a network error readable in the logs: a timeout says
// which timeout, a refused connection says where.
func Describe(what string, err error, timeout time.Duration) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer within %s: %w", what, timeout, err)
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
}
