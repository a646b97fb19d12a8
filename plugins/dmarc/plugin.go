// Package dmarc checks a message against the DMARC policy (RFC 7489) of
// the domain in its From header, at data_post, once the spf and dkim
// plugins earlier in the chain have left their results in the
// transaction's notes. It looks the policy up at _dmarc.DOMAIN (falling
// back to the organizational domain), decides whether SPF or DKIM passed
// for a domain aligned with From, and then rejects, marks for quarantine
// or only notes a message that fails, as the published policy and the
// admin's settings say. It is qpsmtpd's dmarc and the DMARC part of
// Haraka's spf/dkim plugins.
package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/emersion/go-msgauth/authres"
	msgdmarc "github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/plugins/spf"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("dmarc", New) }

// The actions a setting may name.
const (
	actionReject     = "reject"
	actionQuarantine = "quarantine"
	actionNote       = "note"
	actionDefer      = "defer"
)

// Settings are the keys of a [plugins.dmarc] table.
type Settings struct {
	// Reject is what a message that fails under p=reject gets:
	// "reject" (default: 550 5.7.1), "quarantine" (the header and the
	// note) or "note" (the note only).
	Reject string `toml:"reject"`
	// Quarantine is what a message that fails under p=quarantine gets:
	// "quarantine" (default), "reject" or "note".
	Quarantine string `toml:"quarantine"`
	// NoteOnly, when true, never rejects nor marks a message, whatever
	// the policy and the two settings above say: the verdict is only
	// noted, for a later plugin. Default false.
	NoteOnly bool `toml:"note_only"`
	// TempError is what happens when the policy cannot be looked up (DNS
	// failure): "note" (default) or "defer" (451 4.7.1).
	TempError string `toml:"temperror"`
	// Header is the field added to a message the plugin quarantines, with
	// the value "quarantine"; fields of that name the message came with
	// are removed. Default "X-Sluice-DMARC".
	Header string `toml:"header"`
	// CheckRelayClients checks messages from relay clients and
	// authenticated users too. Default false: their mail is outbound,
	// not for this server to judge.
	CheckRelayClients bool `toml:"check_relay_clients"`
	// DNS overrides the top-level [dns] table for this instance.
	DNS resolver.Settings `toml:"dns"`
}

// Plugin is a dmarc instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	reject, quarantine string // the action for a fail under each policy
	tempError          string
	header             string
	checkRelay         bool
	dns                *resolver.Resolver
	// sample returns a number in [0, n): the pct= draw. Tests replace it.
	sample func(n int) int
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds an instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Reject: actionReject, Quarantine: actionQuarantine, TempError: actionNote, Header: "X-Sluice-DMARC"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	for _, a := range []struct{ key, val string }{{"reject", s.Reject}, {"quarantine", s.Quarantine}} {
		switch a.val {
		case actionReject, actionQuarantine, actionNote:
		default:
			return nil, fmt.Errorf("%s = %q: want \"reject\", \"quarantine\" or \"note\"", a.key, a.val)
		}
	}
	switch s.TempError {
	case actionNote, actionDefer:
	default:
		return nil, fmt.Errorf("temperror = %q: want \"note\" or \"defer\"", s.TempError)
	}
	if !transaction.ValidFieldName(s.Header) {
		return nil, fmt.Errorf("header = %q: want a header field name: printable ASCII without spaces or ':' (e.g. \"X-Sluice-DMARC\")", s.Header)
	}
	if s.NoteOnly {
		s.Reject, s.Quarantine = actionNote, actionNote
	}
	r, err := s.DNS.New()
	if err != nil {
		return nil, err
	}
	return &Plugin{reject: s.Reject, quarantine: s.Quarantine, tempError: s.TempError, header: s.Header,
		checkRelay: s.CheckRelayClients, dns: r, sample: rand.IntN}, nil
}

// DataPost evaluates the message, sets NoteResult and applies the action.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	// The header is ours to set: a copy the message came with is a
	// forgery, or a leftover of another hop.
	tx.Header.Del(p.header)
	if !p.checkRelay && (c.Relay || c.AuthUser != "") {
		return hooks.Result{}
	}
	v := p.evaluate(ctx, tx)
	var res hooks.Result
	switch v.Result {
	case authres.ResultFail:
		res = p.enforce(&v, tx)
	case authres.ResultTempError:
		if p.tempError == actionDefer {
			res = hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1},
				Msg: "DMARC policy of " + v.From + " could not be checked; try again later", Detail: v.Reason}
		}
	}
	NoteResult.Set(&tx.Notes, v.Verdict)
	return res
}

