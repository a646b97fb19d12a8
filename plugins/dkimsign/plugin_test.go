// A 512-bit RSA key, to check that one is refused, is only made with this.
//go:debug rsa1024min=0

package dkimsign_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/authfile"
	"github.com/sluice-mta/sluice/plugins/dkimsign"
	"github.com/sluice-mta/sluice/resolver/dnstest"
	"github.com/sluice-mta/sluice/transaction"

	// The other plugins of the README's example, so it builds whole.
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	_ "github.com/sluice-mta/sluice/plugins/relay"
	_ "github.com/sluice-mta/sluice/plugins/senderlogin"
	_ "github.com/sluice-mta/sluice/plugins/smtpforward"
)

// testKey is a key made for a test, and the zone-file line that publishes
// it.
type testKey struct {
	domain, selector, file, record string
}

// newKey writes a fresh key of algorithm ("rsa" or "ed25519") for
// selector._domainkey.domain into dir.
func newKey(t testing.TB, dir, algorithm, domain, selector string) testKey {
	t.Helper()
	k, err := dkimsign.GenerateKey(algorithm, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b, err := dkimsign.MarshalKey(k)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, selector+"."+domain+".pem")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rec, err := dkimsign.TXTRecord(selector, domain, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return testKey{domain: domain, selector: selector, file: file, record: rec}
}

// bothKeys makes an RSA key (selector rsa2026) and an Ed25519 key
// (ed2026) for example.com, and a DNS server that publishes both.
func bothKeys(t *testing.T) (rk, ek testKey, srv *dnstest.Server) {
	t.Helper()
	dir := t.TempDir()
	rk = newKey(t, dir, "rsa", "example.com", "rsa2026")
	ek = newKey(t, dir, "ed25519", "example.com", "ed2026")
	return rk, ek, dnstest.Start(t, rk.record, ek.record)
}

// signBoth sends msg as alice through a submission chain that signs with
// rk and ek in canonicalization canon, and returns it as queued.
func signBoth(t *testing.T, canon string, rk, ek testKey, msg string) []byte {
	t.Helper()
	h := submission(t, fmt.Sprintf("canonicalization = %q\n", canon)+rk.toml()+ek.toml())
	return sendOne(t, h, loggedIn(t, h), msg)
}

// spooledBody returns a body long enough to spool to a file (1.2 MB).
func spooledBody() string {
	return strings.Repeat("A line of a long message, long enough to spool to a file.\r\n", 20000)
}

// toml is the key's [[plugins.dkimsign.key]] table, for a settings
// snippet (whose own keys must come before it).
func (k testKey) toml() string {
	return fmt.Sprintf("\n[[key]]\ndomain = %q\nselector = %q\nfile = %q\n", k.domain, k.selector, k.file)
}

// The users' password file is made once: argon2id is slow on purpose.
var passwdFile string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dkimsign-test-")
	if err != nil {
		panic(err)
	}
	passwdFile = filepath.Join(dir, "passwd")
	if err := authfile.SetPassword(passwdFile, "alice@example.com", "secret"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// submission is a submission chain: authfile (alice@example.com,
// "secret"), relay (192.0.2.0/24 relays without AUTH), rcptok (example.net
// is local), dkimsign with settings, and a queue recorder.
func submission(t testing.TB, settings string) *hookstest.Harness {
	t.Helper()
	h := hookstest.New(t,
		hookstest.Plugin("authfile", hookstest.Build(t, "authfile", fmt.Sprintf("path = %q", passwdFile))),
		hookstest.Plugin("relay", hookstest.Build(t, "relay", `allow = ["192.0.2.0/24"]`)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.net"]`)),
		hookstest.Plugin("dkimsign", hookstest.Build(t, "dkimsign", settings)),
		hookstest.Queue(),
	)
	h.AuthPlaintextLoopback = true
	return h
}

// loggedIn returns a session of alice, authenticated from loopback.
func loggedIn(t testing.TB, h *hookstest.Harness) *hookstest.Session {
	t.Helper()
	s := h.Connect("127.0.0.1")
	hookstest.Expect(t, s.Helo("laptop.example.com"), 250)
	hookstest.ExpectReply(t, s.AuthPlain("alice@example.com", "secret"), "235 2.7.0 Authentication successful")
	return s
}

const message = "From: Alice <alice@example.com>\r\n" +
	"To: Bob <bob@example.net>\r\n" +
	"Subject: Lunch\r\n" +
	"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\n" +
	"Message-ID: <lunch.1@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"X-Mailer: test\r\n" +
	"\r\n" +
	"Noon at the usual place?   \r\n" +
	"\r\n" +
	"\r\n"

// sendOne sends msg from alice to bob and returns it as queued.
func sendOne(t testing.TB, h *hookstest.Harness, s *hookstest.Session, msg string) []byte {
	t.Helper()
	before := len(h.Queued())
	hookstest.Expect(t, s.Send("alice@example.com", []string{"bob@example.net"}, msg), 250, "queued")
	q := h.Queued()
	if len(q) != before+1 {
		t.Fatalf("%d messages queued; want %d", len(q), before+1)
	}
	return q[len(q)-1].Data
}

// verify checks the signatures of msg as a receiver would, looking the
// keys up in srv.
func verify(t testing.TB, srv *dnstest.Server, msg []byte) []*dkim.Verification {
	t.Helper()
	r, err := srv.Settings().New()
	if err != nil {
		t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return r.LookupTXT(context.Background(), name) },
	})
	if err != nil {
		t.Fatalf("dkim.Verify: %v", err)
	}
	return vs
}

// signatures returns the DKIM-Signature fields of msg's header, unfolded.
func signatures(msg []byte) []string {
	head, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var sigs []string
	for _, f := range strings.Split(strings.ReplaceAll(string(head), "\r\n ", " "), "\r\n") {
		if v, ok := strings.CutPrefix(f, "DKIM-Signature: "); ok {
			sigs = append(sigs, v)
		}
	}
	return sigs
}

// tag returns the value of tag name in a DKIM-Signature value, white
// space removed.
func tag(sig, name string) string {
	for _, t := range strings.Split(sig, ";") {
		k, v, _ := strings.Cut(t, "=")
		if strings.TrimSpace(k) == name {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

func TestSignsAnAuthenticatedUsersMessage(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	srv := dnstest.Start(t, k.record)
	h := submission(t, k.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)

	if !bytes.HasPrefix(msg, []byte("DKIM-Signature: ")) {
		t.Fatalf("the queued message does not start with its DKIM-Signature:\n%s", msg)
	}
	vs := verify(t, srv, msg)
	if len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verifications %+v; want one that passes", vs)
	}
	if vs[0].Domain != "example.com" {
		t.Errorf("d=%s; want example.com", vs[0].Domain)
	}
	sig := signatures(msg)[0]
	for tg, want := range map[string]string{
		"a": "rsa-sha256", "c": "relaxed/relaxed", "d": "example.com", "s": "rsa2026",
		"h": "From:From:Subject:Date:To:Message-ID:MIME-Version:Content-Type",
	} {
		if got := tag(sig, tg); got != want {
			t.Errorf("%s=%s; want %s (signature %s)", tg, got, want, sig)
		}
	}
	if got := h.Queued()[0].Notes[dkimsign.NoteSigned.Name()]; !slices.Equal(got.([]string), []string{"rsa2026._domainkey.example.com"}) {
		t.Errorf("note %s = %v", dkimsign.NoteSigned.Name(), got)
	}
	// The Received field the server added is below the signature, and
	// the message as sent follows untouched.
	if !bytes.Contains(msg, []byte("\r\nReceived: ")) || !bytes.HasSuffix(msg, []byte(message)) {
		t.Errorf("the queued message is not the signature, the Received field and the message as sent:\n%s", msg)
	}
}

func TestBothAlgorithmsGiveTwoSignatures(t *testing.T) {
	rk, ek, srv := bothKeys(t)
	h := submission(t, rk.toml()+ek.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)

	sigs := signatures(msg)
	if len(sigs) != 2 {
		t.Fatalf("%d DKIM-Signature fields; want 2:\n%s", len(sigs), msg)
	}
	// In the order of the configuration, first on top.
	if tag(sigs[0], "a") != "rsa-sha256" || tag(sigs[0], "s") != "rsa2026" ||
		tag(sigs[1], "a") != "ed25519-sha256" || tag(sigs[1], "s") != "ed2026" {
		t.Errorf("signatures %q; want rsa-sha256 (s=rsa2026) then ed25519-sha256 (s=ed2026)", sigs)
	}
	vs := verify(t, srv, msg)
	if len(vs) != 2 {
		t.Fatalf("%d verifications; want 2", len(vs))
	}
	for i, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Errorf("signature %d: domain %s, err %v; want a pass for example.com", i+1, v.Domain, v.Err)
		}
	}
}

func TestFromIsOversigned(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "ed25519", "example.com", "ed2026")
	srv := dnstest.Start(t, k.record)
	h := submission(t, k.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)

	h0 := tag(signatures(msg)[0], "h")
	if n := strings.Count(strings.ToLower(h0)+":", "from:"); n != 2 {
		t.Fatalf("h=%s lists From %d times; want 2 (one field, oversigned once)", h0, n)
	}
	// What oversigning is for: a second From added on the way (above the
	// first, where a reader's client may show it) breaks the signature.
	forged := bytes.Replace(msg, []byte("From: Alice"), []byte("From: Mallory <ceo@example.com>\r\nFrom: Alice"), 1)
	if vs := verify(t, srv, forged); len(vs) != 1 || vs[0].Err == nil {
		t.Errorf("a message with a From field added still verifies")
	}
	// And a changed body or signed field breaks it too, while a changed
	// unsigned field does not.
	for _, c := range []struct {
		from, to string
		pass     bool
	}{
		{"Noon at", "Midnight at", false},
		{"Subject: Lunch", "Subject: Dinner", false},
		{"X-Mailer: test", "X-Mailer: other", true},
	} {
		changed := bytes.Replace(msg, []byte(c.from), []byte(c.to), 1)
		vs := verify(t, srv, changed)
		if pass := len(vs) == 1 && vs[0].Err == nil; pass != c.pass {
			t.Errorf("%q changed to %q: pass = %v; want %v", c.from, c.to, pass, c.pass)
		}
	}
}

