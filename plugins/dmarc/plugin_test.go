package dmarc_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/plugins/dmarc"
	_ "github.com/sluice-mta/sluice/plugins/rcptok" // registers rcptok for Build
	spfnote "github.com/sluice-mta/sluice/plugins/spf"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/resolver/dnstest"
	"github.com/sluice-mta/sluice/transaction"
)

// seed stands in for the spf and dkim plugins, which run before dmarc in a
// real chain: it sets their notes, either as given or, with dns set, from
// a real SPF check (blitiri.com.ar/go/spf) at mail and a real DKIM
// verification (go-msgauth) at data_post against the test's DNS server.
type seed struct {
	spf  *spfnote.Verdict
	dkim []dkim.Signature
	dns  *resolver.Resolver
}

func (s *seed) Mail(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, from string) hooks.Result {
	if s.dns != nil {
		res, err := spf.CheckHostWithSender(net.IP(c.Remote.Addr().AsSlice()), c.Helo, from,
			spf.WithResolver(s.dns), spf.WithContext(ctx))
		_, domain, _ := strings.Cut(from, "@")
		v := spfnote.Verdict{Result: authres.ResultValue(res), Identity: "mailfrom", Domain: domain, Sender: from}
		if err != nil {
			v.Reason = err.Error()
		}
		spfnote.NoteResult.Set(&tx.Notes, v)
	} else if s.spf != nil {
		spfnote.NoteResult.Set(&tx.Notes, *s.spf)
	}
	return hooks.Result{}
}

func (s *seed) DataPost(ctx context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if s.dns == nil {
		if s.dkim != nil {
			dkim.NoteResults.Set(&tx.Notes, s.dkim)
		}
		return hooks.Result{}
	}
	vs, err := msgdkim.VerifyWithOptions(tx.Message(), &msgdkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return s.dns.LookupTXT(ctx, name) },
	})
	if err != nil {
		return hooks.Fail(err)
	}
	sigs := []dkim.Signature{}
	for _, v := range vs {
		sig := dkim.Signature{Domain: v.Domain, Identifier: v.Identifier, Result: authres.ResultPass}
		if v.Err != nil {
			sig.Result, sig.Reason = authres.ResultFail, v.Err.Error()
		}
		sigs = append(sigs, sig)
	}
	dkim.NoteResults.Set(&tx.Notes, sigs)
	return hooks.Result{}
}

const msg = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"

// spfPass and dkimPass are the notes of a message that passed for domain.
func spfPass(domain string) *spfnote.Verdict {
	return &spfnote.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: domain, Sender: "bounce@" + domain}
}

func dkimPass(domain string) []dkim.Signature {
	return []dkim.Signature{{Domain: domain, Selector: "s1", Result: authres.ResultPass}}
}

// build builds the dmarc plugin with settings, pointed at srv.
func build(t *testing.T, srv *dnstest.Server, settings string) *dmarc.Plugin {
	t.Helper()
	return hookstest.BuildAs[*dmarc.Plugin](t, "dmarc", settings+"\n"+srv.TOML())
}

// harness builds the chain seed, dmarc, rcptok, queue recorder.
func harness(t *testing.T, sd *seed, p *dmarc.Plugin) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("seed", sd),
		hookstest.Plugin("dmarc", p),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.net"]`)),
		hookstest.Queue(),
	)
}

// send sends message from 192.0.2.1 and returns the reply and, when it
// was queued, the message.
func send(t *testing.T, h *hookstest.Harness, message string) (hooks.Reply, *hookstest.Message) {
	t.Helper()
	s := h.Connect("192.0.2.1")
	rep := s.Send("bounce@example.com", []string{"bob@example.net"}, message)
	if q := h.Queued(); len(q) > 0 {
		return rep, &q[len(q)-1]
	}
	return rep, nil
}

// verdict returns the dmarc note of a queued message, failing the test
// when it is missing.
func verdict(t *testing.T, m *hookstest.Message) dmarc.Verdict {
	t.Helper()
	if m == nil {
		t.Fatal("the message was not queued")
	}
	v, ok := m.Notes[dmarc.NoteResult.Name()].(dmarc.Verdict)
	if !ok {
		t.Fatalf("no %s note: %v", dmarc.NoteResult.Name(), m.Notes)
	}
	return v
}

