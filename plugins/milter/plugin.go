// Package milter runs any milter (Sendmail's and Postfix's mail filter
// protocol: OpenDKIM, OpenDMARC, rspamd's proxy, MIMEDefang...) in the
// chain, as Postfix's smtpd_milters does: each SMTP event goes to the
// milter at the matching hook, and the milter's answers and its changes to
// the message are applied. Several milters are several instances (`use =
// "milter"`), each with its own session per connection.
//
// The protocol client is github.com/emersion/go-milter.
package milter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/scanner"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("milter", New) }

// Settings are the keys of a [plugins.milter] table.
type Settings struct {
	// Address is the milter's socket as Postfix writes it:
	// "inet:127.0.0.1:8891", "inet:8891@127.0.0.1", "unix:/run/x.sock"
	// (or "local:"), or plain "127.0.0.1:8891". Required.
	Address string `toml:"address"`
	// ConnectTimeout bounds connecting to the milter. Default "5s"
	// (Postfix's milter_connect_timeout is 30s).
	ConnectTimeout config.Duration `toml:"connect_timeout"`
	// CommandTimeout bounds each exchange with the milter. Default "30s"
	// (Postfix's milter_command_timeout).
	CommandTimeout config.Duration `toml:"command_timeout"`
	// DefaultAction is what happens when the milter cannot be reached or
	// fails: "tempfail" (the default, 451 4.7.0, as Postfix's
	// milter_default_action) or "accept" (go on without this milter for
	// the rest of the connection).
	DefaultAction string `toml:"default_action"`
	// DaemonName is sent as the {daemon_name} macro. Default "sluice".
	DaemonName string `toml:"daemon_name"`
}

// NoteQuarantine (transaction) is the reason a milter asked to
// quarantine the message with; the message is delivered with an
// X-Quarantine field carrying it, for the mailbox side to act on.
var NoteQuarantine = notes.NewKey[string]("milter.quarantine")

// Plugin is a milter instance. It is safe for concurrent use: each
// connection has its own session with the milter.
type Plugin struct {
	name       string
	client     *gomilter.Client
	accept     bool // default_action = "accept"
	daemonName string
	sessions   notes.Key[*session]
	address    string
}

var (
	_ hooks.Connect       = (*Plugin)(nil)
	_ hooks.Helo          = (*Plugin)(nil)
	_ hooks.Ehlo          = (*Plugin)(nil)
	_ hooks.Mail          = (*Plugin)(nil)
	_ hooks.Rcpt          = (*Plugin)(nil)
	_ hooks.DataPost      = (*Plugin)(nil)
	_ hooks.Reset         = (*Plugin)(nil)
	_ hooks.Disconnect    = (*Plugin)(nil)
	_ hooks.InstanceNamer = (*Plugin)(nil)
)

// The actions Sluice applies, offered to every milter.
const actions = gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt | gomilter.OptRemoveRcpt |
	gomilter.OptChangeHeader | gomilter.OptQuarantine | gomilter.OptChangeFrom

// New builds a milter instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{ConnectTimeout: config.Duration{Duration: 5 * time.Second}, CommandTimeout: config.Duration{Duration: 30 * time.Second},
		DefaultAction: "tempfail", DaemonName: "sluice"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.Address == "" {
		return nil, fmt.Errorf(`address is required: the milter's socket, such as "inet:127.0.0.1:8891" or "unix:/run/opendkim/opendkim.sock"`)
	}
	network, address, err := scanner.ParseAddress(s.Address)
	if err != nil {
		return nil, err
	}
	p := &Plugin{name: "milter", daemonName: s.DaemonName, address: s.Address}
	switch s.DefaultAction {
	case "tempfail":
	case "accept":
		p.accept = true
	default:
		return nil, fmt.Errorf("default_action = %q: want \"tempfail\" (451, the client retries) or \"accept\" (go on without the milter)", s.DefaultAction)
	}
	if s.ConnectTimeout.Duration <= 0 || s.CommandTimeout.Duration <= 0 {
		return nil, fmt.Errorf("connect_timeout and command_timeout: want positive durations such as \"5s\"")
	}
	p.client = gomilter.NewClientWithOptions(network, address, gomilter.ClientOptions{
		Dialer:      &net.Dialer{Timeout: s.ConnectTimeout.Duration},
		ReadTimeout: s.CommandTimeout.Duration, WriteTimeout: s.CommandTimeout.Duration,
		ActionMask: actions,
	})
	p.sessions = notes.NewKey[*session]("milter.session." + p.name)
	return p, nil
}

// SetInstanceName learns the instance name: each instance keeps its
// sessions under its own note.
func (p *Plugin) SetInstanceName(name string) {
	p.name = name
	p.sessions = notes.NewKey[*session]("milter.session." + name)
}

