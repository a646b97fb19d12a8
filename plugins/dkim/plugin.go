// Package dkim verifies the DKIM signatures of each message (RFC 6376) at
// data_post and records one result per DKIM-Signature field in the
// transaction note NoteResults, for dmarc, an Authentication-Results
// header and any later plugin. It is qpsmtpd's dkim plugin (its
// verifying half) and Haraka's dkim_verify.
//
// Detection and policy are separate: by default the plugin only notes
// the results and lets every message through, leaving the verdict to
// dmarc or a later plugin. on_temperror = "defer" answers 451 when no
// signature passed and a key could not be fetched.
//
// The signatures are checked by github.com/emersion/go-msgauth/dkim,
// reading the message from the spool as it streams by; keys are looked up
// through the shared resolver ([dns]).
package dkim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("dkim", New) }

// DefaultMaxVerifications is how many signatures of one message are
// verified when max_verifications is not set.
const DefaultMaxVerifications = 5

// Settings are the keys of a [plugins.dkim] table.
type Settings struct {
	// DNS is the resolver the keys are looked up with: the top-level
	// [dns] table, or [plugins.dkim.dns] for this instance.
	DNS resolver.Settings `toml:"dns"`
	// MaxVerifications is the most signatures of one message that are
	// verified (each costs a DNS lookup and a hash of the body); the
	// ones after them get the result "policy". Default 5.
	MaxVerifications int `toml:"max_verifications"`
	// OnTemperror is what happens to a message none of whose signatures
	// passed and at least one of which could not be checked for a
	// temporary reason (a key lookup timed out or failed): "note" (the
	// default: only the note) or "defer" (451, the client retries).
	OnTemperror string `toml:"on_temperror"`
}

// Plugin is a dkim instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	r         *resolver.Resolver
	max       int
	deferTemp bool
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds a dkim instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{MaxVerifications: DefaultMaxVerifications, OnTemperror: "note"}
	if err := decode(&s); err != nil {
		return nil, err
	}
	if s.MaxVerifications < 1 {
		return nil, fmt.Errorf("max_verifications = %d: want at least 1", s.MaxVerifications)
	}
	p := &Plugin{max: s.MaxVerifications}
	switch s.OnTemperror {
	case "note":
	case "defer":
		p.deferTemp = true
	default:
		return nil, fmt.Errorf("on_temperror = %q: want \"note\" or \"defer\"", s.OnTemperror)
	}
	r, err := s.DNS.New()
	if err != nil {
		return nil, err
	}
	p.r = r
	return p, nil
}

// DataPost verifies the message's signatures and sets NoteResults. It
// declines, unless on_temperror = "defer" and no signature passed but one
// had a temporary error; a spool that cannot be read is a local error
// (451).
func (p *Plugin) DataPost(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	sigs, err := p.verify(ctx, tx)
	if err != nil {
		return hooks.Fail(err)
	}
	NoteResults.Set(&tx.Notes, sigs)
	if !p.deferTemp {
		return hooks.Result{}
	}
	var temp *Signature
	for i := range sigs {
		switch sigs[i].Result {
		case authres.ResultPass:
			return hooks.Result{}
		case authres.ResultTempError:
			if temp == nil {
				temp = &sigs[i]
			}
		}
	}
	if temp == nil {
		return hooks.Result{}
	}
	// RFC 7372: X.7.20, no passing DKIM signature found.
	return hooks.Result{
		Code:      hooks.DenySoft,
		ReplyCode: 451,
		Enhanced:  [3]int{4, 7, 20},
		Msg:       "DKIM signature could not be verified; try again later",
		// Logged as "plugin refused" at WARN, never sent.
		Err: fmt.Errorf("no signature passed; d=%s s=%s: %s", temp.Domain, temp.Selector, temp.Reason),
	}
}