func TestUnauthenticatedClientIsNotSigned(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	h := submission(t, k.toml())
	// Incoming mail for a local domain, from a client that did not log in.
	s := h.Connect("198.51.100.7")
	hookstest.Expect(t, s.Send("alice@example.com", []string{"bob@example.net"}, message), 250, "queued")
	// A relay client by IP, without AUTH: not signed by default.
	s = h.Connect("192.0.2.10")
	hookstest.Expect(t, s.Send("alice@example.com", []string{"carol@elsewhere.test"}, message), 250, "queued")
	for i, m := range h.Queued() {
		if sigs := signatures(m.Data); len(sigs) != 0 {
			t.Errorf("message %d was signed: %q", i+1, sigs)
		}
		if _, ok := m.Notes[dkimsign.NoteSigned.Name()]; ok {
			t.Errorf("message %d has the note %s", i+1, dkimsign.NoteSigned.Name())
		}
	}
}

func TestRelayClientsAreSignedWhenAsked(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	srv := dnstest.Start(t, k.record)
	h := submission(t, "sign_relay_clients = true\n"+k.toml())
	s := h.Connect("192.0.2.10")
	hookstest.Expect(t, s.Send("alice@example.com", []string{"carol@elsewhere.test"}, message), 250, "queued")
	s = h.Connect("198.51.100.7") // neither relay nor authenticated
	hookstest.Expect(t, s.Send("alice@example.com", []string{"bob@example.net"}, message), 250, "queued")
	q := h.Queued()
	if vs := verify(t, srv, q[0].Data); len(vs) != 1 || vs[0].Err != nil {
		t.Errorf("the relay client's message: verifications %+v; want one that passes", vs)
	}
	if sigs := signatures(q[1].Data); len(sigs) != 0 {
		t.Errorf("the other client's message was signed: %q", sigs)
	}
}