// session is one connection's session with the milter.
type session struct {
	mu      sync.Mutex
	s       *gomilter.ClientSession // nil once closed or failed
	failed  bool                    // the milter failed: default_action applies
	doneC   bool                    // the milter accepted the connection: no more calls
	doneTx  bool                    // the milter accepted the message: no more calls until reset
	discard bool                    // the milter discarded the message
}

func (p *Plugin) failure(err error) hooks.Result {
	if p.accept {
		return hooks.Result{}
	}
	return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 0},
		Msg: "Service unavailable; try again later", Err: fmt.Errorf("milter %s at %s: %w", p.name, p.address, err)}
}

// state returns the connection's session, nil when the milter is out of
// the way (failed with default_action = "accept", or accepted the
// connection).
func (p *Plugin) state(c *connection.Connection) *session {
	s, _ := p.sessions.Lookup(&c.Notes)
	return s
}

// Connect opens the session and sends the client's address.
func (p *Plugin) Connect(_ context.Context, c *connection.Connection) hooks.Result {
	st := &session{}
	p.sessions.Set(&c.Notes, st)
	ms, err := p.client.Session()
	if err != nil {
		st.failed = true
		return p.failure(err)
	}
	st.s = ms
	ip := c.Remote.Addr().Unmap()
	family := gomilter.FamilyInet
	if ip.Is6() {
		family = gomilter.FamilyInet6
	}
	host := c.RemoteHost
	if host == "" {
		host = "[" + ip.String() + "]"
	}
	if err := ms.Macros(gomilter.CodeConn, "j", c.Hostname, "{daemon_name}", p.daemonName, "{client_addr}", ip.String(),
		"{client_port}", strconv.Itoa(int(c.Remote.Port())), "{client_name}", host, "{daemon_addr}", c.Local.Addr().Unmap().String(),
		"_", host+" ["+ip.String()+"]"); err != nil {
		return p.fail(st, err)
	}
	act, err := ms.Conn(host, family, c.Remote.Port(), ip.String())
	return p.answer(st, act, err, false)
}

// fail marks the session failed and applies default_action.
func (p *Plugin) fail(st *session, err error) hooks.Result {
	st.failed = true
	if st.s != nil {
		st.s.Close()
		st.s = nil
	}
	return p.failure(err)
}

// answer turns the milter's action into the hook's result. inTx says
// whether the command belongs to a transaction (an accept then covers the
// message, not the connection).
func (p *Plugin) answer(st *session, act *gomilter.Action, err error, inTx bool) hooks.Result {
	if err != nil {
		return p.fail(st, err)
	}
	switch act.Code {
	case gomilter.ActContinue:
		return hooks.Result{}
	case gomilter.ActAccept:
		if inTx {
			st.doneTx = true
		} else {
			st.doneC = true
		}
		return hooks.Result{}
	case gomilter.ActDiscard:
		st.discard, st.doneTx = true, true
		return hooks.Result{}
	case gomilter.ActReject:
		return hooks.Result{Code: hooks.Deny, ReplyCode: 550, Enhanced: [3]int{5, 7, 1}, Msg: "Command rejected", Detail: "milter " + p.name + ": reject"}
	case gomilter.ActTempFail:
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1}, Msg: "Service unavailable - try again later", Detail: "milter " + p.name + ": tempfail"}
	case gomilter.ActReplyCode:
		return replyCode(p.name, act.SMTPCode, act.SMTPText)
	}
	return p.fail(st, fmt.Errorf("unexpected action %q", rune(act.Code)))
}

// replyCode is a milter's own reply: "550 5.7.1 text" (the code apart,
// the enhanced code at the start of the text).
func replyCode(name string, code int, text string) hooks.Result {
	r := hooks.Result{ReplyCode: code, Detail: fmt.Sprintf("milter %s: %d %s", name, code, text)}
	switch code / 100 {
	case 5:
		r.Code = hooks.Deny
	case 4:
		r.Code = hooks.DenySoft
	default:
		return hooks.Result{}
	}
	if f := strings.Fields(text); len(f) > 0 {
		var e [3]int
		if n, _ := fmt.Sscanf(f[0], "%d.%d.%d", &e[0], &e[1], &e[2]); n == 3 && e[0] == code/100 {
			r.Enhanced = e
			text = strings.TrimSpace(strings.TrimPrefix(text, f[0]))
		}
	}
	r.Msg = text
	return r
}