func TestRejectPolicyFailIsRejected(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject"))
	h := harness(t, &seed{spf: spfPass("mailer.example.org"), dkim: dkimPass("mailer.example.org")}, build(t, srv, ""))
	rep, m := send(t, h, msg)
	hookstest.ExpectReply(t, rep, "550 5.7.1 rejected by DMARC policy for example.com")
	if m != nil {
		t.Fatalf("a rejected message was queued: %+v", m)
	}
}

func TestRejectPolicyPassIsQueued(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject"))
	h := harness(t, &seed{spf: spfPass("example.com")}, build(t, srv, ""))
	rep, m := send(t, h, msg)
	hookstest.Expect(t, rep, 250, "queued as")
	v := verdict(t, m)
	want := dmarc.Verdict{Result: authres.ResultPass, From: "example.com", Policy: "reject", Disposition: "none", SPFAligned: true,
		Reason: "p=reject from _dmarc.example.com; SPF pass for example.com aligned; no DKIM signature"}
	if v != want {
		t.Fatalf("verdict\n%+v, want\n%+v", v, want)
	}
}

func TestQuarantinePolicyAddsTheHeader(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=quarantine"))
	h := harness(t, &seed{spf: spfPass("mailer.example.org")}, build(t, srv, ""))
	// The sender's own X-Sluice-DMARC is dropped: only the plugin sets it.
	rep, m := send(t, h, "X-Sluice-DMARC: none\r\n"+msg)
	hookstest.Expect(t, rep, 250, "queued as")
	v := verdict(t, m)
	if v.Result != authres.ResultFail || v.Policy != "quarantine" || v.Disposition != "quarantine" || v.SPFAligned || v.DKIMAligned {
		t.Fatalf("verdict %+v: want a fail under p=quarantine, quarantined", v)
	}
	if want := "SPF pass for mailer.example.org not aligned (aspf=r); no DKIM signature"; !strings.HasSuffix(v.Reason, want) {
		t.Fatalf("reason %q: want it to end with %q", v.Reason, want)
	}
	if n := bytes.Count(m.Data, []byte("X-Sluice-DMARC:")); n != 1 || !bytes.Contains(m.Data, []byte("Subject: hi\r\nX-Sluice-DMARC: quarantine\r\n\r\n")) {
		t.Fatalf("want one X-Sluice-DMARC: quarantine at the end of the header, got %d in:\n%s", n, m.Data)
	}
}

func TestQuarantineHeaderIsConfigurable(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=quarantine"))
	h := harness(t, &seed{}, build(t, srv, `header = "X-Spam-DMARC"`))
	rep, m := send(t, h, msg)
	hookstest.Expect(t, rep, 250)
	if !bytes.Contains(m.Data, []byte("\r\nX-Spam-DMARC: quarantine\r\n")) || bytes.Contains(m.Data, []byte("X-Sluice-DMARC")) {
		t.Fatalf("want X-Spam-DMARC: quarantine:\n%s", m.Data)
	}
}

func TestNonePolicyOnlyNotes(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=none; rua=mailto:dmarc@example.com"))
	h := harness(t, &seed{dkim: []dkim.Signature{{Domain: "example.com", Result: authres.ResultFail, Reason: "body hash did not verify"}}}, build(t, srv, ""))
	rep, m := send(t, h, msg)
	hookstest.Expect(t, rep, 250, "queued as")
	v := verdict(t, m)
	want := dmarc.Verdict{Result: authres.ResultFail, From: "example.com", Policy: "none", Disposition: "none",
		Reason: "p=none from _dmarc.example.com; no SPF result; no DKIM signature passed"}
	if v != want {
		t.Fatalf("verdict\n%+v, want\n%+v", v, want)
	}
	if bytes.Contains(m.Data, []byte("X-Sluice-DMARC")) {
		t.Fatalf("p=none added the quarantine header:\n%s", m.Data)
	}
}

