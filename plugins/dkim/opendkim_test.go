package dkim_test

// Interoperability with a signer no one here wrote: OpenDKIM, the Debian
// packages opendkim (the filter, whose test mode signs a message read on
// stdin) and opendkim-tools (opendkim-genkey, opendkim-testmsg).

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// openDKIMProgram returns the path of an OpenDKIM program, failing the
// test with the Debian package to install when it is missing.
func openDKIMProgram(t testing.TB, name, pkg string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s is not installed: run `make deps` (Debian package %s)", name, pkg)
	return ""
}

// runOpenDKIM runs an OpenDKIM program with stdin and returns its
// standard output, failing the test when it fails.
func runOpenDKIM(t testing.TB, stdin string, prog string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", prog, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

var quoted = regexp.MustCompile(`"([^"]*)"`)

// openDKIMKey makes a 2048-bit RSA key pair with opendkim-genkey in dir
// and returns the private key's file and the DNS record of the public
// key, from the TXT record text opendkim-genkey writes. hashes is its -h
// (the hash algorithms the key may be used with).
func openDKIMKey(t testing.TB, dir, domain, selector, hashes string) (keyFile, record string) {
	t.Helper()
	genkey := openDKIMProgram(t, "opendkim-genkey", "opendkim-tools")
	runOpenDKIM(t, "", genkey, "-b", "2048", "-h", hashes, "-d", domain, "-s", selector, "-D", dir)
	txt, err := os.ReadFile(filepath.Join(dir, selector+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	// od1._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." ) ; comment
	text, _, _ := strings.Cut(string(txt), ")")
	var value strings.Builder
	for _, m := range quoted.FindAllStringSubmatch(text, -1) {
		value.WriteString(m[1])
	}
	if !strings.Contains(value.String(), "p=MII") {
		t.Fatalf("no public key in %s.txt:\n%s", selector, txt)
	}
	return filepath.Join(dir, selector+".private"), dnstest.TXT(selector+"._domainkey."+domain, value.String())
}

// openDKIMSign has the opendkim filter sign msg (CRLF line ends) in its
// test mode, as a signing milter would, with a private configuration in
// dir, and returns the signed message.
func openDKIMSign(t testing.TB, dir, keyFile, domain, selector, canon, msg string) string {
	t.Helper()
	opendkim := openDKIMProgram(t, "opendkim", "opendkim")
	conf := filepath.Join(dir, "opendkim.conf")
	// RequireSafeKeys: the key is under the test's temporary directory,
	// which /tmp's permissions make "unsafe" to OpenDKIM.
	text := "Mode s\nSyslog no\nRequireSafeKeys false\nSignatureAlgorithm rsa-sha256\n" +
		"Domain " + domain + "\nSelector " + selector + "\nKeyFile " + keyFile + "\nCanonicalization " + canon + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out := runOpenDKIM(t, msg, opendkim, "-x", conf, "-b", "s", "-t", "-")
	// Test mode prints "opendkim: (stdin):", then the field it would add.
	_, field, ok := strings.Cut(out, "\n")
	if !ok || !strings.HasPrefix(field, "DKIM-Signature: ") {
		t.Fatalf("opendkim added no signature:\n%s", out)
	}
	return crlf(strings.TrimRight(field, "\r\n")+"\n") + msg
}

// crlf gives every line of s a CRLF ending.
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// TestOpenDKIM: messages OpenDKIM signed verify, in both
// canonicalizations, and fail once changed.
func TestOpenDKIM(t *testing.T) {
	dir := t.TempDir()
	keyFile, record := openDKIMKey(t, dir, "example.org", "od1", "sha256")
	srv := dnstest.Start(t, record)
	for _, canon := range []string{"relaxed/relaxed", "simple/simple"} {
		signed := openDKIMSign(t, dir, keyFile, "example.org", "od1", canon, message)
		if !strings.Contains(signed, "c="+canon+";") {
			t.Fatalf("%s: opendkim's signature does not say c=%s:\n%s", canon, canon, signed)
		}
		want := pass("example.org", "od1", "rsa-sha256")
		expect(t, srv, ``, signed, want)

		want.Result, want.Reason = "fail", "body hash did not verify"
		expect(t, srv, ``, strings.Replace(signed, "the figures are attached", "the figures are in the link", 1), want)

		want.Reason = "signature did not verify: crypto/rsa: verification error"
		expect(t, srv, ``, strings.Replace(signed, "To: bob@example.test", "To: eve@example.test", 1), want)
	}
}

// TestOpenDKIMTestmsg: opendkim-testmsg signs with rsa-sha1, which RFC
// 8301 forbids verifiers to accept: a permanent error, not a pass.
func TestOpenDKIMTestmsg(t *testing.T) {
	dir := t.TempDir()
	keyFile, record := openDKIMKey(t, dir, "example.org", "old", "sha1:sha256")
	srv := dnstest.Start(t, record)
	testmsg := openDKIMProgram(t, "opendkim-testmsg", "opendkim-tools")
	signed := crlf(runOpenDKIM(t, message, testmsg, "-C", "-d", "example.org", "-s", "old", "-k", keyFile, "-t", dir))
	if !strings.HasPrefix(signed, "DKIM-Signature: v=1; a=rsa-sha1;") {
		t.Fatalf("opendkim-testmsg's output is not a message signed with rsa-sha1:\n%s", signed)
	}
	_, got := send(t, srv, ``, signed)
	want := []dkim.Signature{{Domain: "example.org", Selector: "old", Identifier: "@example.org", Algorithm: "rsa-sha1", Result: "permerror", Reason: "hash algorithm too weak: sha1"}}
	if len(got) != 1 || got[0] != want[0] {
		t.Errorf("note %+v; want %+v", got, want)
	}
}