// active returns the session when the milter is to be asked, for a
// transaction's command when inTx.
func (p *Plugin) active(c *connection.Connection, inTx bool) *session {
	st := p.state(c)
	if st == nil || st.s == nil || st.failed || st.doneC || (inTx && st.doneTx) {
		return nil
	}
	return st
}

// Helo sends the HELO name.
func (p *Plugin) Helo(_ context.Context, c *connection.Connection, host string) hooks.Result {
	return p.helo(c, host)
}

// Ehlo sends the EHLO name.
func (p *Plugin) Ehlo(_ context.Context, c *connection.Connection, host string) hooks.Result {
	return p.helo(c, host)
}

func (p *Plugin) helo(c *connection.Connection, host string) hooks.Result {
	st := p.active(c, false)
	if st == nil {
		return p.whenFailed(c)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	act, err := st.s.Helo(host)
	return p.answer(st, act, err, false)
}

// whenFailed is the answer of a hook after the milter failed: with
// default_action = "tempfail", every later command of the connection is
// deferred too, so that no message passes the milter unchecked.
func (p *Plugin) whenFailed(c *connection.Connection) hooks.Result {
	if st := p.state(c); st != nil && st.failed && !p.accept {
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 0}, Msg: "Service unavailable; try again later"}
	}
	return hooks.Result{}
}

// Mail sends the sender, with the transaction's macros.
func (p *Plugin) Mail(_ context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	st := p.active(c, true)
	if st == nil {
		return p.whenFailed(c)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	kv := []string{"i", tx.ID, "{mail_addr}", from}
	if c.AuthUser != "" {
		kv = append(kv, "{auth_authen}", c.AuthUser, "{auth_type}", connection.NoteAuthMech.Get(&c.Notes))
	}
	if c.TLS != nil {
		kv = append(kv, "{tls_version}", tlsVersion(c.TLS.Version))
	}
	if err := st.s.Macros(gomilter.CodeMail, kv...); err != nil {
		return p.fail(st, err)
	}
	act, err := st.s.Mail("<"+from+">", mailArgs(tx))
	return p.answer(st, act, err, true)
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0304:
		return "TLSv1.3"
	case 0x0303:
		return "TLSv1.2"
	}
	return "TLS"
}

// mailArgs are the MAIL parameters the milter sees.
func mailArgs(tx *transaction.Transaction) []string {
	var args []string
	if tx.Params.Size > 0 {
		args = append(args, "SIZE="+strconv.FormatInt(tx.Params.Size, 10))
	}
	if tx.Params.Body != "" {
		args = append(args, "BODY="+tx.Params.Body)
	}
	if tx.Params.UTF8 {
		args = append(args, "SMTPUTF8")
	}
	return args
}

// Rcpt sends one recipient; a refusal refuses that recipient only.
func (p *Plugin) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	st := p.active(c, true)
	if st == nil {
		return p.whenFailed(c)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.s.Macros(gomilter.CodeRcpt, "{rcpt_addr}", rcpt); err != nil {
		return p.fail(st, err)
	}
	act, err := st.s.Rcpt("<"+rcpt+">", nil)
	return p.answer(st, act, err, true)
}

// DataPost sends the header and the body, streamed from the spool, then
// applies the milter's changes and its verdict.
func (p *Plugin) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if st := p.state(c); st != nil && st.discard {
		return p.discarded()
	}
	st := p.active(c, true)
	if st == nil {
		return p.whenFailed(c)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	ms := st.s
	if err := ms.Macros(gomilter.CodeEOH, "i", tx.ID); err != nil {
		return p.fail(st, err)
	}
	for _, f := range tx.Header.Fields() {
		act, err := ms.HeaderField(f.Name, fieldValue(f))
		if r := p.answer(st, act, err, true); r.Code != hooks.Declined || st.doneTx || st.failed {
			return p.verdict(st, r)
		}
	}
	act, err := ms.HeaderEnd()
	if r := p.answer(st, act, err, true); r.Code != hooks.Declined || st.doneTx || st.failed {
		return p.verdict(st, r)
	}
	if err := ms.Macros(gomilter.CodeEOB, "i", tx.ID); err != nil {
		return p.fail(st, err)
	}
	mods, act, err := ms.BodyReadFrom(tx.Body.Reader())
	if err != nil {
		return p.fail(st, err)
	}
	if act.Code == gomilter.ActAccept || act.Code == gomilter.ActContinue {
		if err := p.apply(tx, mods); err != nil {
			return p.fail(st, err)
		}
	}
	r := p.answer(st, act, nil, true)
	st.doneTx = true // the message is over for the milter; reset starts the next
	return p.verdict(st, r)
}

// verdict is data_post's answer once the milter decided on the message
// (at its end or before): r, unless the milter discarded it.
func (p *Plugin) verdict(st *session, r hooks.Result) hooks.Result {
	if st.discard {
		return p.discarded()
	}
	return r
}