func TestFromWithoutAKeyIsLeftUnsigned(t *testing.T) {
	var logs hookstest.LogBuffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })

	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	h := submission(t, k.toml())
	s := loggedIn(t, h)
	for _, c := range []struct{ from, reason string }{
		{"From: alice@sub.example.com", "no key for the From domain"},
		{"From: alice@example.org", "no key for the From domain"},
		{"From: alice@example.com, bob@example.org", "From addresses in more than one domain"},
		{"From: alice@example.com\r\nFrom: alice@example.com", "more than one From field"},
		{"From: not an address", "the From field does not parse"},
		{"Sender: alice@example.com", "no From field"},
	} {
		msg := sendOne(t, h, s, c.from+"\r\nSubject: hi\r\n\r\nHello\r\n")
		if sigs := signatures(msg); len(sigs) != 0 {
			t.Errorf("%q: signed: %q", c.from, sigs)
		}
		if !strings.Contains(logs.String(), `reason="`+c.reason+`"`) {
			t.Errorf("%q: the log does not say %q:\n%s", c.from, c.reason, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "level=DEBUG msg=\"dkimsign: message left unsigned\"") {
		t.Errorf("not logged at debug level:\n%s", logs.String())
	}
}

func TestFromDomainIsMatchedAsADomain(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "ed25519", "example.com", "ed2026")
	srv := dnstest.Start(t, k.record)
	h := submission(t, k.toml())
	s := loggedIn(t, h)
	for _, from := range []string{
		"From: ALICE@EXAMPLE.COM",
		"From: \"Alice, Sales\" <alice@Example.Com>, bob@example.com",
		"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>",
		// Display names in charsets net/mail does not decode must not
		// leave the message unsigned.
		"From: =?windows-1252?q?Al=EFce?= <alice@example.com>",
		"From: =?iso-2022-jp?B?GyRCJUElJiVkGyhC?= <alice@example.com>",
	} {
		msg := sendOne(t, h, s, from+"\r\nSubject: hi\r\n\r\nHello\r\n")
		if vs := verify(t, srv, msg); len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.com" {
			t.Errorf("%q: verifications %+v; want one pass for example.com", from, vs)
		}
	}
}