// enforce picks the disposition of a message that failed, after pct=,
// and returns what the client gets.
func (p *Plugin) enforce(v *verdict, tx *transaction.Transaction) hooks.Result {
	policy := v.Policy
	if pct := v.pct; pct < 100 && policy != "none" && p.sample(100) >= pct {
		// Sampled out: the next policy down applies (RFC 7489 6.3, pct).
		switch policy {
		case "reject":
			policy = "quarantine"
		case "quarantine":
			policy = "none"
		}
		v.Reason += fmt.Sprintf("; pct=%d sampled the message out of p=%s", pct, v.Policy)
	}
	action := actionNote
	switch policy {
	case "reject":
		action = p.reject
	case "quarantine":
		action = p.quarantine
	}
	switch action {
	case actionReject:
		v.Disposition = "reject"
		return hooks.Result{Code: hooks.Deny, ReplyCode: 550, Enhanced: [3]int{5, 7, 1},
			Msg: "rejected by DMARC policy for " + v.From, Detail: v.Reason}
	case actionQuarantine:
		v.Disposition = "quarantine"
		tx.Header.Add(p.header, "quarantine")
	default:
		v.Disposition = "none"
	}
	return hooks.Result{}
}

// verdict is a Verdict with the record's pct=, which enforce needs.
type verdict struct {
	Verdict
	pct int
}

// evaluate finds the From domain, its policy and the alignment.
func (p *Plugin) evaluate(ctx context.Context, tx *transaction.Transaction) verdict {
	v := verdict{Verdict: Verdict{Disposition: "none"}, pct: 100}
	from, result, reason := fromDomain(&tx.Header)
	if result != "" {
		v.Result, v.Reason = result, reason
		return v
	}
	v.From = from
	org := orgDomain(from)
	rec, fromOrg, result, reason := p.lookup(ctx, from, org)
	if result != "" {
		v.Result, v.Reason = result, reason
		return v
	}
	v.Policy = string(rec.Policy)
	where := "_dmarc." + from
	if fromOrg {
		where = "_dmarc." + org
		if rec.SubdomainPolicy != "" {
			v.Policy = string(rec.SubdomainPolicy)
		}
	}
	if rec.Percent != nil {
		v.pct = *rec.Percent
	}

	var why []string
	if sv, ok := spf.NoteResult.Lookup(&tx.Notes); !ok {
		why = append(why, "no SPF result")
	} else if sv.Result != authres.ResultPass {
		why = append(why, fmt.Sprintf("SPF %s for %s", sv.Result, sv.Domain))
	} else if aligned(sv.Domain, from, org, rec.SPFAlignment) {
		v.SPFAligned = true
		why = append(why, "SPF pass for "+sv.Domain+" aligned")
	} else {
		why = append(why, fmt.Sprintf("SPF pass for %s not aligned (aspf=%s)", sv.Domain, rec.SPFAlignment))
	}
	sigs := dkim.NoteResults.Get(&tx.Notes)
	var passed []string
	for _, s := range sigs {
		if s.Result != authres.ResultPass {
			continue
		}
		if aligned(s.Domain, from, org, rec.DKIMAlignment) {
			v.DKIMAligned = true
			why = append(why, "DKIM pass for d="+s.Domain+" aligned")
			break
		}
		passed = append(passed, s.Domain)
	}
	switch {
	case v.DKIMAligned:
	case len(passed) > 0:
		why = append(why, fmt.Sprintf("DKIM pass for d=%s not aligned (adkim=%s)", strings.Join(passed, ","), rec.DKIMAlignment))
	case len(sigs) > 0:
		why = append(why, "no DKIM signature passed")
	default:
		why = append(why, "no DKIM signature")
	}
	v.Result = authres.ResultFail
	if v.SPFAligned || v.DKIMAligned {
		v.Result = authres.ResultPass
	}
	v.Reason = fmt.Sprintf("p=%s from %s; %s", v.Policy, where, strings.Join(why, "; "))
	return v
}