// discarded accepts a message the milter discarded, and drops it.
func (p *Plugin) discarded() hooks.Result {
	return hooks.Result{Code: hooks.Done, Detail: "milter " + p.name + ": discard"}
}

// fieldValue is a field's raw value: the text after the colon, folding
// kept, the leading space removed.
func fieldValue(f transaction.Field) string {
	raw := string(f.Raw)
	_, v, _ := strings.Cut(raw, ":")
	v = strings.TrimPrefix(v, " ")
	return strings.TrimRight(v, "\r\n")
}

// apply makes the milter's changes to the message.
func (p *Plugin) apply(tx *transaction.Transaction, mods []gomilter.ModifyAction) error {
	// The replaced body's chunks, in memory already in mods.
	var body crlfChunks
	for _, m := range mods {
		switch m.Code {
		case gomilter.ActAddHeader:
			if transaction.ValidFieldName(m.HeaderName) {
				tx.Header.Add(m.HeaderName, m.HeaderValue)
			}
		case gomilter.ActInsertHeader:
			if transaction.ValidFieldName(m.HeaderName) {
				tx.Header.Insert(int(m.HeaderIndex), m.HeaderName, m.HeaderValue)
			}
		case gomilter.ActChangeHeader:
			if !tx.Header.Change(m.HeaderName, int(m.HeaderIndex), m.HeaderValue) && m.HeaderValue != "" && transaction.ValidFieldName(m.HeaderName) {
				tx.Header.Add(m.HeaderName, m.HeaderValue) // as libmilter: a change past the last one adds
			}
		case gomilter.ActAddRcpt:
			if r := bare(m.Rcpt); r != "" && !contains(tx.Recipients, r) {
				tx.Recipients = append(tx.Recipients, r)
			}
		case gomilter.ActDelRcpt:
			r := bare(m.Rcpt)
			out := tx.Recipients[:0]
			for _, x := range tx.Recipients {
				if !strings.EqualFold(x, r) {
					out = append(out, x)
				}
			}
			tx.Recipients = out
		case gomilter.ActChangeFrom:
			tx.Sender = bare(m.From)
		case gomilter.ActReplBody:
			body.add(m.Body)
		case gomilter.ActQuarantine:
			NoteQuarantine.Set(&tx.Notes, m.Reason)
			tx.Header.Add("X-Quarantine", fmt.Sprintf("%s (milter %s)", oneLine(m.Reason), p.name))
		}
	}
	if body.readers != nil {
		if err := tx.ReplaceBody(io.MultiReader(body.readers...)); err != nil {
			return err
		}
	}
	if len(tx.Recipients) == 0 {
		return fmt.Errorf("the milter removed every recipient")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// bare is an address without its angle brackets.
func bare(a string) string {
	a = strings.TrimSpace(a)
	return strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
}

func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// crlfChunks collects the chunks of a replaced body with CRLF line ends.
type crlfChunks struct {
	readers []io.Reader
	afterCR bool // the last chunk ended with a CR
}

// add adds one chunk; a CRLF split between two chunks stays one.
func (c *crlfChunks) add(b []byte) {
	c.readers = append(c.readers, bytes.NewReader(lfToCRLF(b, c.afterCR)))
	if n := len(b); n > 0 {
		c.afterCR = b[n-1] == '\r'
	}
}

// lfToCRLF gives a chunk of a replaced body CRLF line ends, as the spool
// keeps them (milters send either); afterCR says the chunk before it
// ended with a CR, so that a CRLF split between two chunks stays one.
func lfToCRLF(b []byte, afterCR bool) []byte {
	out := make([]byte, 0, len(b)+bytes.Count(b, []byte{'\n'}))
	for i, c := range b {
		prevCR := afterCR
		if i > 0 {
			prevCR = b[i-1] == '\r'
		}
		if c == '\n' && !prevCR {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// Reset ends the message for the milter, so the next transaction starts
// afresh (libmilter's abort).
func (p *Plugin) Reset(_ context.Context, c *connection.Connection, _ *transaction.Transaction) {
	st := p.state(c)
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	wasDone := st.doneTx
	st.doneTx, st.discard = false, false
	if st.s != nil && !st.failed && !st.doneC && !wasDone {
		if err := st.s.Abort(); err != nil {
			st.s.Close()
			st.s, st.failed = nil, true
		}
	}
}

// Disconnect closes the session.
func (p *Plugin) Disconnect(_ context.Context, c *connection.Connection) {
	st := p.state(c)
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s != nil {
		st.s.Close()
		st.s = nil
	}
}