func TestUnusualMessagesVerify(t *testing.T) {
	rk, ek, srv := bothKeys(t)
	big := spooledBody()
	for _, c := range []struct{ name, canon, msg string }{
		{"no body", "relaxed/relaxed", "From: alice@example.com\r\nSubject: empty\r\n"},
		{"no body, simple", "simple/simple", "From: alice@example.com\r\nSubject: empty\r\n"},
		{"empty body", "relaxed/relaxed", "From: alice@example.com\r\nSubject: empty\r\n\r\n"},
		{"folded fields, simple", "simple/simple", "From: Alice\r\n <alice@example.com>\r\nSubject: a\r\n\tfolded subject\r\n\r\nbody  \r\n"},
		{"spooled to a file", "relaxed/relaxed", "From: alice@example.com\r\nSubject: big\r\n\r\n" + big},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := signBoth(t, c.canon, rk, ek, c.msg)
			verified := msg
			if !bytes.Contains(msg, []byte("\r\n\r\n")) {
				// go-msgauth's verifier wants the empty line; a body
				// that is not there is canonicalized as an empty one
				// (RFC 6376 3.4.3, 3.4.4), so the signature covers
				// both. OpenDKIM checks the message as it is
				// (opendkim_test.go).
				verified = append(bytes.Clone(msg), "\r\n"...)
			}
			vs := verify(t, srv, verified)
			if len(vs) != 2 {
				t.Fatalf("%d verifications; want 2", len(vs))
			}
			for _, v := range vs {
				if v.Err != nil {
					t.Errorf("%v", v.Err)
				}
			}
			if got := tag(signatures(msg)[0], "c"); got != c.canon {
				t.Errorf("c=%s; want %s", got, c.canon)
			}
		})
	}
}

func TestHeadersAndOversignSettings(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	srv := dnstest.Start(t, k.record)
	h := submission(t, `headers = ["from", "subject", "x-mailer", "list-id"]
oversign = ["from", "subject"]
`+k.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)
	if got := tag(signatures(msg)[0], "h"); got != "from:from:subject:subject:x-mailer" {
		t.Errorf("h=%s; want from:from:subject:subject:x-mailer", got)
	}
	if vs := verify(t, srv, msg); len(vs) != 1 || vs[0].Err != nil {
		t.Errorf("verifications %+v; want one that passes", vs)
	}
}

