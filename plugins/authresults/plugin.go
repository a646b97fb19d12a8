// Package authresults writes the Authentication-Results header field (RFC
// 8601) that tells the mailbox side what the spf, dkim and dmarc plugins
// found, and removes the fields a sender forged under this server's
// authserv-id. It is the header half of Haraka's spf, dkim and dmarc
// plugins (Haraka writes the field from their auth_results) and of
// qpsmtpd's dkim and dmarc plugins.
//
// It runs at data_post, after spf, dkim and dmarc in the chain: they have
// checked the message as it was sent (a DKIM signature that covered a
// forged Authentication-Results field was verified with it), so removing
// the forged fields afterwards changes nothing they found.
package authresults

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/plugins/dmarc"
	"github.com/sluice-mta/sluice/plugins/spf"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("authresults", New) }

// FieldName is the name of the header field the plugin writes and removes.
const FieldName = "Authentication-Results"

// maxReason is the most bytes of a reason= value written; a longer reason
// (a DNS error quoting a long record) is cut and ends in "...".
const maxReason = 200

// Settings are the keys of a [plugins.authresults] table.
type Settings struct {
	// AuthservID names this server in the field it writes, and is the
	// name whose forged fields it removes (RFC 8601 section 2.5). A
	// domain name; default "": the listener's hostname.
	AuthservID string `toml:"authserv_id"`
}

// NoteRemoved (transaction) is how many Authentication-Results fields
// claiming this server's authserv-id were removed from the message. Absent
// when there were none.
var NoteRemoved = notes.NewKey[int]("authresults.removed")

// Plugin is an authresults instance. It is read-only after New and safe
// for concurrent use.
type Plugin struct {
	id string // canonical authserv_id; "" means: the listener's hostname
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds an instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{}
	if s.AuthservID != "" {
		id, ok := authservID(s.AuthservID)
		if !ok {
			return nil, fmt.Errorf("authserv_id = %q: want a domain name naming this server, such as \"mx.example.org\"", s.AuthservID)
		}
		p.id = id
	}
	return p, nil
}

// authservID returns the canonical form of a domain name used as an
// authserv-id: lower case, A-labels, no trailing dot. Address literals
// are refused: RFC 8601 wants a name.
func authservID(name string) (string, bool) {
	if strings.HasPrefix(name, "[") {
		return "", false
	}
	return mailaddr.CanonicalDomain(name)
}

// DataPost removes the forged Authentication-Results fields and prepends
// the plugin's own.
func (p *Plugin) DataPost(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	id := p.id
	if id == "" {
		var ok bool
		if id, ok = authservID(c.Hostname); !ok {
			return hooks.Fail(fmt.Errorf("the listener's hostname %q is no domain name to use as authserv-id: set hostname, or authserv_id in [plugins.authresults]", c.Hostname))
		}
	}
	if n := tx.Header.DelFunc(func(f transaction.Field) bool {
		return strings.EqualFold(f.Name, FieldName) && claims(f.Value(), id)
	}); n > 0 {
		NoteRemoved.Set(&tx.Notes, n)
	}
	if v, ok := fieldValue(id, &tx.Notes); ok {
		tx.Header.Prepend(FieldName, v)
	}
	return hooks.Result{}
}

// fieldValue returns the Authentication-Results value for the results the
// spf, dkim and dmarc plugins noted in the transaction's notes, or ok
// false when none of them left a note (then no field is written: see the
// README).
func fieldValue(id string, tn *notes.Notes) (v string, ok bool) {
	var results []authres.Result
	if s, ok := spf.NoteResult.Lookup(tn); ok {
		results = append(results, spfResult(s))
	}
	if sigs, ok := dkim.NoteResults.Lookup(tn); ok {
		if len(sigs) == 0 {
			results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
		}
		for _, sig := range sigs {
			results = append(results, dkimResult(sig))
		}
	}
	if d, ok := dmarc.NoteResult.Lookup(tn); ok {
		results = append(results, &authres.DMARCResult{
			Value:  value(d.Result),
			Reason: reason(d.Reason),
			From:   clean(d.From),
		})
	}
	if len(results) == 0 {
		return "", false
	}
	// authres.Format writes all results on one line; here each gets a
	// line of its own, so a message with several signatures stays
	// readable and within RFC 5322's 78 characters as far as the values
	// allow. Format("", r) is "; method=result props" (with a trailing
	// space when there are no properties).
	lines := make([]string, 0, len(results)+1)
	lines = append(lines, id)
	for _, r := range results {
		lines = append(lines, strings.TrimSpace(strings.TrimPrefix(authres.Format("", []authres.Result{r}), ";")))
	}
	return strings.Join(lines, ";\r\n\t"), true
}

