// Package spf checks the sender's SPF policy (RFC 7208) at MAIL FROM: is
// the client's IP address allowed to send mail for the sender's domain?
// The verdict goes in the transaction note NoteResult, for dmarc,
// authresults and any later plugin, and in a Received-SPF header field
// (RFC 7208 section 9.1) on top of the message. What to do about it is a
// separate choice per result: by default nothing (note and header only);
// a site may reject a fail, defer a temperror, and so on.
//
// The evaluation is blitiri.com.ar/go/spf's, through the shared resolver
// (the [dns] table): each lookup is bounded by the resolver's timeout, the
// whole check by the mail hook's deadline.
//
// Counterparts: qpsmtpd's sender_permitted_from, Haraka's spf.
package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("spf", New) }

// Settings are the keys of the [plugins.spf] table.
type Settings struct {
	// Fail is what a fail result does: "note" (default: the note and the
	// header only), "reject" (550 5.7.23) or "defer" (450 4.7.23).
	Fail string `toml:"fail"`
	// SoftFail is what a softfail result does: "note" (default),
	// "reject" or "defer", with the replies of Fail.
	SoftFail string `toml:"softfail"`
	// TempError is what a temperror result (a DNS timeout or failure)
	// does: "note" (default) or "defer" (451 4.7.24).
	TempError string `toml:"temperror"`
	// PermError is what a permerror result (a broken SPF record) does:
	// "note" (default) or "reject" (550 5.7.24).
	PermError string `toml:"permerror"`
	// RejectAt is the command that gets a refusal: "mail" (default) or
	// "rcpt" (every recipient is refused; the plugin must then come
	// before the plugin that accepts recipients).
	RejectAt string `toml:"reject_at"`
	// Header adds a Received-SPF header field on top of each checked
	// message at data_post. Default true.
	Header bool `toml:"header"`
	// CheckRelay checks relay clients too (c.Relay without AUTH).
	// Default false: they are skipped, with no note.
	CheckRelay bool `toml:"check_relay"`
	// CheckAuth checks authenticated clients too. Default false: they
	// are skipped, with no note.
	CheckAuth bool `toml:"check_auth"`
	// DNS is the resolver's settings: the top-level [dns] table, or
	// [plugins.spf.dns] for this instance only.
	DNS resolver.Settings `toml:"dns"`
}

// action is what a result does.
type action int

const (
	note action = iota
	reject
	deferred
)

// Plugin is one configured instance; safe for concurrent use.
type Plugin struct {
	r                                     *resolver.Resolver
	fail, softFail, tempError, permError  action
	atRcpt, header, checkRelay, checkAuth bool
}

var (
	_ hooks.Mail     = (*Plugin)(nil)
	_ hooks.Rcpt     = (*Plugin)(nil)
	_ hooks.DataPost = (*Plugin)(nil)
)

// New builds an instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Fail: "note", SoftFail: "note", TempError: "note", PermError: "note", RejectAt: "mail", Header: true}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{header: s.Header, checkRelay: s.CheckRelay, checkAuth: s.CheckAuth}
	var err error
	if p.fail, err = parseAction("fail", s.Fail, reject, deferred); err != nil {
		return nil, err
	}
	if p.softFail, err = parseAction("softfail", s.SoftFail, reject, deferred); err != nil {
		return nil, err
	}
	if p.tempError, err = parseAction("temperror", s.TempError, deferred); err != nil {
		return nil, err
	}
	if p.permError, err = parseAction("permerror", s.PermError, reject); err != nil {
		return nil, err
	}
	switch s.RejectAt {
	case "mail":
	case "rcpt":
		p.atRcpt = true
	default:
		return nil, fmt.Errorf("reject_at = %q: want \"mail\" or \"rcpt\"", s.RejectAt)
	}
	if p.r, err = s.DNS.New(); err != nil {
		return nil, err
	}
	return p, nil
}

var actionNames = map[action]string{note: "note", reject: "reject", deferred: "defer"}

// parseAction reads the setting key: "note" or one of allowed.
func parseAction(key, value string, allowed ...action) (action, error) {
	want := []string{`"note"`}
	if value == "note" {
		return note, nil
	}
	for _, a := range allowed {
		if value == actionNames[a] {
			return a, nil
		}
		want = append(want, `"`+actionNames[a]+`"`)
	}
	return note, fmt.Errorf("%s = %q: want %s", key, value, strings.Join(want, " or "))
}