// TestAlignment runs every combination of strict and relaxed alignment
// for SPF and DKIM, From being alice@example.com.
func TestAlignment(t *testing.T) {
	for _, tc := range []struct {
		name          string
		record        string
		spf, dkim     string // the domains that passed; "" for none
		result        authres.ResultValue
		spfOK, dkimOK bool
	}{
		{"spf relaxed, same domain", "", "example.com", "", authres.ResultPass, true, false},
		{"spf relaxed, subdomain", "", "bounces.example.com", "", authres.ResultPass, true, false},
		{"spf relaxed, parent of a subdomain From", "", "EXAMPLE.com.", "", authres.ResultPass, true, false},
		{"spf relaxed, other org", "", "example.org", "", authres.ResultFail, false, false},
		{"spf relaxed, look-alike suffix", "", "notexample.com", "", authres.ResultFail, false, false},
		{"spf strict, same domain", "aspf=s", "example.com", "", authres.ResultPass, true, false},
		{"spf strict, subdomain", "aspf=s", "bounces.example.com", "", authres.ResultFail, false, false},
		{"dkim relaxed, same domain", "", "", "example.com", authres.ResultPass, false, true},
		{"dkim relaxed, subdomain", "", "", "mail.example.com", authres.ResultPass, false, true},
		{"dkim relaxed, other org", "", "", "example.org", authres.ResultFail, false, false},
		{"dkim strict, same domain", "adkim=s", "", "example.com", authres.ResultPass, false, true},
		{"dkim strict, subdomain", "adkim=s", "", "mail.example.com", authres.ResultFail, false, false},
		{"both strict, dkim aligns", "aspf=s; adkim=s", "bounces.example.com", "example.com", authres.ResultPass, false, true},
		{"both relaxed, both align", "", "bounces.example.com", "mail.example.com", authres.ResultPass, true, true},
		{"spf strict fails, dkim relaxed aligns", "aspf=s", "bounces.example.com", "mail.example.com", authres.ResultPass, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := "v=DMARC1; p=reject"
			if tc.record != "" {
				rec += "; " + tc.record
			}
			srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", rec))
			sd := &seed{}
			if tc.spf != "" {
				sd.spf = spfPass(tc.spf)
			}
			if tc.dkim != "" {
				// An unaligned signature that passed comes first: any
				// aligned one is enough.
				sd.dkim = append(dkimPass("mailer.example.net"), dkimPass(tc.dkim)...)
			}
			h := harness(t, sd, build(t, srv, `reject = "note"`))
			rep, m := send(t, h, msg)
			hookstest.Expect(t, rep, 250)
			v := verdict(t, m)
			if v.Result != tc.result || v.SPFAligned != tc.spfOK || v.DKIMAligned != tc.dkimOK {
				t.Fatalf("verdict %+v: want %s, SPF aligned %v, DKIM aligned %v", v, tc.result, tc.spfOK, tc.dkimOK)
			}
		})
	}
}

func TestSubdomainPolicyFromTheOrganizationalDomain(t *testing.T) {
	srv := dnstest.Start(t,
		dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine"),
		dnstest.TXT("_dmarc.own.example.com", "v=DMARC1; p=none"),
	)
	h := harness(t, &seed{}, build(t, srv, ""))

	// news.example.com has no record: example.com's sp= applies.
	rep, m := send(t, h, strings.Replace(msg, "alice@example.com", "alice@news.example.com", 1))
	hookstest.Expect(t, rep, 250)
	v := verdict(t, m)
	if v.From != "news.example.com" || v.Policy != "quarantine" || v.Disposition != "quarantine" ||
		!strings.HasPrefix(v.Reason, "p=quarantine from _dmarc.example.com;") {
		t.Fatalf("verdict %+v: want sp=quarantine of example.com applied", v)
	}
	// own.example.com has its own record: its p= applies, not sp=.
	rep, m = send(t, h, strings.Replace(msg, "alice@example.com", "alice@own.example.com", 1))
	hookstest.Expect(t, rep, 250)
	if v := verdict(t, m); v.Policy != "none" || v.Disposition != "none" {
		t.Fatalf("verdict %+v: want own.example.com's p=none", v)
	}
	// example.com itself: p=, not sp=.
	rep, _ = send(t, h, msg)
	hookstest.ExpectReply(t, rep, "550 5.7.1 rejected by DMARC policy for example.com")
}

