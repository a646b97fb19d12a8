// Package rspamd scans every message with rspamd, as Haraka's rspamd
// plugin does: at data_post it posts the message, streamed from the spool,
// to rspamd's /checkv2 with the envelope and the client as request headers,
// and applies the action rspamd answers (reject, soft reject, greylist,
// add header, rewrite subject) with rspamd's own reply text, and the
// header changes rspamd asks for (its milter block).
package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/scanner"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("rspamd", New) }

// Settings are the keys of a [plugins.rspamd] table.
type Settings struct {
	// URL is rspamd's normal worker. Default "http://127.0.0.1:11333".
	URL string `toml:"url"`
	// Password is sent as the Password header, when rspamd wants one.
	Password string `toml:"password"`
	// ConnectTimeout bounds connecting to rspamd. Default "5s".
	ConnectTimeout config.Duration `toml:"connect_timeout"`
	// Timeout bounds the whole scan. Default "30s".
	Timeout config.Duration `toml:"timeout"`
	// MaxSize is the largest message scanned; a larger one goes on with
	// the status header saying so. Default "20MB".
	MaxSize config.Bytes `toml:"max_size"`
	// Greylist is what rspamd's "greylist" action does: "defer" (the
	// default: 451 4.7.1) or "accept".
	Greylist string `toml:"greylist"`
	// Subject is the template of a rewritten Subject when rspamd gives
	// none; %s is the old subject. Default "[SPAM] %s".
	Subject string `toml:"subject"`
	// StatusHeader is the field that records the result ("" for none).
	// Default "X-Spam-Status".
	StatusHeader *string `toml:"status_header"`
	// SpamHeader is the field the "add header" action adds with the value
	// "Yes". Default "X-Spam".
	SpamHeader string `toml:"spam_header"`
	// ScanAuthenticated and ScanRelay scan mail from authenticated users
	// and relay clients, which are skipped by default.
	ScanAuthenticated bool `toml:"scan_authenticated"`
	ScanRelay         bool `toml:"scan_relay"`
	// Failure is what an rspamd failure does: "defer" (the default) or
	// "accept" (deliver with the status header saying the scan failed).
	Failure string `toml:"failure"`
}

// Verdict is rspamd's answer, in NoteResult.
type Verdict struct {
	Action          string
	Score, Required float64
	// Symbols are the names of the symbols rspamd matched, sorted.
	Symbols []string
}

// NoteResult (transaction) is rspamd's verdict, absent when the message
// was not scanned.
var NoteResult = notes.NewKey[Verdict]("rspamd.result")

// Plugin is an rspamd instance. It is safe for concurrent use.
type Plugin struct {
	url                 string
	password            string
	client              *http.Client
	timeout             time.Duration
	maxSize             int64
	greylistDefer       bool
	subject             string
	statusHeader        string
	spamHeader          string
	scanAuth, scanRelay bool
	failure             scanner.Failure
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds an rspamd instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{URL: "http://127.0.0.1:11333", ConnectTimeout: config.Duration{Duration: 5 * time.Second},
		Timeout: config.Duration{Duration: 30 * time.Second}, MaxSize: 20 << 20, Greylist: "defer",
		Subject: "[SPAM] %s", SpamHeader: "X-Spam"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url = %q: want rspamd's normal worker, such as \"http://127.0.0.1:11333\"", s.URL)
	}
	p := &Plugin{url: strings.TrimSuffix(s.URL, "/") + "/checkv2", password: s.Password, timeout: s.Timeout.Duration,
		maxSize: int64(s.MaxSize), subject: s.Subject, statusHeader: "X-Spam-Status", spamHeader: s.SpamHeader,
		scanAuth: s.ScanAuthenticated, scanRelay: s.ScanRelay}
	if s.StatusHeader != nil {
		p.statusHeader = *s.StatusHeader
	}
	switch s.Greylist {
	case "defer":
		p.greylistDefer = true
	case "accept":
	default:
		return nil, fmt.Errorf("greylist = %q: want \"defer\" or \"accept\"", s.Greylist)
	}
	if p.failure, err = scanner.ParseFailure("failure", s.Failure); err != nil {
		return nil, err
	}
	if err := scanner.CheckLimits(s.ConnectTimeout.Duration, p.timeout, p.maxSize, "30s", "20MB"); err != nil {
		return nil, err
	}
	switch {
	case strings.Count(p.subject, "%s") > 1 || strings.Contains(strings.ReplaceAll(p.subject, "%s", ""), "%"):
		return nil, fmt.Errorf("subject = %q: use %%s once for the old subject, and no other %%", s.Subject)
	case strings.ContainsAny(s.Password, "\r\n"):
		return nil, errors.New("password: no line breaks")
	}
	dialer := &net.Dialer{Timeout: s.ConnectTimeout.Duration}
	p.client = &http.Client{Transport: &http.Transport{
		DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute,
		Proxy: nil, // never an HTTP proxy from the environment
	}}
	return p, nil
}

// Close closes the idle connections to rspamd.
func (p *Plugin) Close() error {
	p.client.CloseIdleConnections()
	return nil
}

// reply is the part of rspamd's /checkv2 answer the plugin reads.
type reply struct {
	Action   string                     `json:"action"`
	Score    float64                    `json:"score"`
	Required float64                    `json:"required_score"`
	Symbols  map[string]json.RawMessage `json:"symbols"`
	Subject  string                     `json:"subject"`
	Messages struct {
		SMTP string `json:"smtp_message"`
	} `json:"messages"`
	Milter struct {
		AddHeaders    map[string]json.RawMessage `json:"add_headers"`
		RemoveHeaders map[string]int             `json:"remove_headers"`
	} `json:"milter"`
}

