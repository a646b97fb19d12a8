// Package smtpforward is the smtpforward queue plugin: it relays each
// accepted message to a downstream SMTP or LMTP server (a content filter,
// a mailbox server, the real MTA) and answers the client with the
// downstream's verdict.
package smtpforward

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("smtpforward", New) }

// DefaultHost is the downstream used when the host setting is absent.
const DefaultHost = "127.0.0.1:10025"

// NoteRemoteID is the transaction note that holds the downstream's own
// queue id, when its reply named one.
var NoteRemoteID = notes.NewKey[string]("smtpforward.remote_id")

// Settings are the plugin's [plugins.smtpforward] table.
type Settings struct {
	// Host is the downstream, "host:port" or "unix:/path/to/socket".
	Host string `toml:"host"`
	// LMTP speaks LMTP instead of SMTP.
	LMTP bool `toml:"lmtp"`
	// Helo is the name sent in EHLO or LHLO. Default: this machine's name.
	Helo string `toml:"helo"`
	// StartTLS is "off", "opportunistic" or "required".
	StartTLS string `toml:"starttls"`
	// ConnectTimeout bounds the connect and each command's reply ("30s").
	ConnectTimeout string `toml:"connect_timeout"`
	// DataTimeout bounds sending the message and the final reply ("10m").
	DataTimeout string `toml:"data_timeout"`
	// Convert8Bit converts a message with 8-bit content to 7 bit
	// (quoted-printable) for a downstream without 8BITMIME; false refuses
	// it (554 5.6.3). Default true.
	Convert8Bit bool `toml:"convert_8bit"`
	// FallbackQueue names the queue plugin instance that gets the
	// recipients the downstream refused for now (4xx) once it delivered to
	// others ("" for none: the whole message is deferred).
	FallbackQueue string `toml:"fallback_queue"`
	// DSNQueue names the queue plugin instance that gets the delivery
	// status notifications for the recipients the downstream refused for
	// good once it delivered to others. Default: FallbackQueue.
	DSNQueue string `toml:"dsn_queue"`
}

// Plugin is a configured smtpforward instance.
type Plugin struct {
	fw *queue.Forwarder
	// note is the transaction note for the downstream's queue id.
	note notes.Key[string]
	// fallback and dsn are the route names; routes is built from them by
	// SetRoutes (nil without routes).
	fallback, dsn string
	routes        *queue.Routes
}

var (
	_ hooks.Queue      = (*Plugin)(nil)
	_ hooks.Router     = (*Plugin)(nil)
	_ hooks.DSNCarrier = (*Plugin)(nil)
)

// DefaultSettings are the settings a [plugins.smtpforward] table is decoded
// over: the defaults of every key it leaves out.
func DefaultSettings() Settings {
	return Settings{Host: DefaultHost, StartTLS: "off", Convert8Bit: true}
}

// New builds the plugin from its settings; a bad setting is an error that
// names it.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := DefaultSettings()
	if err := decode(&s); err != nil {
		return nil, err
	}
	return FromSettings(s, NoteRemoteID)
}

// FromSettings builds the plugin from settings already decoded (over
// DefaultSettings, or other defaults): the constructor of plugins that are
// smtpforward with other defaults, such as lmtp. remoteIDNote is the
// transaction note the downstream's queue id is stored in ("NAME.remote_id"
// for the plugin NAME). A bad setting is an error that names it.
func FromSettings(s Settings, remoteIDNote notes.Key[string]) (*Plugin, error) {
	fw, err := s.forwarder()
	if err != nil {
		return nil, err
	}
	p := &Plugin{fw: fw, note: remoteIDNote, fallback: s.FallbackQueue, dsn: s.DSNQueue}
	if p.dsn == "" {
		p.dsn = p.fallback
	}
	return p, nil
}