func TestOrganizationalDomainFallback(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.co.uk", "v=DMARC1; p=reject"))
	h := harness(t, &seed{}, build(t, srv, ""))
	rep, _ := send(t, h, strings.Replace(msg, "alice@example.com", "alice@a.b.example.co.uk", 1))
	// No sp=: the organizational domain's p= covers its subdomains.
	hookstest.ExpectReply(t, rep, "550 5.7.1 rejected by DMARC policy for a.b.example.co.uk")
	// The From domain first, then the organizational domain (co.uk is a
	// public suffix: example.co.uk is the organization), and no other.
	want := []string{"TXT _dmarc.a.b.example.co.uk.", "TXT _dmarc.example.co.uk."}
	if q := srv.Queries(); !slices.Equal(q, want) {
		t.Fatalf("queries %q, want %q", q, want)
	}
}

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		pct, draw    int
		code         int
		disposition  string
	}{
		{"reject pct=100", "reject", 100, 99, 550, ""},
		{"reject pct=0 becomes quarantine", "reject", 0, 0, 250, "quarantine"},
		{"quarantine pct=0 becomes none", "quarantine", 0, 0, 250, "none"},
		{"quarantine pct=100", "quarantine", 100, 99, 250, "quarantine"},
		{"reject pct=30, drawn in", "reject", 30, 29, 550, ""},
		{"reject pct=30, drawn out", "reject", 30, 30, 250, "quarantine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p="+tc.policy+"; pct="+strconv.Itoa(tc.pct)))
			p := build(t, srv, "")
			dmarc.SetSample(p, func(n int) int {
				if n != 100 {
					t.Errorf("sample(%d): want sample(100)", n)
				}
				return tc.draw
			})
			h := harness(t, &seed{}, p)
			rep, m := send(t, h, msg)
			hookstest.Expect(t, rep, tc.code)
			if tc.code != 250 {
				return
			}
			v := verdict(t, m)
			if v.Policy != tc.policy || v.Disposition != tc.disposition {
				t.Fatalf("verdict %+v: want policy %s, disposition %s", v, tc.policy, tc.disposition)
			}
			out := "; pct=" + strconv.Itoa(tc.pct) + " sampled the message out of p=" + tc.policy
			if sampledOut := tc.draw >= tc.pct; strings.HasSuffix(v.Reason, out) != sampledOut {
				t.Fatalf("reason %q: want it to end with %q: %v", v.Reason, out, sampledOut)
			}
			if got := bytes.Contains(m.Data, []byte("X-Sluice-DMARC: quarantine")); got != (tc.disposition == "quarantine") {
				t.Fatalf("quarantine header %v, want %v:\n%s", got, !got, m.Data)
			}
		})
	}
}

func TestNoRecordIsNone(t *testing.T) {
	srv := dnstest.Start(t)
	h := harness(t, &seed{}, build(t, srv, ""))
	rep, m := send(t, h, msg)
	hookstest.Expect(t, rep, 250, "queued as")
	want := dmarc.Verdict{Result: authres.ResultNone, From: "example.com", Disposition: "none",
		Reason: "no DMARC record at _dmarc.example.com"}
	if v := verdict(t, m); v != want {
		t.Fatalf("verdict\n%+v, want\n%+v", v, want)
	}
}

func TestRecordProblems(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records []string
		result  authres.ResultValue
		reason  string
	}{
		{"malformed p=", []string{dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=block")}, authres.ResultPermError,
			"DMARC record at _dmarc.example.com is malformed: dmarc: invalid policy for parameter 'p'"},
		{"no p=", []string{dnstest.TXT("_dmarc.example.com", "v=DMARC1; rua=mailto:d@example.com")}, authres.ResultPermError,
			"DMARC record at _dmarc.example.com is malformed: dmarc: record is missing a 'p' parameter"},
		{"two records", []string{dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject"), dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=none")},
			authres.ResultNone, "2 DMARC records at _dmarc.example.com: none applies"},
		{"other TXT only", []string{dnstest.TXT("_dmarc.example.com", "google-site-verification=abc")}, authres.ResultNone,
			"no DMARC record at _dmarc.example.com"},
		{"other version", []string{dnstest.TXT("_dmarc.example.com", "v=DMARC2; p=reject")}, authres.ResultNone,
			"no DMARC record at _dmarc.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.Start(t, tc.records...)
			h := harness(t, &seed{}, build(t, srv, ""))
			rep, m := send(t, h, msg)
			hookstest.Expect(t, rep, 250, "queued as")
			if v := verdict(t, m); v.Result != tc.result || v.Reason != tc.reason || v.Disposition != "none" {
				t.Fatalf("verdict %+v: want %s, %q", v, tc.result, tc.reason)
			}
		})
	}
}

func TestServFailIsTempError(t *testing.T) {
	srv := dnstest.Start(t)
	srv.ServFail("_dmarc.example.com")
	// Default: note only.
	h := harness(t, &seed{}, build(t, srv, ""))
	rep, m := send(t, h, msg)
	hookstest.Expect(t, rep, 250, "queued as")
	v := verdict(t, m)
	if v.Result != authres.ResultTempError || v.From != "example.com" || !strings.HasPrefix(v.Reason, "DNS lookup of _dmarc.example.com failed: ") {
		t.Fatalf("verdict %+v: want temperror", v)
	}
	// temperror = "defer": 451.
	h = harness(t, &seed{}, build(t, srv, `temperror = "defer"`))
	rep, _ = send(t, h, msg)
	hookstest.ExpectReply(t, rep, "451 4.7.1 DMARC policy of example.com could not be checked; try again later")
}

