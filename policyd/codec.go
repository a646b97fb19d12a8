// Package policyd is the server side of Postfix's SMTP access policy
// delegation protocol (Postfix's SMTPD_POLICY_README): Postfix's smtpd,
// told `check_policy_service inet:127.0.0.1:10040` in one of its
// restriction lists, sends a request of name=value lines ended by an empty
// line, and the policy service answers `action=...` and an empty line, on
// a connection Postfix keeps open for further requests.
//
// The package has three parts: the codec (Request, ReadRequest,
// WriteAction, and Query for the client side of a test), the Checker that
// runs a Sluice plugin chain on one request through a server.Session, and
// the Server that accepts connections (TCP or a unix socket), applies the
// timeouts and the connection limit, and answers each request with the
// Checker's action.
package policyd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Limits on one request: Postfix's requests are a few dozen short
// attributes (a client certificate's subject is the longest).
const (
	// MaxLineBytes bounds one name=value line, its newline included.
	MaxLineBytes = 8192
	// MaxAttributes bounds the attributes of one request.
	MaxAttributes = 200
)

// Request is one policy request: its attributes by name. A name Postfix
// sends twice keeps its last value.
type Request map[string]string

// ErrProtocol is wrapped by the errors ReadRequest returns for input that
// is not the policy protocol: the server logs it and closes the
// connection, as SMTPD_POLICY_README asks of a server in trouble.
var ErrProtocol = errors.New("policy protocol error")

// ReadRequest reads one request from r: name=value lines up to an empty
// line. A line may end with LF (as Postfix sends) or CRLF (a person at a
// terminal). It returns io.EOF when r ends before a request starts, and an
// error wrapping ErrProtocol for a line without "=", with an empty name,
// longer than MaxLineBytes, past MaxAttributes, or a request cut off by
// the end of the input.
func ReadRequest(r *bufio.Reader) (Request, error) {
	req := Request{}
	for n := 0; ; n++ {
		line, err := readLine(r)
		if err != nil {
			if err == io.EOF && n == 0 {
				return nil, io.EOF
			}
			if err == io.EOF {
				return nil, fmt.Errorf("%w: the request ended without its empty line", ErrProtocol)
			}
			return nil, err
		}
		if line == "" {
			if n == 0 {
				return nil, fmt.Errorf("%w: an empty request", ErrProtocol)
			}
			return req, nil
		}
		if n >= MaxAttributes {
			return nil, fmt.Errorf("%w: more than %d attributes", ErrProtocol, MaxAttributes)
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("%w: line %d is not name=value: %.40q", ErrProtocol, n+1, line)
		}
		req[name] = value
	}
}

// readLine reads one line without its LF or CRLF.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		frag, err := r.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > MaxLineBytes {
			return "", fmt.Errorf("%w: a line longer than %d bytes", ErrProtocol, MaxLineBytes)
		}
		switch {
		case err == nil:
			s := strings.TrimSuffix(string(b[:len(b)-1]), "\r")
			return s, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(b) > 0:
			return "", fmt.Errorf("%w: the request ended in the middle of a line", ErrProtocol)
		default:
			return "", err
		}
	}
}

// WriteTo writes the request as Postfix sends it: name=value lines in
// name order, then the empty line. Names and values must not contain a
// newline; one that does is an error and nothing is written.
func (r Request) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(r))
	for name := range r {
		if strings.ContainsAny(name, "=\n") || strings.Contains(r[name], "\n") {
			return 0, fmt.Errorf("attribute %q: names may not contain = or a newline, values no newline", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	// "request" first, as Postfix sends it.
	sort.SliceStable(names, func(i, j int) bool { return names[i] == "request" && names[j] != "request" })
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(r[name])
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// WriteAction writes the answer to one request: "action=" and action, then
// the empty line. A newline in action (a plugin's multi-line text) becomes
// a space: the protocol has one line per attribute.
func WriteAction(w io.Writer, action string) error {
	action = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(action)
	_, err := io.WriteString(w, "action="+action+"\n\n")
	return err
}

// ReadAction reads a policy server's answer: attribute lines up to the
// empty line, of which it returns the action's value. An answer without an
// action is an error.
func ReadAction(r *bufio.Reader) (string, error) {
	resp, err := ReadRequest(r)
	if err == io.EOF {
		return "", fmt.Errorf("%w: the server closed the connection without an answer", ErrProtocol)
	}
	if err != nil {
		return "", err
	}
	action, ok := resp["action"]
	if !ok {
		return "", fmt.Errorf("%w: the answer has no action attribute", ErrProtocol)
	}
	return action, nil
}