// skip reports whether the client is exempt: an authenticated user
// (unless check_auth) or a relay client (unless check_relay). AUTH also
// sets Relay, so an authenticated client is governed by check_auth alone.
func (p *Plugin) skip(c *connection.Connection) bool {
	if c.AuthUser != "" {
		return !p.checkAuth
	}
	return c.Relay && !p.checkRelay
}

// Mail checks the sender (the HELO name for the null sender), notes the
// verdict and, with reject_at = "mail", applies the policy.
func (p *Plugin) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	if p.skip(c) {
		return hooks.Result{}
	}
	v := p.Check(ctx, c, from)
	NoteResult.Set(&tx.Notes, v)
	if p.atRcpt {
		return hooks.Result{}
	}
	return p.policy(c, v)
}

// Rcpt applies the policy to each recipient when reject_at = "rcpt".
func (p *Plugin) Rcpt(_ context.Context, c *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if !p.atRcpt {
		return hooks.Result{}
	}
	v, ok := NoteResult.Lookup(&tx.Notes)
	if !ok {
		return hooks.Result{}
	}
	return p.policy(c, v)
}

// DataPost prepends the Received-SPF field of the transaction's verdict.
func (p *Plugin) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if !p.header {
		return hooks.Result{}
	}
	v, ok := NoteResult.Lookup(&tx.Notes)
	if !ok {
		return hooks.Result{}
	}
	tx.Header.Prepend("Received-SPF", receivedSPF(c, tx.Sender, v))
	return hooks.Result{}
}

// policy turns a verdict into the reply its setting asks for.
func (p *Plugin) policy(c *connection.Connection, v Verdict) hooks.Result {
	var a action
	var enh [3]int // the first digit follows the action
	switch v.Result {
	case authres.ResultFail:
		a, enh = p.fail, [3]int{0, 7, 23}
	case authres.ResultSoftFail:
		a, enh = p.softFail, [3]int{0, 7, 23}
	case authres.ResultTempError:
		a, enh = p.tempError, [3]int{0, 7, 24}
	case authres.ResultPermError:
		a, enh = p.permError, [3]int{0, 7, 24}
	default:
		return hooks.Result{}
	}
	if a == note {
		return hooks.Result{}
	}
	ip := c.RemoteIP().String()
	var text string
	switch v.Result {
	case authres.ResultFail, authres.ResultSoftFail:
		text = fmt.Sprintf("SPF %s: %s does not designate %s as a permitted sender", v.Result, v.Domain, ip)
	case authres.ResultTempError:
		text = fmt.Sprintf("SPF temperror: temporary error checking the SPF policy of %s for %s; try again later", v.Domain, ip)
	case authres.ResultPermError:
		text = fmt.Sprintf("SPF permerror: the SPF record of %s is invalid; cannot check %s", v.Domain, ip)
	}
	detail := fmt.Sprintf("spf=%s identity=%s domain=%s reason=%q", v.Result, v.Identity, v.Domain, v.Reason)
	if a == reject {
		enh[0] = 5
		return hooks.Result{Code: hooks.Deny, Msg: text, Enhanced: enh, ReplyCode: 550, Detail: detail}
	}
	enh[0] = 4
	code := 450
	if v.Result == authres.ResultTempError {
		code = 451
	}
	return hooks.Result{Code: hooks.DenySoft, Msg: text, Enhanced: enh, ReplyCode: code, Detail: detail}
}

// Check evaluates the SPF policy for the client of c sending from (the
// MAIL FROM address without angle brackets, "" for the null sender, whose
// HELO name is checked instead as postmaster@HELO). It never fails: a DNS
// problem is a temperror verdict, a broken record a permerror one.
func (p *Plugin) Check(ctx context.Context, c *connection.Connection, from string) Verdict {
	v := Verdict{Identity: "mailfrom"}
	local, domain := "", ""
	if from == "" {
		v.Identity = "helo"
		local, domain = "postmaster", c.Helo
	} else {
		local, domain, _ = mailaddr.Split(from)
	}
	// RFC 7208 4.3: an empty local part is "postmaster". The library
	// splits at the first '@', so a quoted local part holding one is
	// checked as postmaster too (only the %{l} macro can tell).
	if local == "" || strings.ContainsRune(local, '@') {
		local = "postmaster"
	}
	d, ok := mailaddr.CanonicalDomain(domain)
	if ok {
		domain = d
	}
	v.Domain, v.Sender = domain, local+"@"+domain
	// RFC 7208 4.3: a name that is not a multi-label domain (an address
	// literal, "localhost", garbage) is "none", with no lookup.
	if !ok || strings.HasPrefix(d, "[") || !strings.Contains(d, ".") {
		v.Result, v.Reason = authres.ResultNone, "no valid domain to check"
		return v
	}
	res, err := spf.CheckHostWithSender(net.IP(c.RemoteIP().AsSlice()), c.Helo, v.Sender,
		spf.WithResolver(p.r), spf.WithContext(ctx))
	v.Result = authres.ResultValue(res)
	if ctx.Err() != nil && (res == spf.TempError || res == spf.PermError) {
		// The hook's deadline passed mid-check: whatever broke, it was
		// the time, not the record.
		v.Result, v.Reason = authres.ResultTempError, "the check ran out of time"
		return v
	}
	v.Reason = reason(res, err)
	return v
}