func TestFromField(t *testing.T) {
	const rest = "To: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"
	for _, tc := range []struct {
		name, header string
		result       authres.ResultValue
		from, reason string
	}{
		{"no From", "", authres.ResultNone, "", "no From field"},
		{"two From fields", "From: alice@example.com\r\nFrom: mallory@example.org\r\n", authres.ResultPermError, "", "2 From fields (RFC 5322 allows one)"},
		{"two domains", "From: alice@example.com, mallory@example.org\r\n", authres.ResultPermError, "", "From has addresses in several domains (example.com, example.org)"},
		{"two authors, one domain", "From: alice@example.com, Bob <bob@EXAMPLE.com>\r\n", authres.ResultFail, "example.com", ""},
		{"unknown charset in the display name", "From: =?x-unknown?Q?Al=E9?= <alice@example.com>\r\n", authres.ResultFail, "example.com", ""},
		{"folded", "From: \"Alice\r\n Example\" <alice@Example.COM>\r\n", authres.ResultFail, "example.com", ""},
		{"internationalized", "From: alice@bücher.example\r\n", authres.ResultNone, "xn--bcher-kva.example", "no DMARC record at _dmarc.xn--bcher-kva.example"},
		{"no address", "From: undisclosed:;\r\n", authres.ResultNone, "", "From field has no address"},
		{"garbage", "From: not an address\r\n", authres.ResultPermError, "", "From field does not parse: mail: no angle-addr"},
		{"Kelvin sign", "From: alice@\u212Aexample.com\r\n", authres.ResultPermError, "", "From domain \"\u212Aexample.com\" is not a valid domain name"},
		{"address literal", "From: alice@[192.0.2.1]\r\n", authres.ResultNone, "", "From domain is an address literal [192.0.2.1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=quarantine"))
			h := harness(t, &seed{}, build(t, srv, ""))
			s := h.Connect("192.0.2.1")
			hookstest.Expect(t, s.Send("bounce@example.com", []string{"bob@example.net"}, tc.header+rest), 250)
			q := h.Queued()
			v := verdict(t, &q[0])
			if v.Result != tc.result || v.From != tc.from || tc.reason != "" && v.Reason != tc.reason {
				t.Fatalf("verdict %+v: want %s for %q, %q", v, tc.result, tc.from, tc.reason)
			}
		})
	}
}

func TestFromPastTheHeaderIndexIsPermError(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject"))
	h := harness(t, &seed{}, build(t, srv, ""))
	h.Limits.HeaderIndexFields = 2 // the From below is past the fields plugins see
	rep, m := send(t, h, "Received: from a\r\nReceived: from b\r\nReceived: from c\r\n"+msg)
	hookstest.Expect(t, rep, 250)
	want := dmarc.Verdict{Result: authres.ResultPermError, Disposition: "none", Reason: "no From field in the parsed part of an overlong header"}
	if v := verdict(t, m); v != want {
		t.Fatalf("verdict\n%+v, want\n%+v", v, want)
	}
}

func TestRelayClientsAreSkipped(t *testing.T) {
	srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject"))
	h := harness(t, &seed{}, build(t, srv, ""))
	s := h.Connect("192.0.2.1")
	s.Conn().Relay = true
	hookstest.Expect(t, s.Send("alice@example.com", []string{"bob@example.net"}, msg), 250, "queued as")
	if _, ok := h.Queued()[0].Notes[dmarc.NoteResult.Name()]; ok || len(srv.Queries()) != 0 {
		t.Fatalf("a relay client's message was checked: notes %v, queries %q", h.Queued()[0].Notes, srv.Queries())
	}

	h = harness(t, &seed{}, build(t, srv, "check_relay_clients = true"))
	s = h.Connect("192.0.2.1")
	s.Conn().Relay = true
	hookstest.ExpectReply(t, s.Send("alice@example.com", []string{"bob@example.net"}, msg), "550 5.7.1 rejected by DMARC policy for example.com")
}