// verify returns one Signature per DKIM-Signature field of the message,
// in order. Its error is a failure to read the spool.
func (p *Plugin) verify(ctx context.Context, tx *transaction.Transaction) ([]Signature, error) {
	fields, err := signatureFields(tx)
	if err != nil {
		return nil, err
	}
	sigs := make([]Signature, len(fields))
	if len(fields) == 0 {
		return sigs, nil
	}
	for i, f := range fields {
		sigs[i] = tags(f)
	}
	r := &spoolReader{r: tx.Message()}
	verifs, err := dkim.VerifyWithOptions(r, &dkim.VerifyOptions{
		LookupTXT:        p.lookup(ctx),
		MaxVerifications: p.max,
	})
	switch {
	case r.err != nil:
		return nil, fmt.Errorf("dkim: reading message %s from the spool: %w", tx.ID, r.err)
	case err != nil && !errors.Is(err, dkim.ErrTooManySignatures):
		// The library could not take the message apart (a header
		// with no end). Its verifications, if any, are not to be
		// trusted.
		for i := range sigs {
			sigs[i].Result, sigs[i].Reason = authres.ResultPermError, "message cannot be parsed: "+reason(err)
		}
		return sigs, nil
	}
	if len(verifs) > len(sigs) {
		// The library saw more signature fields than the header
		// index: keep its results, without the tags read here.
		sigs = append(sigs, make([]Signature, len(verifs)-len(sigs))...)
	}
	for i := range sigs {
		if i >= len(verifs) {
			if i >= p.max {
				sigs[i].Result = authres.ResultPolicy
				sigs[i].Reason = fmt.Sprintf("not verified: more than %d signatures (max_verifications)", p.max)
			} else {
				// Not expected: the library found fewer fields.
				sigs[i].Result, sigs[i].Reason = authres.ResultPermError, "not verified: the field cannot be read"
			}
			continue
		}
		v := verifs[i]
		if v.Domain != "" {
			sigs[i].Domain = v.Domain
		}
		if v.Identifier != "" {
			sigs[i].Identifier = v.Identifier
		}
		sigs[i].Result, sigs[i].Reason = result(v.Err)
	}
	return sigs, nil
}

// result maps a verification's error to its RFC 8601 result and reason.
func result(err error) (authres.ResultValue, string) {
	switch {
	case err == nil:
		return authres.ResultPass, ""
	case dkim.IsTempFail(err):
		return authres.ResultTempError, reason(err)
	case dkim.IsPermFail(err):
		return authres.ResultPermError, reason(err)
	}
	r := reason(err)
	if strings.Contains(r, "body length tag") {
		// go-msgauth refuses every signature with l= (the rest of
		// the body would be unsigned): a local policy, not a broken
		// signature (RFC 6376 section 8.2).
		return authres.ResultPolicy, r
	}
	return authres.ResultFail, r
}

func reason(err error) string { return strings.TrimPrefix(err.Error(), "dkim: ") }

// lookup returns the TXT lookup of the verification of one message,
// bounded by the hook's context. go-msgauth tells a temporary DNS error
// from a missing key by net.Error's Temporary: only a name or record
// that does not exist is permanent, anything else (SERVFAIL, a timeout,
// a refused query) is temporary. The error becomes the reason of the
// result, which may end up in a header: the DNS server's address is left
// out of it.
func (p *Plugin) lookup(ctx context.Context) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		txts, err := p.r.LookupTXT(ctx, name)
		if err == nil {
			return txts, nil
		}
		var de *net.DNSError
		if !errors.As(err, &de) {
			return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true}
		}
		e := *de
		e.Server = ""
		if e.IsTimeout {
			e.Err = "timed out" // not "dial udp 192.0.2.53:53: i/o timeout"
		}
		if !resolver.IsNotFound(err) {
			e.IsTemporary = true
		}
		return nil, &e
	}
}

// signatureFields returns the values of the message's DKIM-Signature
// fields, in order: those of the parsed header, or when the header is
// longer than its index, those read again from the spool.
func signatureFields(tx *transaction.Transaction) ([]string, error) {
	if tx.Header.Unparsed() == 0 {
		return tx.Header.Values("DKIM-Signature"), nil
	}
	r := &spoolReader{r: tx.Message()}
	// A header past its index is rare (over 100 KiB or 1000 fields):
	// reading it whole once more is the simple way.
	h, _ := textproto.NewReader(bufio.NewReader(r)).ReadMIMEHeader()
	vs := h.Values("DKIM-Signature")
	if r.err != nil {
		return nil, fmt.Errorf("dkim: reading the header of message %s from the spool: %w", tx.ID, r.err)
	}
	return vs, nil
}

// tags returns a Signature with the tags of a DKIM-Signature value that
// name it (d=, s=, i=, a=). They are there for the note; the library
// checks them.
func tags(v string) Signature {
	var s Signature
	for rest := v; rest != ""; {
		var tag string
		tag, rest, _ = strings.Cut(rest, ";")
		name, value, ok := strings.Cut(tag, "=")
		if !ok {
			continue
		}
		var field *string
		switch strings.TrimSpace(name) {
		case "d":
			field = &s.Domain
		case "s":
			field = &s.Selector
		case "i":
			field = &s.Identifier
		case "a":
			field = &s.Algorithm
		default:
			continue
		}
		*field = stripSpace(value)
	}
	if s.Identifier == "" && s.Domain != "" {
		s.Identifier = "@" + s.Domain
	}
	return s
}

// stripSpace removes folding white space from a tag value.
func stripSpace(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), "")
}

// spoolReader keeps the first error of reading the spool, so that it is
// not mistaken for a fault of the message.
type spoolReader struct {
	r   io.Reader
	err error
}

func (s *spoolReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}
