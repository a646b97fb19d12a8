package external

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

// Version is the protocol version Sluice speaks, sent in the hello as
// "sluice".
const Version = 1

// forwarded are the hooks a program may declare, in firing order. auth is
// not among them (a plugin at auth makes the server offer AUTH, and a
// password has no business on a pipe), nor mail_pre, rcpt_pre and
// received_line (they rewrite), nor queue and the observers.
var forwarded = []hooks.Hook{
	hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo, hooks.HookMail,
	hooks.HookRcpt, hooks.HookRcptOK, hooks.HookData, hooks.HookDataHeadersEnd,
	hooks.HookDataPost, hooks.HookQueuePre, hooks.HookReset, hooks.HookDisconnect,
	hooks.HookVrfy, hooks.HookNoop, hooks.HookHelp, hooks.HookQuit,
	hooks.HookUnrecognized,
}

// hello is Sluice's first line to the program.
type hello struct {
	Sluice  int      `json:"sluice"`
	Hooks   []string `json:"hooks"`
	Timeout int64    `json:"timeout_ms"`
	MaxBody int64    `json:"max_body"`
}

// handshake is the program's answer to the hello.
type handshake struct {
	Hooks      []string `json:"hooks"`
	Concurrent bool     `json:"concurrent"`
}

// request is one hook call. The field order is part of the protocol: "id"
// comes first and "hook" second, so a program that does not parse JSON
// (a shell loop) can cut them off the front of the line.
type request struct {
	ID          uint64          `json:"id"`
	Hook        string          `json:"hook"`
	Connection  connInfo        `json:"connection"`
	Transaction *txInfo         `json:"transaction,omitempty"`
	Args        json.RawMessage `json:"args"`
}

type connInfo struct {
	ID         string                     `json:"id"`
	Listener   string                     `json:"listener"`
	RemoteIP   string                     `json:"remote_ip"`
	RemotePort uint16                     `json:"remote_port"`
	LocalIP    string                     `json:"local_ip"`
	LocalPort  uint16                     `json:"local_port"`
	RemoteHost string                     `json:"remote_host"`
	Helo       string                     `json:"helo"`
	ESMTP      bool                       `json:"esmtp"`
	TLS        bool                       `json:"tls"`
	AuthUser   string                     `json:"auth_user"`
	Relay      bool                       `json:"relay"`
	Notes      map[string]json.RawMessage `json:"notes"`
}

type txInfo struct {
	ID         string                     `json:"id"`
	Sender     string                     `json:"sender"`
	Recipients []string                   `json:"recipients"`
	Notes      map[string]json.RawMessage `json:"notes"`
	Headers    [][2]string                `json:"headers,omitempty"`
	Size       *int64                     `json:"size,omitempty"`
	Message    []byte                     `json:"message,omitempty"` // base64 in JSON
}

// response is the program's answer to one request.
type response struct {
	ID              *uint64        `json:"id"`
	Code            string         `json:"code"`
	Msg             string         `json:"msg"`
	Enhanced        string         `json:"enhanced"`
	ReplyCode       int            `json:"reply_code"`
	Detail          string         `json:"detail"`
	Notes           map[string]any `json:"notes"`
	ConnectionNotes map[string]any `json:"connection_notes"`
}

var codes = map[string]hooks.Code{
	"declined":            hooks.Declined,
	"ok":                  hooks.OK,
	"deny":                hooks.Deny,
	"denysoft":            hooks.DenySoft,
	"deny_disconnect":     hooks.DenyDisconnect,
	"denysoft_disconnect": hooks.DenySoftDisconnect,
	"done":                hooks.Done,
}

// result turns a response into the hook's Result; an error is a response
// that breaks the protocol (an unknown code, a malformed enhanced code).
func (r *response) result() (hooks.Result, error) {
	code, ok := codes[mailaddr.LowerASCII(r.Code)]
	if !ok {
		return hooks.Result{}, fmt.Errorf("code %q: want declined, ok, deny, denysoft, deny_disconnect, denysoft_disconnect or done", r.Code)
	}
	res := hooks.Result{Code: code, Msg: r.Msg, ReplyCode: r.ReplyCode, Detail: r.Detail}
	if r.Enhanced != "" {
		e, err := parseEnhanced(r.Enhanced)
		if err != nil {
			return hooks.Result{}, err
		}
		res.Enhanced = e
	}
	if r.ReplyCode != 0 && (r.ReplyCode < 200 || r.ReplyCode > 599) {
		return hooks.Result{}, fmt.Errorf("reply_code %d: want a three-digit SMTP code", r.ReplyCode)
	}
	return res, nil
}