func TestActions(t *testing.T) {
	for _, tc := range []struct {
		name, policy, settings string
		code                   int
		disposition            string
	}{
		{"note_only under reject", "reject", "note_only = true", 250, "none"},
		{"note_only under quarantine", "quarantine", "note_only = true", 250, "none"},
		{"reject as quarantine", "reject", `reject = "quarantine"`, 250, "quarantine"},
		{"reject as note", "reject", `reject = "note"`, 250, "none"},
		{"quarantine as reject", "quarantine", `quarantine = "reject"`, 550, ""},
		{"quarantine as note", "quarantine", `quarantine = "note"`, 250, "none"},
		{"note_only wins over quarantine = reject", "quarantine", "note_only = true\nquarantine = \"reject\"", 250, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.Start(t, dnstest.TXT("_dmarc.example.com", "v=DMARC1; p="+tc.policy))
			h := harness(t, &seed{}, build(t, srv, tc.settings))
			rep, m := send(t, h, msg)
			hookstest.Expect(t, rep, tc.code)
			if tc.code != 250 {
				hookstest.ExpectReply(t, rep, "550 5.7.1 rejected by DMARC policy for example.com")
				return
			}
			v := verdict(t, m)
			if v.Result != authres.ResultFail || v.Policy != tc.policy || v.Disposition != tc.disposition {
				t.Fatalf("verdict %+v: want a fail under %s, disposition %s", v, tc.policy, tc.disposition)
			}
			if got := bytes.Contains(m.Data, []byte("X-Sluice-DMARC: quarantine")); got != (tc.disposition == "quarantine") {
				t.Fatalf("quarantine header %v, want %v:\n%s", got, !got, m.Data)
			}
		})
	}
}

// TestRealSignatureAndSPF runs a real SPF check and a real DKIM
// verification (a message signed with go-msgauth's dkim.Sign, its key
// published in DNS) before dmarc.
func TestRealSignatureAndSPF(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := dnstest.Start(t,
		dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject; adkim=s"),
		dnstest.TXT("s1._domainkey.mail.example.com", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub)),
		dnstest.TXT("s1._domainkey.example.com", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub)),
		dnstest.TXT("example.org", "v=spf1 ip4:192.0.2.1 -all"),
	)
	sign := func(domain, message string) string {
		var b bytes.Buffer
		if err := msgdkim.Sign(&b, strings.NewReader(message), &msgdkim.SignOptions{Domain: domain, Selector: "s1", Signer: priv}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	r, err := srv.Settings().New()
	if err != nil {
		t.Fatal(err)
	}
	h := harness(t, &seed{dns: r}, build(t, srv, ""))
	s := h.Connect("192.0.2.1")

	// SPF passes for example.org (not aligned); d=example.com aligns
	// strictly.
	hookstest.Expect(t, s.Send("bounce@example.org", []string{"bob@example.net"}, sign("example.com", msg)), 250, "queued as")
	v := verdict(t, &h.Queued()[0])
	want := dmarc.Verdict{Result: authres.ResultPass, From: "example.com", Policy: "reject", Disposition: "none", DKIMAligned: true,
		Reason: "p=reject from _dmarc.example.com; SPF pass for example.org not aligned (aspf=r); DKIM pass for d=example.com aligned"}
	if v != want {
		t.Fatalf("verdict\n%+v, want\n%+v", v, want)
	}

	// d=mail.example.com verifies but adkim=s wants example.com itself.
	hookstest.ExpectReply(t, s.Send("bounce@example.org", []string{"bob@example.net"}, sign("mail.example.com", msg)),
		"550 5.7.1 rejected by DMARC policy for example.com")

	// A body changed after signing does not verify.
	tampered := strings.Replace(sign("example.com", msg), "Hello.", "Hello!", 1)
	hookstest.ExpectReply(t, s.Send("bounce@example.org", []string{"bob@example.net"}, tampered),
		"550 5.7.1 rejected by DMARC policy for example.com")
}

func TestBadSettingsAreRefused(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{`reject = "bounce"`, `reject = "bounce": want "reject", "quarantine" or "note"`},
		{`quarantine = "defer"`, `quarantine = "defer": want "reject", "quarantine" or "note"`},
		{`temperror = "reject"`, `temperror = "reject": want "note" or "defer"`},
		{`header = "X DMARC"`, `header = "X DMARC": want a header field name`},
		{`header = ""`, `header = "": want a header field name`},
		{"[dns]\nservers = [\"ns.example.com\"]", `is not an IP address`},
		{`note_only = "yes"`, `note_only`},
		{`rejct = "note"`, `rejct`},
	} {
		hookstest.ExpectBuildError(t, "dmarc", tc.settings, tc.want)
	}
}

func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "dmarc", "README.md")
}
