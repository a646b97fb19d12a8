// Package dkimsign signs the mail of authenticated users with DKIM (RFC
// 6376): at queue_pre, once every data_post plugin has had its say, it
// reads the message from the spool, signs it with each key configured for
// the domain of its From address (RSA, Ed25519, or both: one
// DKIM-Signature each) and prepends the DKIM-Signature fields. It is the
// signing half of qpsmtpd's dkim plugin and Haraka's dkim_sign; the
// signatures are go-msgauth's.
package dkimsign

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("dkimsign", New) }

// Settings are the keys of a [plugins.dkimsign] table.
type Settings struct {
	// Keys are the signing keys, one [[plugins.dkimsign.key]] table each.
	// Required: at least one.
	Keys []KeySettings `toml:"key"`
	// Headers are the header fields signed, each as many times as the
	// message has it (a field it does not have is not listed). Default
	// DefaultHeaders. Must include From.
	Headers []string `toml:"headers"`
	// Oversign are the fields listed once more than the message has them,
	// so that a field of that name added on the way breaks the signature.
	// Default ["From"].
	Oversign []string `toml:"oversign"`
	// Canonicalization is "HEADER/BODY", each "relaxed" or "simple".
	// Default "relaxed/relaxed".
	Canonicalization string `toml:"canonicalization"`
	// SignRelayClients also signs the mail of relay clients (c.Relay set
	// by the relay plugin) that did not authenticate. Default false:
	// authenticated users only.
	SignRelayClients bool `toml:"sign_relay_clients"`
}

// KeySettings is one signing key: a [[plugins.dkimsign.key]] table.
type KeySettings struct {
	// Domain is the signing domain (d=): mail whose From address is in
	// this domain is signed with this key. Required.
	Domain string `toml:"domain"`
	// Selector is the key's selector (s=): its public key is published in
	// DNS at SELECTOR._domainkey.DOMAIN. Required.
	Selector string `toml:"selector"`
	// File is the PEM private key (RSA of at least 1024 bits, or Ed25519),
	// as `smtpd dkim-keygen` writes it. Required; read at start and at
	// each reload.
	File string `toml:"file"`
}

// DefaultHeaders are the fields signed by default: those RFC 6376 5.4.1
// recommends, the MIME fields and the mailing-list fields (RFC 2369, RFC
// 2919, RFC 8058) a sender sets.
var DefaultHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Message-ID", "In-Reply-To", "References",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

// NoteSigned (transaction) lists the signatures added to the message, as
// "SELECTOR._domainkey.DOMAIN" (the name of each key's DNS record), in
// header order. Absent when the message was not signed.
var NoteSigned = notes.NewKey[[]string]("dkimsign.signed")

// Plugin is a dkimsign instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	keys    map[string][]key // by canonical From domain, in config order
	headers []signedField
	canonH  dkim.Canonicalization
	canonB  dkim.Canonicalization
	relay   bool
}

// signedField is a field of the headers setting, and whether it is in
// oversign too.
type signedField struct {
	name     string
	oversign bool
}

type key struct {
	domain, selector string
	signer           crypto.Signer
}

var _ hooks.QueuePre = (*Plugin)(nil)

// selectorRe is a selector: dot-separated labels of letters, digits and
// hyphens (RFC 6376 3.1).
var selectorRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)