func TestBadSettings(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t, dir, "rsa", "example.com", "rsa2026")
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a key\n"), 0o600)
	small := filepath.Join(dir, "small.pem")
	sk, err := rsa.GenerateKey(rand.Reader, 512)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(small, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sk)}), 0o600)
	unreadable := filepath.Join(dir, "unreadable.pem")
	os.WriteFile(unreadable, nil, 0o000)
	missing := filepath.Join(dir, "missing.pem")

	key := func(domain, selector, file string) string {
		return fmt.Sprintf("\n[[key]]\ndomain = %q\nselector = %q\nfile = %q\n", domain, selector, file)
	}
	for _, c := range []struct{ settings, want string }{
		{``, "no key: add a [[plugins.dkimsign.key]] table"},
		{key("example.com", "s1", missing), "key 1 (s1._domainkey.example.com): key file: open " + missing + ": no such file or directory"},
		{key("example.com", "s1", garbage), "key 1 (s1._domainkey.example.com): key file " + garbage + ": no PEM private key"},
		{key("example.com", "s1", small), "RSA key of 512 bits: DKIM wants at least 1024"},
		{key("example.com", "s1", ""), "key 1 (s1._domainkey.example.com): file is missing"},
		{key("", "s1", k.file), `key 1: domain = "": want a domain name`},
		{key("alice@example.com", "s1", k.file), `key 1: domain = "alice@example.com": want a domain name`},
		{key("example.com", "", k.file), `key 1 (example.com): selector = "": want a DNS label`},
		{key("example.com", "s_1", k.file), `selector = "s_1": want a DNS label`},
		{key("example.com", "s1", k.file) + key("EXAMPLE.com", "S1", k.file), `key 2: selector "S1" of example.com is listed twice`},
		{"canonicalization = \"relaxed\"\n" + k.toml(), `canonicalization = "relaxed": want "HEADER/BODY"`},
		{"canonicalization = \"nofws/simple\"\n" + k.toml(), `canonicalization = "nofws/simple"`},
		{"headers = [\"Subject\"]\n" + k.toml(), "headers: From must be signed"},
		{"headers = [\"From:\"]\n" + k.toml(), `headers: "From:" is not a header field name`},
		{"oversign = [\"To\"]\nheaders = [\"From\"]\n" + k.toml(), `oversign: "To" is not in headers`},
		{"signrelay = true\n" + k.toml(), "signrelay"},
	} {
		hookstest.ExpectBuildError(t, "dkimsign", c.settings, c.want)
	}
	if os.Getuid() != 0 { // root reads any file
		hookstest.ExpectBuildError(t, "dkimsign", key("example.com", "s1", unreadable), "key file: open "+unreadable+": permission denied")
	}
}

