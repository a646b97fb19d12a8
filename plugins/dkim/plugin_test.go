package dkim_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/dkim"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// The keys of the tests, made once: an RSA key takes a while.
var (
	rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	rsaKey2 = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	edKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

// keyRecord returns the DNS record that publishes key's public half as
// selector._domainkey.domain.
func keyRecord(t testing.TB, domain, selector string, key crypto.Signer) string {
	t.Helper()
	name := selector + "._domainkey." + domain
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return dnstest.TXT(name, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(der))
	case ed25519.PublicKey:
		return dnstest.TXT(name, "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub))
	}
	t.Fatalf("no DKIM key type for %T", key)
	return ""
}

// sign returns msg with a DKIM-Signature made by go-msgauth's signer at
// its top.
func sign(t testing.TB, msg, domain, selector string, key crypto.Signer) string {
	t.Helper()
	var b bytes.Buffer
	err := msgdkim.Sign(&b, strings.NewReader(msg), &msgdkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 key,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
		BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

const message = "From: Alice <alice@example.org>\r\n" +
	"To: bob@example.test\r\n" +
	"Subject: the quarterly figures\r\n" +
	"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.org>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	"\r\n" +
	"the figures are attached.\r\n"

// send sends msg through a chain of dkim (with settings and the DNS
// server's [dns] table), rcptok and a queue recorder, and returns the
// reply and, when it was queued, the note.
func send(t *testing.T, srv *dnstest.Server, settings, msg string) (string, []dkim.Signature) {
	t.Helper()
	h := hookstest.New(t,
		hookstest.Plugin("dkim", hookstest.Build(t, "dkim", settings+"\n"+srv.TOML())),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	rep := h.Connect("192.0.2.1").Send("alice@example.org", []string{"bob@example.test"}, msg)
	q := h.Queued()
	if len(q) == 0 {
		return rep.String(), nil
	}
	v, ok := q[0].Notes[dkim.NoteResults.Name()]
	if !ok {
		t.Fatalf("queued without the note %s", dkim.NoteResults)
	}
	return rep.String(), v.([]dkim.Signature)
}

// expect fails unless the message was queued with the note want.
func expect(t *testing.T, srv *dnstest.Server, settings, msg string, want ...dkim.Signature) {
	t.Helper()
	rep, got := send(t, srv, settings, msg)
	if !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q; want 250", rep)
	}
	if want == nil {
		want = []dkim.Signature{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("note %s:\n got %+v\nwant %+v", dkim.NoteResults, got, want)
	}
}

func pass(domain, selector, algo string) dkim.Signature {
	return dkim.Signature{Domain: domain, Selector: selector, Identifier: "@" + domain, Algorithm: algo, Result: "pass"}
}

func TestPass(t *testing.T) {
	srv := dnstest.Start(t,
		keyRecord(t, "example.org", "rsa1", rsaKey()),
		keyRecord(t, "example.org", "ed1", edKey()))
	expect(t, srv, ``, sign(t, message, "example.org", "rsa1", rsaKey()), pass("example.org", "rsa1", "rsa-sha256"))
	expect(t, srv, ``, sign(t, message, "example.org", "ed1", edKey()), pass("example.org", "ed1", "ed25519-sha256"))
}

func TestUnsigned(t *testing.T) {
	srv := dnstest.Start(t)
	expect(t, srv, ``, message)
	if q := srv.Queries(); len(q) != 0 {
		t.Errorf("an unsigned message asked DNS %v", q)
	}
}

func TestTampered(t *testing.T) {
	srv := dnstest.Start(t, keyRecord(t, "example.org", "rsa1", rsaKey()))
	signed := sign(t, message, "example.org", "rsa1", rsaKey())

	body := strings.Replace(signed, "the figures are attached", "the figures are in the link", 1)
	want := pass("example.org", "rsa1", "rsa-sha256")
	want.Result, want.Reason = "fail", "body hash did not verify"
	expect(t, srv, ``, body, want)

	header := strings.Replace(signed, "Subject: the quarterly figures", "Subject: urgent: wire transfer", 1)
	want.Reason = "signature did not verify: crypto/rsa: verification error"
	expect(t, srv, ``, header, want)
}

func TestKeyErrors(t *testing.T) {
	srv := dnstest.Start(t, `other._domainkey.example.org. 300 IN TXT "v=DKIM1; k=rsa; p="`)
	srv.ServFail("broken._domainkey.example.org.")
	for _, tt := range []struct {
		selector, result, reason string
	}{
		{"missing", "permerror", "no key for signature: lookup missing._domainkey.example.org: no such host"},
		{"broken", "temperror", "key unavailable: lookup broken._domainkey.example.org: server misbehaving"},
		{"other", "permerror", "key revoked"},
	} {
		want := pass("example.org", tt.selector, "rsa-sha256")
		want.Result, want.Reason = authres.ResultValue(tt.result), tt.reason
		expect(t, srv, ``, sign(t, message, "example.org", tt.selector, rsaKey()), want)
	}
}

// TestTimeout: a key server that does not answer is a temporary error,
// noted by default and deferred with on_temperror = "defer" unless
// another signature passed.
func TestTimeout(t *testing.T) {
	srv := dnstest.Start(t, keyRecord(t, "example.org", "rsa1", rsaKey()))
	srv.Hang("slow._domainkey.example.org.")
	slow := sign(t, message, "example.org", "slow", rsaKey())

	want := pass("example.org", "slow", "rsa-sha256")
	want.Result = "temperror"
	rep, got := send(t, srv, ``, slow)
	if !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("reply %q; want 250", rep)
	}
	want.Reason = "key unavailable: lookup slow._domainkey.example.org: timed out"
	if !reflect.DeepEqual(got, []dkim.Signature{want}) {
		t.Errorf("note %+v; want %+v", got, want)
	}

	h := hookstest.New(t,
		hookstest.Plugin("dkim", hookstest.Build(t, "dkim", "on_temperror = \"defer\"\n"+srv.TOML())),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue())
	var log hookstest.LogBuffer
	h.Logger = log.Logger()
	rep = h.Connect("192.0.2.1").Send("alice@example.org", []string{"bob@example.test"}, slow).String()
	if rep != "451 4.7.20 DKIM signature could not be verified; try again later" || len(h.Queued()) != 0 {
		t.Errorf("on_temperror = \"defer\": reply %q, queued %d; want 451 4.7.20 and nothing queued", rep, len(h.Queued()))
	}
	if want := `code=DENYSOFT err="no signature passed; d=example.org s=slow: key unavailable: lookup slow._domainkey.example.org: timed out"`; !strings.Contains(log.String(), `level=WARN msg="plugin refused" hook=data_post plugin=dkim`) || !strings.Contains(log.String(), want) {
		t.Errorf("log:\n%s\nwants %s", log.String(), want)
	}

	// A signature that passed is enough.
	both := sign(t, slow, "example.org", "rsa1", rsaKey())
	rep, got = send(t, srv, `on_temperror = "defer"`, both)
	if !strings.HasPrefix(rep, "250 ") || len(got) != 2 || got[0].Result != "pass" || got[1].Result != "temperror" {
		t.Errorf("on_temperror = \"defer\", one signature passing: reply %q, note %+v; want 250, pass then temperror", rep, got)
	}
}

// TestTwoSignatures: one entry per signature, in header order (a
// signer puts its signature at the top).
func TestTwoSignatures(t *testing.T) {
	srv := dnstest.Start(t,
		keyRecord(t, "example.org", "good", rsaKey()),
		// The key published for "bad" is not the one that signed.
		keyRecord(t, "lists.example.net", "bad", rsaKey2()))
	msg := sign(t, message, "example.org", "good", rsaKey())
	msg = sign(t, msg, "lists.example.net", "bad", rsaKey())
	bad := pass("lists.example.net", "bad", "rsa-sha256")
	bad.Result, bad.Reason = "fail", "signature did not verify: crypto/rsa: verification error"
	expect(t, srv, ``, msg, bad, pass("example.org", "good", "rsa-sha256"))

	// max_verifications = 1: the second is not verified.
	skipped := pass("example.org", "good", "rsa-sha256")
	skipped.Result, skipped.Reason = "policy", "not verified: more than 1 signatures (max_verifications)"
	expect(t, srv, `max_verifications = 1`, msg, bad, skipped)
}

// TestSignatureTags: what is wrong with a signature's own tags.
func TestSignatureTags(t *testing.T) {
	srv := dnstest.Start(t, keyRecord(t, "example.org", "rsa1", rsaKey()))
	signed := sign(t, message, "example.org", "rsa1", rsaKey())
	want := pass("example.org", "rsa1", "rsa-sha256")

	// l= leaves the rest of the body unsigned: refused by policy.
	withL := strings.Replace(signed, "DKIM-Signature: ", "DKIM-Signature: l=20; ", 1)
	want.Result, want.Reason = "policy", "message contains an insecure body length tag"
	expect(t, srv, ``, withL, want)

	// An i= outside d=.
	foreign := strings.Replace(signed, "DKIM-Signature: ", "DKIM-Signature: i=mallory@example.com; ", 1)
	want.Identifier, want.Result, want.Reason = "mallory@example.com", "permerror", "domain mismatch"
	expect(t, srv, ``, foreign, want)

	// No s= at all.
	broken := "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; h=From; bh=AAAA; b=AAAA\r\n" + message
	want = dkim.Signature{Domain: "example.org", Identifier: "@example.org", Algorithm: "rsa-sha256", Result: "permerror", Reason: "signature missing required tag"}
	expect(t, srv, ``, broken, want)
}

// TestLongHeader: a header past the server's index (1000 fields) is read
// again from the spool for the signatures' tags.
func TestLongHeader(t *testing.T) {
	srv := dnstest.Start(t, keyRecord(t, "example.org", "rsa1", rsaKey()))
	var b strings.Builder
	for i := range 1200 {
		fmt.Fprintf(&b, "X-Filler: %d\r\n", i)
	}
	msg := sign(t, b.String()+message, "example.org", "rsa1", rsaKey())
	expect(t, srv, ``, msg, pass("example.org", "rsa1", "rsa-sha256"))
}

func TestBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`max_verifications = 0`, `max_verifications = 0: want at least 1`},
		{`on_temperror = "reject"`, `on_temperror = "reject": want "note" or "defer"`},
		{"[dns]\nservers = [\"ns.example.net\"]", `not an IP address`},
		{`reject_fail = true`, `unknown key "reject_fail"`},
	} {
		hookstest.ExpectBuildError(t, "dkim", tt.settings, tt.want)
	}
}

// TestReadmeExample builds the plugin from the TOML example in README.md.
func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "dkim", "README.md")
}

// TestNoBody: a signed message that ends inside its header (no empty
// line) cannot be taken apart: a permerror, and the message goes on.
func TestNoBody(t *testing.T) {
	srv := dnstest.Start(t, keyRecord(t, "example.org", "rsa1", rsaKey()))
	signed := sign(t, message, "example.org", "rsa1", rsaKey())
	head, _, _ := strings.Cut(signed, "\r\n\r\n")
	want := pass("example.org", "rsa1", "rsa-sha256")
	want.Result, want.Reason = "permerror", "message cannot be parsed: failed to read header: EOF"
	expect(t, srv, ``, head+"\r\n", want)
}
