// Package policy asks a Postfix SMTP access policy server (postgrey,
// policyd-spf, Valvula, ...) about each recipient, at DATA or at the end of
// the message, with Postfix's policy delegation protocol
// (https://www.postfix.org/SMTPD_POLICY_README.html), and turns the action
// it answers into the hook's result. It is Postfix's check_policy_service.
//
// A policy OK does not accept the recipient unless ok_accepts is set: in
// Postfix, OK ends one restriction list and the relay check
// (reject_unauth_destination) has come before it; in Sluice an OK at rcpt
// ends the hook, so rcptok would never see the recipient and the policy
// server would decide what Sluice relays.
package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("policy", New) }

// The defaults of the settings.
const (
	// DefaultTimeout bounds one request (connect, send, read the reply).
	// Postfix's smtpd_policy_service_timeout is 100s, longer than Sluice's
	// hook_timeout (30s): past that the chain gives up on the plugin anyway.
	DefaultTimeout = 10 * time.Second
	// DefaultIdleTimeout is Postfix's smtpd_policy_service_max_idle.
	DefaultIdleTimeout = 300 * time.Second
	// DefaultMaxTTL is Postfix's smtpd_policy_service_max_ttl.
	DefaultMaxTTL = 1000 * time.Second
	// DefaultMaxIdle is how many idle connections are kept open.
	DefaultMaxIdle = 4
)

// Settings are the keys of a [plugins.policy] table.
type Settings struct {
	// Address is the policy server: "host:port" (or Postfix's
	// "inet:host:port") or "unix:/path/to/socket". Required.
	Address string `toml:"address"`
	// At is when the server is asked: "rcpt" (each RCPT TO, Postfix's
	// protocol_state RCPT), "data" (the DATA command) and "end_of_data"
	// (the whole message is in: END-OF-MESSAGE, with its size). A string
	// or a list; default "rcpt".
	At Stages `toml:"at"`
	// Timeout bounds one request: connect, send, read. Default 10s.
	Timeout config.Duration `toml:"timeout"`
	// FailureAction is what happens when the server is down, slow or
	// answers garbage (or an action Sluice does not know): "defer" (the
	// default: 451 4.3.5 Server configuration problem, as Postfix's
	// smtpd_policy_service_default_action) or "accept" (DUNNO: a warning
	// is logged and the next plugin decides).
	FailureAction string `toml:"failure_action"`
	// OKAccepts makes the server's OK accept (hooks.OK: at rcpt the
	// recipient is accepted and no later plugin, rcptok included, sees
	// it). Default false: OK is DUNNO, so the policy server can refuse but
	// never turn Sluice into an open relay.
	OKAccepts bool `toml:"ok_accepts"`
	// PolicyContext is sent as the policy_context attribute. Default "".
	PolicyContext string `toml:"policy_context"`
	// MaxIdle is how many idle connections to the server are kept open for
	// the next requests. Default 4; 0 opens one connection per request.
	MaxIdle *int `toml:"max_idle"`
	// IdleTimeout closes a connection unused this long. Default 300s.
	IdleTimeout config.Duration `toml:"idle_timeout"`
	// MaxTTL stops reusing a connection this old. Default 1000s.
	MaxTTL config.Duration `toml:"max_ttl"`
}

// Stages is the at setting: one stage name or a list of them.
type Stages []string

// UnmarshalTOML takes a string ("rcpt") or an array of strings.
func (s *Stages) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*s = Stages{v}
	case []any:
		out := make(Stages, 0, len(v))
		for _, e := range v {
			str, ok := e.(string)
			if !ok {
				return fmt.Errorf("at: %v is not a string: want \"rcpt\", \"data\" or \"end_of_data\"", e)
			}
			out = append(out, str)
		}
		*s = out
	default:
		return fmt.Errorf("at: want a string or a list of strings (\"rcpt\", \"data\", \"end_of_data\")")
	}
	return nil
}

// stage is a point where the server is asked; its name is Postfix's
// protocol_state.
type stage int

const (
	stageRcpt stage = iota
	stageData
	stageEnd
	stageCount
)

var stageNames = [stageCount]struct{ setting, state string }{
	stageRcpt: {"rcpt", "RCPT"},
	stageData: {"data", "DATA"},
	stageEnd:  {"end_of_data", "END-OF-MESSAGE"},
}

// The transaction notes the plugin sets. HOLD, FILTER, REDIRECT and BCC
// have no counterpart in Sluice: the plugin notes them (and logs a warning)
// for a later plugin or the queue to act on.
var (
	// NotePrepend holds the header fields ("Name: value") the server asked
	// to PREPEND; they are added on top of the header at data_post.
	NotePrepend = notes.NewKey[[]string]("policy.prepend")
	// NoteDiscard is the text of a DISCARD action: the message is then
	// accepted and dropped at data_post.
	NoteDiscard = notes.NewKey[string]("policy.discard")
	// NoteHold is the text of a HOLD action.
	NoteHold = notes.NewKey[string]("policy.hold")
	// NoteFilter is the transport:destination of a FILTER action.
	NoteFilter = notes.NewKey[string]("policy.filter")
	// NoteRedirect is the address of a REDIRECT action.
	NoteRedirect = notes.NewKey[string]("policy.redirect")
	// NoteBcc is the address of a BCC action.
	NoteBcc = notes.NewKey[string]("policy.bcc")
)

// maxPrepend bounds the header fields one transaction collects.
const maxPrepend = 32

// Plugin is a policy instance: settings and the connection pool to its
// server. It is safe for concurrent use.
type Plugin struct {
	at            [stageCount]bool
	okAccepts     bool
	failAccept    bool
	policyContext string
	pool          *pool
	log           *slog.Logger
}