// parseEnhanced reads an RFC 3463 code, "5.7.1".
func parseEnhanced(s string) ([3]int, error) {
	var e [3]int
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return e, fmt.Errorf("enhanced %q: want class.subject.detail, such as \"5.7.1\"", s)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || (i == 0 && n != 2 && n != 4 && n != 5) {
			return e, fmt.Errorf("enhanced %q: want class.subject.detail, such as \"5.7.1\"", s)
		}
		e[i] = n
	}
	return e, nil
}

// dumpNotes encodes every note of n that JSON can carry; nil when there
// are none.
func dumpNotes(n *notes.Notes) map[string]json.RawMessage {
	keys := n.Keys()
	if len(keys) == 0 {
		return nil
	}
	m := make(map[string]json.RawMessage, len(keys))
	for _, k := range keys {
		if b, err := json.Marshal(n.Value(k)); err == nil {
			m[k] = b
		}
	}
	return m
}

// setNotes stores the notes a program set, each under "<instance>.<key>".
// A JSON number that is a whole number is stored as an int, any other as
// a float64; strings, booleans, lists and objects as encoding/json decodes
// them; null removes the note.
func setNotes(n *notes.Notes, instance string, set map[string]any) error {
	for k, v := range set {
		if k == "" || strings.ContainsAny(k, " \t\r\n") {
			return fmt.Errorf("note name %q: want a word with no white space", k)
		}
		key := notes.NewKey[any](instance + "." + k)
		if v == nil {
			key.Delete(n)
			continue
		}
		if num, ok := v.(json.Number); ok {
			if i, err := strconv.Atoi(string(num)); err == nil {
				v = i
			} else if f, err := num.Float64(); err == nil {
				v = f
			}
		}
		key.Set(n, v)
	}
	return nil
}

// connectionInfo describes c for a request.
func connectionInfo(c *connection.Connection) connInfo {
	return connInfo{
		ID: c.ID, Listener: c.Listener,
		RemoteIP: c.RemoteIP().String(), RemotePort: c.Remote.Port(),
		LocalIP: c.Local.Addr().Unmap().String(), LocalPort: c.Local.Port(),
		RemoteHost: c.RemoteHost, Helo: c.Helo, ESMTP: c.ESMTP, TLS: c.TLS != nil,
		AuthUser: c.AuthUser, Relay: c.Relay, Notes: dumpNotes(&c.Notes),
	}
}

// transactionInfo describes tx for a request at hook: the header from
// data_headers_end on, the size from data_post on, and the message at
// data_post when it is no bigger than maxBody.
func transactionInfo(hook hooks.Hook, tx *transaction.Transaction, maxBody int64) (*txInfo, error) {
	t := &txInfo{ID: tx.ID, Sender: tx.Sender, Recipients: tx.Recipients, Notes: dumpNotes(&tx.Notes)}
	if t.Recipients == nil {
		t.Recipients = []string{}
	}
	switch hook {
	case hooks.HookDataHeadersEnd, hooks.HookDataPost, hooks.HookQueuePre:
		for _, f := range tx.Header.Fields() {
			t.Headers = append(t.Headers, [2]string{f.Name, f.Value()})
		}
	}
	if hook == hooks.HookDataPost || hook == hooks.HookQueuePre {
		size := tx.MessageSize()
		t.Size = &size
		if maxBody > 0 && size <= maxBody {
			var b bytes.Buffer
			b.Grow(int(size))
			if _, err := io.Copy(&b, tx.Message()); err != nil {
				return nil, fmt.Errorf("reading the spooled message: %w", err)
			}
			t.Message = b.Bytes()
		}
	}
	return t, nil
}

// args encodes a hook's own arguments, name and value pairs, as a JSON
// object.
func args(kv ...string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // as the rest of the request: "&" stays "&"
	str := func(s string) {
		enc.Encode(s)
		b.Truncate(b.Len() - 1) // Encode's newline
	}
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		str(kv[i])
		b.WriteByte(':')
		str(kv[i+1])
	}
	b.WriteByte('}')
	return b.Bytes()
}