// DataPost scans the message and applies rspamd's action.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if (c.AuthUser != "" && !p.scanAuth) || (c.Relay && !p.scanRelay) {
		return hooks.Result{}
	}
	if size := tx.MessageSize(); size > p.maxSize {
		p.status(tx, fmt.Sprintf("Unknown, not scanned (message of %d bytes over max_size)", size))
		return hooks.Result{}
	}
	r, err := p.check(ctx, c, tx)
	if err != nil {
		return p.failure.Result(tx, "rspamd", p.statusHeader, "Unknown, scan failed", err)
	}
	v := Verdict{Action: r.Action, Score: r.Score, Required: r.Required}
	for name := range r.Symbols {
		v.Symbols = append(v.Symbols, name)
	}
	slices.Sort(v.Symbols)
	NoteResult.Set(&tx.Notes, v)

	// rspamd's header changes first: its remove_headers usually lists the
	// fields the actions below add (X-Spam), to clear forged ones.
	p.milter(tx, r)
	text := sanitize(r.Messages.SMTP)
	switch r.Action {
	case "reject":
		if text == "" {
			text = "Spam message rejected"
		}
		return hooks.Result{Code: hooks.Deny, ReplyCode: 550, Enhanced: [3]int{5, 7, 1}, Msg: text,
			Detail: fmt.Sprintf("rspamd: reject, score %.2f / %.2f", r.Score, r.Required)}
	case "soft reject":
		if text == "" {
			text = "Try again later"
		}
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1}, Msg: text,
			Detail: fmt.Sprintf("rspamd: soft reject, score %.2f / %.2f", r.Score, r.Required)}
	case "greylist":
		if p.greylistDefer {
			if text == "" {
				text = "Try again later"
			}
			return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1}, Msg: text,
				Detail: fmt.Sprintf("rspamd: greylist, score %.2f / %.2f", r.Score, r.Required)}
		}
	case "add header":
		if p.spamHeader != "" {
			tx.Header.Add(p.spamHeader, "Yes")
		}
	case "rewrite subject":
		subject := sanitize(r.Subject)
		if subject == "" {
			subject = strings.Replace(p.subject, "%s", tx.Header.Get("Subject"), 1)
		}
		tx.Header.Set("Subject", subject)
	}
	yes := "No"
	if r.Action != "no action" && r.Action != "greylist" {
		yes = "Yes"
	}
	p.status(tx, fmt.Sprintf("%s, score=%.2f required=%.2f action=%q", yes, r.Score, r.Required, r.Action))
	return hooks.Result{}
}

func (p *Plugin) status(tx *transaction.Transaction, value string) {
	if p.statusHeader != "" {
		tx.Header.Del(p.statusHeader)
		tx.Header.Add(p.statusHeader, value)
	}
}

// milter applies rspamd's header changes: remove_headers ({"X-Spam": 0}:
// 0 removes every such field, n the nth), then add_headers (a value, an
// object {"value", "order"} or a list of those; order 0 puts the field on
// top, otherwise it goes at the end).
func (p *Plugin) milter(tx *transaction.Transaction, r reply) {
	names := make([]string, 0, len(r.Milter.RemoveHeaders))
	for name := range r.Milter.RemoveHeaders {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if n := r.Milter.RemoveHeaders[name]; n > 0 {
			tx.Header.Change(name, n, "")
		} else {
			tx.Header.Del(name)
		}
	}
	names = names[:0]
	for name := range r.Milter.AddHeaders {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !transaction.ValidFieldName(name) {
			continue
		}
		for _, h := range addValues(r.Milter.AddHeaders[name]) {
			if h.Order == 0 {
				tx.Header.Prepend(name, h.Value)
			} else {
				tx.Header.Add(name, h.Value)
			}
		}
	}
}

type addHeader struct {
	Value string `json:"value"`
	Order int    `json:"order"`
}

// addValues reads one add_headers entry in any of its three shapes.
func addValues(raw json.RawMessage) []addHeader {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []addHeader{{Value: s, Order: -1}}
	}
	one := addHeader{Order: -1}
	if json.Unmarshal(raw, &one) == nil && one.Value != "" {
		return []addHeader{one}
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return nil
	}
	var out []addHeader
	for _, e := range list {
		out = append(out, addValues(e)...)
	}
	return out
}

// check posts the message to rspamd and reads its answer.
func (p *Plugin) check(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, tx.Message())
	if err != nil {
		return reply{}, err
	}
	req.ContentLength = tx.MessageSize()
	h := req.Header
	if tx.Sender != "" {
		h.Set("From", tx.Sender)
	}
	for _, r := range tx.Recipients {
		h.Add("Rcpt", r)
	}
	h.Set("IP", c.Remote.Addr().Unmap().String())
	if c.Helo != "" {
		h.Set("Helo", c.Helo)
	}
	if c.RemoteHost != "" {
		h.Set("Hostname", c.RemoteHost)
	}
	if c.AuthUser != "" {
		h.Set("User", c.AuthUser)
	}
	h.Set("Queue-Id", tx.ID)
	if p.password != "" {
		h.Set("Password", p.password)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return reply{}, scanner.Describe("ask rspamd at "+p.url, err, p.timeout)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return reply{}, scanner.Describe("read rspamd's answer from "+p.url, err, p.timeout)
	}
	if resp.StatusCode != http.StatusOK {
		return reply{}, fmt.Errorf("rspamd at %s answered %s: %.200s", p.url, resp.Status, body)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		return reply{}, fmt.Errorf("rspamd at %s answered something that is not its JSON: %w", p.url, err)
	}
	if r.Action == "" {
		return reply{}, fmt.Errorf("rspamd at %s answered without an action: %.200s", p.url, body)
	}
	return r, nil
}

// sanitize keeps rspamd's text to one printable line.
func sanitize(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s))
}