// New builds a dkimsign instance from its settings: it reads every key
// file, so a missing or unreadable key stops smtpd from starting (and
// `smtpd check` reports it) instead of leaving mail unsigned.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{
		Headers:          DefaultHeaders,
		Oversign:         []string{"From"},
		Canonicalization: "relaxed/relaxed",
	}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{keys: map[string][]key{}, relay: s.SignRelayClients}

	h, b, ok := strings.Cut(s.Canonicalization, "/")
	if !ok || !canon(h) || !canon(b) {
		return nil, fmt.Errorf("canonicalization = %q: want \"HEADER/BODY\", each \"relaxed\" or \"simple\" (\"relaxed/relaxed\" is the default)", s.Canonicalization)
	}
	p.canonH, p.canonB = dkim.Canonicalization(h), dkim.Canonicalization(b)

	seen := map[string]int{} // index in p.headers, by lowercased name
	for _, name := range s.Headers {
		if !transaction.ValidFieldName(name) {
			return nil, fmt.Errorf("headers: %q is not a header field name", name)
		}
		l := mailaddr.LowerASCII(name)
		if _, ok := seen[l]; !ok {
			seen[l] = len(p.headers)
			p.headers = append(p.headers, signedField{name: name})
		}
	}
	if _, ok := seen["from"]; !ok {
		return nil, errors.New("headers: From must be signed (RFC 6376 5.4): add \"From\"")
	}
	for _, name := range s.Oversign {
		if !transaction.ValidFieldName(name) {
			return nil, fmt.Errorf("oversign: %q is not a header field name", name)
		}
		i, ok := seen[mailaddr.LowerASCII(name)]
		if !ok {
			return nil, fmt.Errorf("oversign: %q is not in headers: a field is only oversigned if it is signed", name)
		}
		p.headers[i].oversign = true
	}

	if len(s.Keys) == 0 {
		return nil, errors.New("no key: add a [[plugins.dkimsign.key]] table with domain, selector and file (`smtpd dkim-keygen` makes a key)")
	}
	records := map[string]bool{}
	for i, ks := range s.Keys {
		where := fmt.Sprintf("key %d", i+1)
		d, ok := SigningDomain(ks.Domain)
		if !ok {
			return nil, fmt.Errorf("%s: domain = %q: want a domain name such as \"example.com\"", where, ks.Domain)
		}
		if !ValidSelector(ks.Selector) {
			return nil, fmt.Errorf("%s (%s): selector = %q: want a DNS label such as \"mail2026\" (letters, digits, hyphens; dots between labels)", where, d, ks.Selector)
		}
		rec := mailaddr.LowerASCII(ks.Selector) + "._domainkey." + d
		if records[rec] {
			return nil, fmt.Errorf("%s: selector %q of %s is listed twice: one key per selector", where, ks.Selector, d)
		}
		records[rec] = true
		if ks.File == "" {
			return nil, fmt.Errorf("%s (%s): file is missing: name the PEM private key (`smtpd dkim-keygen` writes one)", where, rec)
		}
		signer, err := LoadKey(ks.File)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", where, rec, err)
		}
		p.keys[d] = append(p.keys[d], key{domain: d, selector: ks.Selector, signer: signer})
	}
	return p, nil
}

// SigningDomain returns domain as a d= tag carries it (ASCII, lower case,
// A-labels, no trailing dot); ok is false for what is not a domain name
// with at least two labels.
func SigningDomain(domain string) (d string, ok bool) {
	d, ok = mailaddr.CanonicalDomain(domain)
	if !ok || strings.HasPrefix(d, "[") || !strings.Contains(d, ".") {
		return "", false
	}
	return d, true
}

// ValidSelector reports whether s is a selector: dot-separated labels of
// letters, digits and hyphens (RFC 6376 3.1).
func ValidSelector(s string) bool { return selectorRe.MatchString(s) }

func canon(c string) bool {
	return c == string(dkim.CanonicalizationRelaxed) || c == string(dkim.CanonicalizationSimple)
}