// fromDomain returns the RFC5322.From domain, canonical; or, when there is
// none to evaluate, the result (none or permerror) and why.
func fromDomain(h *transaction.Header) (string, authres.ResultValue, string) {
	values := h.Values("From")
	switch {
	case len(values) == 0 && h.Unparsed() > 0:
		// The From field may be in the part of a long header Sluice did
		// not index: a message cannot evade the policy that way.
		return "", authres.ResultPermError, "no From field in the parsed part of an overlong header"
	case len(values) == 0:
		return "", authres.ResultNone, "no From field"
	case len(values) > 1:
		return "", authres.ResultPermError, fmt.Sprintf("%d From fields (RFC 5322 allows one)", len(values))
	}
	addrs, err := mailaddr.ParseAddressList(values[0])
	if err != nil {
		return "", authres.ResultPermError, "From field does not parse: " + err.Error()
	}
	if len(addrs) == 0 {
		return "", authres.ResultNone, "From field has no address"
	}
	var domain string
	for _, a := range addrs {
		_, d, ok := mailaddr.Split(a.Address)
		if !ok || d == "" {
			return "", authres.ResultPermError, fmt.Sprintf("From address %q has no domain", a.Address)
		}
		cd, ok := mailaddr.CanonicalDomain(d)
		if !ok {
			return "", authres.ResultPermError, fmt.Sprintf("From domain %q is not a valid domain name", d)
		}
		if strings.HasPrefix(cd, "[") {
			return "", authres.ResultNone, "From domain is an address literal " + cd
		}
		if domain != "" && cd != domain {
			// RFC 7489 6.6.1: several authors in different domains
			// have no one policy.
			return "", authres.ResultPermError, fmt.Sprintf("From has addresses in several domains (%s, %s)", domain, cd)
		}
		domain = cd
	}
	return domain, "", ""
}

// orgDomain returns the organizational domain of a canonical domain: its
// public suffix and one label more, or the domain itself when it is a
// public suffix.
func orgDomain(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// aligned reports whether the authenticated domain d is aligned with the
// From domain from (whose organizational domain is org), strictly (equal)
// or relaxed (same organizational domain).
func aligned(d, from, org string, mode msgdmarc.AlignmentMode) bool {
	cd, ok := mailaddr.CanonicalDomain(d)
	switch {
	case !ok:
		return false
	case cd == from:
		return true
	}
	return mode != msgdmarc.AlignmentStrict && orgDomain(cd) == org
}

// lookup finds the policy record of from, or of its organizational domain
// org when from has none (RFC 7489 6.6.3); fromOrg says which. When there
// is no record to apply, result is none, temperror or permerror, and
// reason says why.
func (p *Plugin) lookup(ctx context.Context, from, org string) (rec *msgdmarc.Record, fromOrg bool, result authres.ResultValue, reason string) {
	rec, absent, result, reason := p.lookupOne(ctx, from)
	if !absent || org == from {
		return rec, false, result, reason
	}
	rec, absent, result, reason = p.lookupOne(ctx, org)
	if absent {
		reason = fmt.Sprintf("no DMARC record at _dmarc.%s nor _dmarc.%s", from, org)
	}
	return rec, true, result, reason
}

// lookupOne looks up the record at _dmarc.domain with go-msgauth, through
// the plugin's resolver. absent is true when there is no record at all,
// the one case where the organizational domain is asked next.
func (p *Plugin) lookupOne(ctx context.Context, domain string) (rec *msgdmarc.Record, absent bool, result authres.ResultValue, reason string) {
	var dnsErr error
	records := 0
	rec, err := msgdmarc.LookupWithOptions(domain, &msgdmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) {
		txts, err := p.dns.LookupTXT(ctx, name)
		if err != nil && !resolver.IsNotFound(err) {
			dnsErr = err
		}
		for _, t := range txts {
			if strings.HasPrefix(t, "v=DMARC1") {
				records++
			}
		}
		return txts, err
	}})
	name := "_dmarc." + domain
	switch {
	case dnsErr != nil:
		return nil, false, authres.ResultTempError, fmt.Sprintf("DNS lookup of %s failed: %v", name, dnsErr)
	case records > 1:
		// RFC 7489 6.6.3: several records are as good as none, and
		// discovery stops there.
		return nil, false, authres.ResultNone, fmt.Sprintf("%d DMARC records at %s: none applies", records, name)
	case errors.Is(err, msgdmarc.ErrNoPolicy):
		return nil, true, authres.ResultNone, "no DMARC record at " + name
	case err != nil:
		return nil, false, authres.ResultPermError, fmt.Sprintf("DMARC record at %s is malformed: %v", name, err)
	}
	return rec, false, "", ""
}