var (
	_ hooks.Rcpt     = (*Plugin)(nil)
	_ hooks.Data     = (*Plugin)(nil)
	_ hooks.DataPost = (*Plugin)(nil)
)

// New builds an instance from its settings. It does not connect: the first
// request does.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{
		At:            Stages{"rcpt"},
		Timeout:       config.Duration{Duration: DefaultTimeout},
		FailureAction: "defer",
		IdleTimeout:   config.Duration{Duration: DefaultIdleTimeout},
		MaxTTL:        config.Duration{Duration: DefaultMaxTTL},
	}
	if err := decode(&s); err != nil {
		return nil, err
	}
	network, address, err := parseAddress(s.Address)
	if err != nil {
		return nil, err
	}
	p := &Plugin{okAccepts: s.OKAccepts, policyContext: sanitize(s.PolicyContext), log: slog.Default()}
	if len(s.At) == 0 {
		return nil, fmt.Errorf("at = []: want one or more of \"rcpt\", \"data\", \"end_of_data\"")
	}
	for _, name := range s.At {
		found := false
		for st, n := range stageNames {
			if n.setting == name {
				p.at[st], found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("at: %q: want \"rcpt\", \"data\" or \"end_of_data\"", name)
		}
	}
	switch s.FailureAction {
	case "defer":
	case "accept":
		p.failAccept = true
	default:
		return nil, fmt.Errorf("failure_action = %q: want \"defer\" or \"accept\"", s.FailureAction)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"timeout", s.Timeout.Duration}, {"idle_timeout", s.IdleTimeout.Duration}, {"max_ttl", s.MaxTTL.Duration}} {
		if d.v <= 0 {
			return nil, fmt.Errorf("%s = %v: want a positive duration like \"10s\"", d.key, d.v)
		}
	}
	maxIdle := DefaultMaxIdle
	if s.MaxIdle != nil {
		maxIdle = *s.MaxIdle
	}
	if maxIdle < 0 {
		return nil, fmt.Errorf("max_idle = %d: want 0 or more", maxIdle)
	}
	p.pool = &pool{network: network, address: address, timeout: s.Timeout.Duration,
		idleTimeout: s.IdleTimeout.Duration, maxTTL: s.MaxTTL.Duration, maxIdle: maxIdle}
	return p, nil
}

// parseAddress reads the address setting.
func parseAddress(a string) (network, address string, err error) {
	switch {
	case a == "":
		return "", "", fmt.Errorf("address is missing: want \"127.0.0.1:10023\" or \"unix:/path/to/socket\"")
	case strings.HasPrefix(a, "unix:"):
		path := strings.TrimPrefix(a, "unix:")
		if path == "" {
			return "", "", fmt.Errorf("address = %q: the unix socket path is empty", a)
		}
		return "unix", path, nil
	}
	hostport := strings.TrimPrefix(a, "inet:")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || port == "" {
		return "", "", fmt.Errorf("address = %q: want host:port (\"127.0.0.1:10023\") or \"unix:/path/to/socket\"", a)
	}
	return "tcp", hostport, nil
}

// Close closes the idle connections to the policy server.
func (p *Plugin) Close() error { return p.pool.Close() }

// Rcpt asks the server about the recipient when at includes "rcpt".
func (p *Plugin) Rcpt(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) hooks.Result {
	if !p.at[stageRcpt] {
		return hooks.Result{}
	}
	return p.check(ctx, c, tx, stageRcpt, rcpt)
}

// Data asks the server at the DATA command when at includes "data".
func (p *Plugin) Data(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if !p.at[stageData] {
		return hooks.Result{}
	}
	return p.check(ctx, c, tx, stageData, "")
}

// DataPost asks the server once the message is in when at includes
// "end_of_data"; then, whatever the stage, it adds the header fields the
// server asked to PREPEND, and drops the message after a DISCARD.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	var r hooks.Result
	if p.at[stageEnd] {
		r = p.check(ctx, c, tx, stageEnd, "")
	}
	if r.Code.Rejects() {
		return r
	}
	prepend := NotePrepend.Get(&tx.Notes)
	for i := len(prepend) - 1; i >= 0; i-- {
		name, value, _ := strings.Cut(prepend[i], ":")
		tx.Header.Prepend(name, strings.TrimLeft(value, " \t"))
	}
	if text, ok := NoteDiscard.Lookup(&tx.Notes); ok {
		p.log.Warn("policy server discarded the message", "conn", c.ID, "tx", tx.ID, "text", text)
		// As Postfix does, the client is told the message was queued.
		return hooks.Result{Code: hooks.Done, Msg: "Ok: queued as " + tx.ID, Detail: "discarded by the policy server: " + text}
	}
	return r
}

// check sends one request and maps the action to the hook's result.
func (p *Plugin) check(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, st stage, rcpt string) hooks.Result {
	action, err := p.pool.ask(ctx, p.request(c, tx, st, rcpt))
	if err != nil {
		return p.failure(c, tx, st, err)
	}
	return p.apply(c, tx, st, action)
}

// failure is the result when the server could not answer, by
// failure_action.
func (p *Plugin) failure(c *connection.Connection, tx *transaction.Transaction, st stage, err error) hooks.Result {
	if p.failAccept {
		p.log.Warn("policy server failed; failure_action accept: going on as DUNNO", "conn", c.ID, "tx", tx.ID,
			"stage", stageNames[st].setting, "err", err.Error())
		return hooks.Result{}
	}
	return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 3, 5}, Msg: "Server configuration problem", Err: err}
}