// QueuePre signs the message of an authenticated user (or of a relay
// client, with sign_relay_clients) whose From domain has a key. It never
// refuses a message for a reason of the message's own: one it cannot sign
// (no From, two From addresses in different domains, no key for the
// domain) goes on unsigned, with a debug log line. A failure while signing
// (the spool unreadable) defers the message, so it is never sent on
// unsigned by accident.
func (p *Plugin) QueuePre(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if c.AuthUser == "" && !(p.relay && c.Relay) {
		return hooks.Result{}
	}
	domain, why := fromDomain(&tx.Header)
	var keys []key
	if why == "" {
		if keys = p.keys[domain]; len(keys) == 0 {
			why = "no key for the From domain"
		}
	}
	if why != "" {
		slog.Default().DebugContext(ctx, "dkimsign: message left unsigned", "plugin", "dkimsign", "conn", c.ID, "tx", tx.ID, "reason", why, "domain", domain)
		return hooks.Result{}
	}

	fields := p.headerKeys(&tx.Header)
	signers := make([]*dkim.Signer, 0, len(keys))
	defer func() {
		for _, s := range signers {
			s.Close() // ends the signer's goroutine when signing failed half-way
		}
	}()
	ws := make([]io.Writer, 0, len(keys))
	for _, k := range keys {
		s, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: k.domain, Selector: k.selector, Signer: k.signer,
			HeaderCanonicalization: p.canonH, BodyCanonicalization: p.canonB,
			HeaderKeys: fields,
		})
		if err != nil {
			return hooks.Fail(fmt.Errorf("dkimsign: %s._domainkey.%s: %w", k.selector, k.domain, err))
		}
		signers = append(signers, s)
		ws = append(ws, s)
	}
	// One pass over the spool feeds every signer: the message is read, not
	// copied (each signer holds the header and hashes the body as it
	// streams by).
	w := io.MultiWriter(ws...)
	if _, err := tx.WriteTo(ctxWriter{ctx, w}); err != nil {
		return hooks.Fail(fmt.Errorf("dkimsign: read the message: %w", err))
	}
	if end := headerEnd(tx); end != "" {
		if _, err := io.WriteString(w, end); err != nil {
			return hooks.Fail(fmt.Errorf("dkimsign: sign: %w", err))
		}
	}
	sigs := make([]string, len(signers))
	for i, s := range signers {
		if err := s.Close(); err != nil {
			return hooks.Fail(fmt.Errorf("dkimsign: sign with %s._domainkey.%s: %w", keys[i].selector, keys[i].domain, err))
		}
		sigs[i] = s.Signature()
	}
	signed := make([]string, len(keys))
	// Prepended last to first, so the fields read in the order of the
	// keys in the configuration.
	for i := len(sigs) - 1; i >= 0; i-- {
		name, value, _ := strings.Cut(sigs[i], ":")
		tx.Header.Prepend(name, strings.TrimRight(strings.TrimPrefix(value, " "), "\r\n"))
		signed[i] = keys[i].selector + "._domainkey." + keys[i].domain
	}
	NoteSigned.Set(&tx.Notes, signed)
	return hooks.Result{}
}

// headerKeys returns the h= list for this message: each configured field
// as many times as the message has it, the oversigned ones once more.
func (p *Plugin) headerKeys(h *transaction.Header) []string {
	var fields []string
	for _, f := range p.headers {
		n := h.Count(f.name)
		if f.oversign {
			n++
		}
		for range n {
			fields = append(fields, f.name)
		}
	}
	return fields
}

// fromDomain returns the canonical domain of the message's author (RFC
// 5322 From), or why there is none to sign for.
func fromDomain(h *transaction.Header) (domain, why string) {
	froms := h.Values("From")
	switch len(froms) {
	case 0:
		return "", "no From field"
	case 1:
	default:
		return "", "more than one From field"
	}
	addrs, err := mailaddr.ParseAddressList(froms[0])
	if err != nil || len(addrs) == 0 {
		return "", "the From field does not parse"
	}
	for _, a := range addrs {
		_, d, ok := mailaddr.Split(a.Address)
		if !ok {
			return "", "a From address has no domain"
		}
		cd, ok := mailaddr.CanonicalDomain(d)
		if !ok {
			return "", "a From domain is not a valid domain name"
		}
		if domain != "" && domain != cd {
			return "", "From addresses in more than one domain"
		}
		domain = cd
	}
	return domain, ""
}

// headerEnd returns what a message with no body lacks for the signer to
// see the end of its header: the empty line (and the end of the last
// field's line, when the message ended inside it). A signature of the
// message with an empty body is what a verifier checks for a message with
// none (RFC 6376 3.4.3, 3.4.4). "" for every other message.
func headerEnd(tx *transaction.Transaction) string {
	if tx.Body.Size() > 0 {
		return ""
	}
	h := tx.Header.Bytes() // the header alone, without a body: small
	switch {
	case bytes.HasSuffix(h, []byte("\n\n")) || bytes.HasSuffix(h, []byte("\n\r\n")) || len(h) == 0:
		return ""
	case bytes.HasSuffix(h, []byte("\n")):
		return "\r\n"
	}
	return "\r\n\r\n"
}

// ctxWriter gives up writing once ctx is done: a large message does not
// keep signing past the hook's deadline.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (cw ctxWriter) Write(b []byte) (int, error) {
	if err := cw.ctx.Err(); err != nil {
		return 0, err
	}
	return cw.w.Write(b)
}