func spfResult(v spf.Verdict) authres.Result {
	r := &authres.SPFResult{Value: value(v.Result), Reason: reason(v.Reason)}
	if v.Identity == "helo" {
		r.Helo = clean(v.Domain)
	} else {
		r.From = clean(v.Sender)
		if r.From == "" {
			r.From = clean(v.Domain)
		}
	}
	return r
}

// dkimResult is one signature's result. authres.DKIMResult has no
// selector, so the result is a generic one with the properties RFC 8601
// section 2.7.1 registers for dkim: header.d, header.i and header.s.
func dkimResult(s dkim.Signature) authres.Result {
	return &authres.GenericResult{
		Method: "dkim",
		Value:  value(s.Result),
		Params: map[string]string{
			"reason":   reason(s.Reason),
			"header.d": clean(s.Domain),
			"header.i": clean(s.Identifier),
			"header.s": clean(s.Selector),
		},
	}
}

// value returns a result keyword as RFC 8601 spells it (lower case
// letters); a note with no result, or with something that is no keyword,
// is written as temperror: a plugin failed to say what it found.
func value(v authres.ResultValue) authres.ResultValue {
	s := mailaddr.LowerASCII(string(v))
	if s == "" {
		return authres.ResultTempError
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && c != '-' {
			return authres.ResultTempError
		}
	}
	return authres.ResultValue(s)
}

// reason cleans a reason and cuts it at maxReason bytes.
func reason(s string) string {
	s = clean(s)
	if len(s) > maxReason {
		cut := maxReason - 3
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// clean makes a value from a note safe to write: the values come from the
// message (a signature's d=, s= and i=, the sender's address), so a control
// character becomes a space and a backslash becomes '/'. authres quotes a
// value with special characters and escapes its '"' but not '\', so a
// value ending in a backslash could otherwise close the quoted string
// early and add results of its own. Bytes that are not UTF-8 become '?'.
func clean(s string) string {
	ok := true
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == '\\' || r == utf8.RuneError {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			b.WriteByte('?')
		case r < 0x20 || (r >= 0x7f && r < 0xa0):
			b.WriteByte(' ')
		case r == '\\':
			b.WriteByte('/')
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}

// claims reports whether an Authentication-Results value names id as its
// authserv-id: as authres.Parse reads it, or, for a value it refuses or
// misreads (a comment before the id), as the first word after any
// comments. Names compare as domains (case, a trailing dot, U-labels);
// Unicode case folding is also a match here, since removing a field that
// only looks like ours is safe, and keeping one a reader may take for ours
// is not.
func claims(v, id string) bool {
	if pid, _, err := authres.Parse(v); err == nil && sameID(pid, id) {
		return true
	}
	return sameID(leadingID(v), id)
}

func sameID(got, id string) bool {
	got = strings.Trim(got, `"`)
	if got == "" {
		return false
	}
	if c, ok := mailaddr.CanonicalDomain(got); ok && c == id {
		return true
	}
	return strings.EqualFold(strings.TrimSuffix(got, "."), id)
}

// leadingID returns the first word of v after white space and comments
// (RFC 5322 CFWS), a quoted string unquoted: the authserv-id of a
// well-formed field.
func leadingID(v string) string {
	for {
		v = strings.TrimLeft(v, " \t\r\n")
		if !strings.HasPrefix(v, "(") {
			break
		}
		depth := 0
		i := 0
	comment:
		for ; i < len(v); i++ {
			switch v[i] {
			case '\\':
				i++
			case '(':
				depth++
			case ')':
				depth--
				if depth == 0 {
					break comment
				}
			}
		}
		if i >= len(v) {
			return "" // an unclosed comment
		}
		v = v[i+1:]
	}
	if strings.HasPrefix(v, `"`) {
		var b strings.Builder
		for i := 1; i < len(v); i++ {
			switch v[i] {
			case '\\':
				if i+1 < len(v) {
					i++
					b.WriteByte(v[i])
				}
			case '"':
				return b.String()
			default:
				b.WriteByte(v[i])
			}
		}
		return b.String()
	}
	end := strings.IndexAny(v, " \t\r\n;(")
	if end < 0 {
		end = len(v)
	}
	return v[:end]
}