// reason says why the library gave res, in words safe to show in a
// header: DNS errors are told by name and kind, never with the server's
// address.
func reason(res spf.Result, err error) string {
	var de *net.DNSError
	switch {
	case errors.As(err, &de):
		kind := "failed"
		switch {
		case de.IsTimeout:
			kind = "timed out"
		case de.IsNotFound:
			kind = "found no record"
		case de.IsTemporary:
			kind = "failed temporarily"
		}
		return fmt.Sprintf("DNS lookup of %s %s", strings.TrimSuffix(de.Name, "."), kind)
	case errors.Is(err, spf.ErrNoResult):
		return "no SPF record"
	case err != nil:
		return err.Error() // the library's own words: "matched ip", "multiple matching DNS records"
	case res == spf.Neutral:
		return "no mechanism matched"
	}
	return ""
}

// receivedSPF returns the value of the Received-SPF field (RFC 7208
// section 9.1) for verdict v of the client of c sending from sender, folded
// after its comment:
//
//	pass (mx.example.test: domain of alice@example.org designates 192.0.2.1 as permitted sender)
//		client-ip=192.0.2.1; envelope-from="alice@example.org"; helo=client.example.org;
//		receiver=mx.example.test; identity=mailfrom
func receivedSPF(c *connection.Connection, sender string, v Verdict) string {
	ip := c.RemoteIP().String()
	var why string
	switch v.Result {
	case authres.ResultPass:
		why = fmt.Sprintf("domain of %s designates %s as permitted sender", v.Sender, ip)
	case authres.ResultFail:
		why = fmt.Sprintf("domain of %s does not designate %s as permitted sender", v.Sender, ip)
	case authres.ResultSoftFail:
		why = fmt.Sprintf("transitioning domain of %s does not designate %s as permitted sender", v.Sender, ip)
	case authres.ResultNeutral:
		why = fmt.Sprintf("%s is neither permitted nor denied by domain of %s", ip, v.Sender)
	case authres.ResultNone:
		why = fmt.Sprintf("domain of %s does not designate permitted sender hosts", v.Sender)
	case authres.ResultTempError:
		why = fmt.Sprintf("temporary error checking domain of %s: %s", v.Sender, v.Reason)
	case authres.ResultPermError:
		why = fmt.Sprintf("permanent error in the SPF record of domain of %s: %s", v.Sender, v.Reason)
	default:
		why = v.Reason
	}
	var b strings.Builder
	b.WriteString(string(v.Result))
	b.WriteString(" (")
	escape(&b, c.Hostname, `()\`) // an RFC 5322 comment
	b.WriteString(": ")
	escape(&b, why, `()\`)
	b.WriteString(")\r\n\tclient-ip=")
	writeToken(&b, ip)
	b.WriteString("; envelope-from=")
	writeToken(&b, sender)
	b.WriteString("; helo=")
	writeToken(&b, c.Helo)
	b.WriteString(";\r\n\treceiver=")
	writeToken(&b, c.Hostname)
	b.WriteString("; identity=")
	b.WriteString(v.Identity)
	if v.Result == authres.ResultPermError && v.Reason != "" {
		b.WriteString("; problem=")
		writeToken(&b, v.Reason)
	}
	return b.String()
}

// writeToken writes s as a dot-atom when it is one, else as a quoted
// string (RFC 5322 3.2.3, 3.2.4; UTF-8 is atext under RFC 6532): the value
// of a Received-SPF key-value pair.
func writeToken(b *strings.Builder, s string) {
	if isDotAtom(s) {
		b.WriteString(s)
		return
	}
	b.WriteByte('"')
	escape(b, s, `"\`)
	b.WriteByte('"')
}

// escape writes s with a backslash before each rune of special, and
// control characters as spaces: the text of a comment (special "()\\")
// or of a quoted string (special "\"\\").
func escape(b *strings.Builder, s, special string) {
	for _, r := range s {
		switch {
		case strings.ContainsRune(special, r):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ' || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", rune(c)) {
			return false
		}
	}
	return true
}