// Routes implements hooks.Router: the fallback_queue and dsn_queue
// instances, when set.
func (p *Plugin) Routes() []string {
	var names []string
	for _, n := range []string{p.fallback, p.dsn} {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// SetRoutes implements hooks.Router.
func (p *Plugin) SetRoutes(routes map[string]hooks.Queue) error {
	if p.fallback == "" && p.dsn == "" {
		return nil
	}
	r := &queue.Routes{RemoteMTA: p.fw.RemoteName()}
	if p.fallback != "" {
		r.Fallback, r.FallbackName = routes[p.fallback], p.fallback
	}
	if p.dsn != "" {
		r.Bounce, r.BounceName = routes[p.dsn], p.dsn
	}
	if p.fallback != "" && r.Fallback == nil || p.dsn != "" && r.Bounce == nil {
		return fmt.Errorf("fallback_queue %q or dsn_queue %q was not built", p.fallback, p.dsn)
	}
	p.routes = r
	return nil
}

// CarriesDSN implements hooks.DSNCarrier: the listener offers DSN when the
// plugin can honour every request, which it can with a dsn_queue: it
// passes the parameters on to a downstream that offers DSN, and sends the
// notifications itself otherwise. Without a dsn_queue DSN is not offered,
// and the client's MTA keeps the duty (RFC 3461 section 4.1).
func (p *Plugin) CarriesDSN() bool { return p.dsn != "" }

func (s Settings) forwarder() (*queue.Forwarder, error) {
	fw := &queue.Forwarder{Addr: s.Host, LMTP: s.LMTP, Refuse8Bit: !s.Convert8Bit}
	var err error
	if fw.StartTLS, err = queue.ParseTLSMode(s.StartTLS); err != nil {
		return nil, fmt.Errorf("starttls = %w", err)
	}
	if err := checkHost(s.Host, fw.StartTLS); err != nil {
		return nil, err
	}
	if fw.Helo, err = queue.HeloName(s.Helo); err != nil {
		return nil, err
	}
	if fw.ConnectTimeout, err = queue.ParseTimeout("connect_timeout", s.ConnectTimeout, queue.DefaultConnectTimeout); err != nil {
		return nil, err
	}
	if fw.DataTimeout, err = queue.ParseTimeout("data_timeout", s.DataTimeout, queue.DefaultDataTimeout); err != nil {
		return nil, err
	}
	return fw, nil
}

// checkHost validates the host setting (queue.CheckHost), and that a unix
// socket goes without STARTTLS.
func checkHost(host string, mode queue.TLSMode) error {
	if err := queue.CheckHost(host, DefaultHost); err != nil {
		return err
	}
	if network, _ := queue.Network(host); network == "unix" && mode != queue.TLSOff {
		return fmt.Errorf("host = %q: starttls must be \"off\" for a unix socket", host)
	}
	return nil
}

// Queue implements hooks.Queue: the message counts as queued (250) when
// the downstream accepted it for every recipient, or for some and the
// routes took the others (queue.Routes); a downstream 5xx for every
// recipient refuses it permanently, anything else defers it (451).
func (p *Plugin) Queue(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	rc, err := p.fw.Forward(ctx, tx, p.routes.Take)
	res := p.routes.Settle(ctx, c, tx, rc.Outcomes, err)
	if res.Code != hooks.OK {
		return res
	}
	tx.QueueID = rc.ID
	var details []string
	if rc.RemoteID != "" {
		p.note.Set(&tx.Notes, rc.RemoteID)
		// For the server's "message queued" log line; the client reads
		// "Ok: queued as" our own id.
		details = append(details, "downstream queued as "+rc.RemoteID)
	}
	if res.Detail != "" {
		details = append(details, res.Detail)
	}
	if !rc.DSN {
		if note := p.routes.NotifySuccess(ctx, c, tx, rc.Outcomes, p.fw.LMTP); note != "" {
			details = append(details, note)
		}
	}
	res.Detail = strings.Join(details, "; ")
	return res
}