// The README's example loads with its key files present: the paths are
// replaced by keys made here, and the whole configuration is built as
// smtpd builds it (t/meta_test.go runs `smtpd check` on it too, where the
// key files do not exist and it stops at the first one).
func TestReadmeExample(t *testing.T) {
	dir := t.TempDir()
	text := hookstest.ReadmeExamples(t, "README.md")[0]
	var records []string
	for _, f := range []struct{ algorithm, domain, selector, path string }{
		{"rsa", "example.com", "rsa2026", "/etc/sluice/dkim/example.com.rsa.pem"},
		{"ed25519", "example.com", "ed2026", "/etc/sluice/dkim/example.com.ed25519.pem"},
		{"rsa", "example.org", "rsa2026", "/etc/sluice/dkim/example.org.rsa.pem"},
	} {
		if !strings.Contains(text, f.path) {
			t.Fatalf("the README example does not name %s", f.path)
		}
		k := newKey(t, dir, f.algorithm, f.domain, f.selector)
		text = strings.ReplaceAll(text, f.path, k.file)
		records = append(records, k.record)
	}
	text = strings.ReplaceAll(text, "/etc/sluice/passwd", passwdFile)
	cfg, err := config.Parse("README.md", text)
	if err != nil {
		t.Fatal(err)
	}
	built, err := cfg.Build()
	if err != nil {
		t.Fatalf("the README example does not build: %v", err)
	}
	t.Cleanup(func() {
		for _, p := range built {
			if c, ok := p.(interface{ Close() error }); ok {
				c.Close()
			}
		}
	})

	// The example's dkimsign signs example.com twice and example.org once.
	srv := dnstest.Start(t, records...)
	h := hookstest.New(t,
		hookstest.Plugin("authfile", built["authfile"]),
		hookstest.Plugin("dkimsign", built["dkimsign"]),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.net"]`)),
		hookstest.Queue())
	h.AuthPlaintextLoopback = true
	s := loggedIn(t, h)
	for domain, n := range map[string]int{"example.com": 2, "example.org": 1} {
		msg := sendOne(t, h, s, "From: alice@"+domain+"\r\nSubject: hi\r\n\r\nHello\r\n")
		vs := verify(t, srv, msg)
		if len(vs) != n {
			t.Fatalf("%s: %d signatures; want %d", domain, len(vs), n)
		}
		for _, v := range vs {
			if v.Err != nil || v.Domain != domain {
				t.Errorf("%s: domain %s, err %v", domain, v.Domain, v.Err)
			}
		}
	}
}

func TestKeyFormats(t *testing.T) {
	// PKCS#1 RSA keys (older openssl genrsa, opendkim-genkey on old
	// systems) load as well as PKCS#8.
	sk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sk)})
	k, err := dkimsign.ParseKey(pkcs1)
	if err != nil {
		t.Fatalf("PKCS#1: %v", err)
	}
	if !sk.PublicKey.Equal(k.Public()) {
		t.Error("PKCS#1: another key came back")
	}
	// A certificate before the key is skipped.
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")})
	if _, err := dkimsign.ParseKey(append(cert, pkcs1...)); err != nil {
		t.Errorf("a certificate, then the key: %v", err)
	}
	for _, c := range []struct {
		algorithm string
		bits      int
		want      string
	}{
		{"rsa", 512, "want at least 1024"},
		{"rsa", 16384, "want at most 8192"},
		{"dsa", 0, `algorithm "dsa": want "rsa" or "ed25519"`},
	} {
		if _, err := dkimsign.GenerateKey(c.algorithm, c.bits); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("GenerateKey(%q, %d) = %v; want an error containing %q", c.algorithm, c.bits, err, c.want)
		}
	}
}

// Every TXT string is at most 255 bytes: a 4096-bit key needs three.
func TestTXTRecordSplitsLongKeys(t *testing.T) {
	k, err := dkimsign.GenerateKey("rsa", 4096)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := dkimsign.TXTRecord("big", "example.com", k.Public())
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok := strings.Cut(rec, ` IN TXT "`)
	if !ok || head != "big._domainkey.example.com." {
		t.Fatalf("record %q", rec)
	}
	parts := strings.Split(strings.TrimSuffix(rest, `"`), `" "`)
	if len(parts) < 3 {
		t.Errorf("%d strings; want 3 or more for a 4096-bit key", len(parts))
	}
	for i, p := range parts {
		if len(p) > 255 {
			t.Errorf("string %d is %d bytes", i+1, len(p))
		}
	}
	want, _ := dkimsign.KeyRecord(k.Public())
	if strings.Join(parts, "") != want {
		t.Error("the strings do not join back into the key record")
	}
	// dnstest (miekg/dns's zone parser) takes the line as it is.
	srv := dnstest.Start(t, rec)
	r, _ := srv.Settings().New()
	txts, err := r.LookupTXT(context.Background(), "big._domainkey.example.com")
	if err != nil || len(txts) != 1 || txts[0] != want {
		t.Errorf("LookupTXT = %q, %v; want the key record", txts, err)
	}
}

var _ hooks.QueuePre = (*dkimsign.Plugin)(nil)

// nullQueue is a queue plugin that reads the message as a queue would and
// keeps nothing, so what a message costs in memory is the chain's own.
type nullQueue struct{ n int64 }

