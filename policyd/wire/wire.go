// Package wire is the wire format of Postfix's SMTP access policy
// delegation protocol (Postfix's SMTPD_POLICY_README), for both sides: a
// request is name=value lines ended by an empty line, the answer is
// `action=...` and an empty line, on a connection kept open for further
// requests. Request, ReadRequest and WriteAction are the server's side
// (package policyd, `smtpd policy`); AppendAttribute, ReadAction and Query
// the client's (the policy plugin, `smtpd policy -test`). A leaf package:
// a client needs none of the server.
package wire

import (
	"bufio"
	"bytes"
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

// Limits on one answer, which is an action and little else: a longer line
// or more attributes is a garbled answer.
const (
	maxAnswerLineBytes  = 4096
	maxAnswerAttributes = 64
)

// Request is one policy request: its attributes by name. A name Postfix
// sends twice keeps its last value.
type Request map[string]string

// ErrProtocol is matched (errors.Is) by the errors ReadRequest and
// ReadAction return for input that is not the policy protocol, each a
// *ProtocolError: the server logs it and closes the connection, as
// SMTPD_POLICY_README asks of a server in trouble; a client does not send
// the request again.
var ErrProtocol = errors.New("policy protocol error")

// ProtocolError is input that is not the policy protocol; Problem says
// what is wrong with it ("a line longer than 4096 bytes").
type ProtocolError struct{ Problem string }

func (e *ProtocolError) Error() string { return ErrProtocol.Error() + ": " + e.Problem }

// Is makes errors.Is(err, ErrProtocol) hold.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

func protocolError(format string, args ...any) error {
	return &ProtocolError{Problem: fmt.Sprintf(format, args...)}
}

// ReadRequest reads one request from r: name=value lines up to an empty
// line. A line may end with LF (as Postfix sends) or CRLF (a person at a
// terminal). It returns io.EOF when r ends before a request starts, and a
// *ProtocolError for a line without "=", with an empty name, longer than
// MaxLineBytes, past MaxAttributes, an empty request, or a request cut off
// by the end of the input.
func ReadRequest(r *bufio.Reader) (Request, error) {
	req := make(Request, 32) // Postfix 3 sends about 30 attributes
	n, err := readAttributes(r, MaxLineBytes, MaxAttributes, func(name, value []byte) {
		req[string(name)] = string(value)
	})
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, protocolError("an empty request")
	}
	return req, nil
}

// ReadAction reads a policy server's answer: attribute lines up to the
// empty line, of which it returns the value of the (first) action. It
// returns io.EOF when r ends before the answer starts (the server closed
// the connection), and a *ProtocolError for an answer that breaks the
// protocol as ReadRequest says (with a line limit of 4096 bytes and 64
// attributes) or has no action.
func ReadAction(r *bufio.Reader) (string, error) {
	var action string
	found := false
	_, err := readAttributes(r, maxAnswerLineBytes, maxAnswerAttributes, func(name, value []byte) {
		if !found && string(name) == "action" {
			action, found = string(value), true
		}
	})
	if err != nil {
		return "", err
	}
	if !found {
		return "", protocolError("no action attribute")
	}
	return action, nil
}

// readAttributes reads name=value lines from r up to the empty line,
// passing each attribute to fn (its slices are valid only during the
// call), and returns how many it read. It returns io.EOF when r ends
// before the first line, r's own errors, and a *ProtocolError for a line
// without "=" or with an empty name, one longer than maxLine bytes (its
// newline included), more than maxAttrs attributes, or input cut off
// before the empty line.
func readAttributes(r *bufio.Reader, maxLine, maxAttrs int, fn func(name, value []byte)) (int, error) {
	for n := 0; ; n++ {
		line, err := readLine(r, maxLine)
		if err == io.EOF && n > 0 {
			err = protocolError("cut off before its empty line")
		}
		if err != nil {
			return n, err
		}
		if len(line) == 0 {
			return n, nil
		}
		if n >= maxAttrs {
			return n, protocolError("more than %d attributes", maxAttrs)
		}
		name, value, ok := bytes.Cut(line, []byte("="))
		if !ok || len(name) == 0 {
			return n, protocolError("line %d: %.80q is no name=value attribute", n+1, line)
		}
		fn(name, value)
	}
}

// readLine reads one line without its LF or CRLF. The slice is valid until
// the next read of r (it is r's buffer unless the line is longer).
func readLine(r *bufio.Reader, maxLine int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		long := append([]byte(nil), line...)
		for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxLine {
			line, err = r.ReadSlice('\n')
			long = append(long, line...)
		}
		line = long
	}
	if len(line) > maxLine {
		return nil, protocolError("a line longer than %d bytes", maxLine)
	}
	switch {
	case err == nil:
		return bytes.TrimSuffix(line[:len(line)-1], []byte("\r")), nil
	case err == io.EOF && len(line) > 0:
		return nil, protocolError("cut off in the middle of a line")
	default:
		return nil, err
	}
}

// AppendAttribute appends the attribute line name=value to b. The caller
// sees to it that name holds no "=" and neither a newline.
func AppendAttribute(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = append(b, value...)
	return append(b, '\n')
}

// WriteTo writes the request as Postfix sends it: name=value lines in
// name order, then the empty line. Names and values must not contain a
// newline; one that does is an error and nothing is written.
func (r Request) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(r))
	size := 1
	for name := range r {
		if strings.ContainsAny(name, "=\n") || strings.Contains(r[name], "\n") {
			return 0, fmt.Errorf("attribute %q: names may not contain = or a newline, values no newline", name)
		}
		names = append(names, name)
		size += len(name) + len(r[name]) + 2
	}
	sort.Strings(names)
	// "request" first, as Postfix sends it.
	sort.SliceStable(names, func(i, j int) bool { return names[i] == "request" && names[j] != "request" })
	b := make([]byte, 0, size)
	for _, name := range names {
		b = AppendAttribute(b, name, r[name])
	}
	n, err := w.Write(append(b, '\n'))
	return int64(n), err
}

var oneLine = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

// WriteAction writes the answer to one request: "action=" and action, then
// the empty line. A newline in action (a plugin's multi-line text) becomes
// a space: the protocol has one line per attribute.
func WriteAction(w io.Writer, action string) error {
	if strings.ContainsAny(action, "\r\n") {
		action = oneLine.Replace(action)
	}
	_, err := w.Write(append(AppendAttribute(nil, "action", action), '\n'))
	return err
}