func (q *nullQueue) Queue(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	n, err := tx.WriteTo(io.Discard)
	if err != nil {
		return hooks.Fail(err)
	}
	q.n = n
	return hooks.Accept("")
}

// peakHeap returns the most heap in use, over what was in use before,
// seen while one session sends msg through a chain with dkimsign built
// from settings ("" for none). The garbage collector runs often meanwhile
// (GOGC=5), so what it sees is what the chain holds, not garbage.
func peakHeap(t *testing.T, settings, msg string) uint64 {
	t.Helper()
	ins := []hooks.Instance{
		hookstest.Plugin("authfile", hookstest.Build(t, "authfile", fmt.Sprintf("path = %q", passwdFile))),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.net"]`)),
	}
	if settings != "" {
		ins = append(ins, hookstest.Plugin("dkimsign", hookstest.Build(t, "dkimsign", settings)))
	}
	q := &nullQueue{}
	h := hookstest.New(t, append(ins, hookstest.Plugin("queue", q))...)
	h.AuthPlaintextLoopback = true
	s := loggedIn(t, h)
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	peak := base
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // samples the heap while the message goes through
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	rep := s.Send("alice@example.com", []string{"bob@example.net"}, msg)
	close(done)
	<-sampled
	hookstest.Expect(t, rep, 250, "queued")
	if q.n < int64(len(msg)) {
		t.Fatalf("the queue read %d bytes; want at least %d", q.n, len(msg))
	}
	return peak - base
}

// Signing reads the message from the spool as it streams by: with two
// keys, an 8 MB message makes the heap grow by less than a copy of it
// (2 to 5 MB more than without signing, measured: go-msgauth's
// canonicalizers allocate per chunk, garbage the collector has not yet
// taken when the heap is sampled; a copy held would add 8 MB to that).
func TestSigningDoesNotCopyTheMessage(t *testing.T) {
	dir := t.TempDir()
	rk := newKey(t, dir, "rsa", "example.com", "rsa2026")
	ek := newKey(t, dir, "ed25519", "example.com", "ed2026")
	msg := message + strings.Repeat("A line of a long message, long enough to spool to a file.\r\n", 8<<20/60)
	without := peakHeap(t, "", msg)
	with := peakHeap(t, rk.toml()+ek.toml(), msg)
	t.Logf("an %d-byte message: the heap grew by %d bytes at most without dkimsign, %d with it (two keys)", len(msg), without, with)
	if with > without+uint64(len(msg)) { // a copy would be all of it, and the churn on top
		t.Errorf("signing an %d-byte message grew the heap by %d bytes more than not signing it; want well under a copy of it", len(msg), with-without)
	}
}

func BenchmarkSign(b *testing.B) {
	dir := b.TempDir()
	rk := newKey(b, dir, "rsa", "example.com", "rsa2026")
	ek := newKey(b, dir, "ed25519", "example.com", "ed2026")
	body := strings.Repeat("A line of a message of a usual size, some tens of kilobytes.\r\n", 30<<10/64)
	for _, c := range []struct{ name, settings string }{
		{"none", ""},
		{"rsa2048", rk.toml()},
		{"ed25519", ek.toml()},
		{"both", rk.toml() + ek.toml()},
	} {
		b.Run(c.name, func(b *testing.B) {
			ins := []hooks.Instance{
				hookstest.Plugin("authfile", hookstest.Build(b, "authfile", fmt.Sprintf("path = %q", passwdFile))),
				hookstest.Plugin("rcptok", hookstest.Build(b, "rcptok", `domains = ["example.net"]`)),
			}
			if c.settings != "" {
				ins = append(ins, hookstest.Plugin("dkimsign", hookstest.Build(b, "dkimsign", c.settings)))
			}
			h := hookstest.New(b, append(ins, hookstest.Plugin("queue", &nullQueue{}))...)
			h.AuthPlaintextLoopback = true
			h.Logger = slog.New(slog.DiscardHandler)
			s := loggedIn(b, h)
			b.SetBytes(int64(len(message) + len(body)))
			for b.Loop() {
				if rep := s.Send("alice@example.com", []string{"bob@example.net"}, message+body); rep.Code != 250 {
					b.Fatal(rep)
				}
			}
		})
	}
}
