package dkimsign_test

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// These tests check dkimsign's signatures with a verifier nobody here
// wrote: OpenDKIM's filter (Debian package opendkim), in its test mode
// (opendkim -t FILE), which runs a message file through the same milter
// code and library as the daemon and prints the Authentication-Results
// field it would add. It looks the keys up in the test's own DNS server:
// its Nameservers setting (with Debian's build, which resolves through
// libunbound, an address may carry a port as IP@PORT).

// openDKIMProgram returns the path of an OpenDKIM program, failing the
// test with the Debian package to install when it is missing.
func openDKIMProgram(t *testing.T, name, pkg string) string {
	t.Helper()
	p := "/usr/sbin/" + name
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing: install the Debian package %s (`make deps` does, or apt-get install -y opendkim opendkim-tools)", p, pkg)
	}
	return p
}

// opendkimResults verifies msg with OpenDKIM, its key lookups going to
// srv and nowhere else, and returns its verdict for each signature, by
// selector ("pass", "fail", ...), from the Authentication-Results field it
// would add.
func opendkimResults(t *testing.T, srv *dnstest.Server, msg []byte) map[string]string {
	t.Helper()
	opendkim := openDKIMProgram(t, "opendkim", "opendkim")
	// Not t.TempDir: -t takes a comma-separated list of files, and a
	// subtest's name may have a comma.
	dir, err := os.MkdirTemp("", "opendkim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "message.eml")
	if err := os.WriteFile(file, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "opendkim.conf")
	cfg := fmt.Sprintf("Mode v\nSyslog no\nDNSTimeout 5\nNameservers %s\n", strings.Replace(srv.Addr, ":", "@", 1))
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// -vv prints the header fields the filter would insert.
	out, err := exec.Command(opendkim, "-x", conf, "-vv", "-t", file).CombinedOutput()
	if err != nil {
		t.Fatalf("opendkim -t: %v\n%s", err, out)
	}
	ar := arField.FindSubmatch(out)
	if ar == nil {
		t.Fatalf("opendkim added no Authentication-Results field:\n%s", out)
	}
	results := map[string]string{}
	for _, m := range dkimResult.FindAllStringSubmatch(string(ar[1]), -1) {
		results[m[2]] = m[1]
	}
	if len(results) == 0 {
		t.Fatalf("opendkim's Authentication-Results has no dkim result: %s", ar[1])
	}
	t.Logf("opendkim: %s", ar[1])
	// Its keys came from srv: it asked for each one.
	for sel := range results {
		if q := "TXT " + sel + "._domainkey.example.com."; !slices.Contains(srv.Queries(), q) {
			t.Fatalf("opendkim did not ask the test's DNS server %q (it asked %q)", q, srv.Queries())
		}
	}
	return results
}

var (
	// arField is the Authentication-Results field that opendkim -t -vv
	// prints: "### INSHEADER: idx=0 hname='Authentication-Results' hvalue='...'".
	arField = regexp.MustCompile(`(?s)hname='Authentication-Results' hvalue='([^']*)'`)
	// dkimResult is one signature's result in it: "dkim=pass (2048-bit
	// key; unprotected) header.d=example.com ... header.s=rsa2026".
	dkimResult = regexp.MustCompile(`(?s)\bdkim=(\w+).*?header\.s=([\w.-]+)`)
)

func TestOpenDKIMVerifiesTheSignatures(t *testing.T) {
	rk, ek, srv := bothKeys(t)
	big := spooledBody()
	both := map[string]string{"rsa2026": "pass", "ed2026": "pass"}
	for _, c := range []struct{ name, canon, msg string }{
		{"relaxed", "relaxed/relaxed", message},
		{"simple", "simple/simple", message},
		{"folded fields and trailing white space", "relaxed/relaxed", "From: Alice\r\n <alice@example.com>\r\nSubject: a\r\n\tfolded subject\r\nTo: bob@example.net,\r\n  carol@example.net\r\n\r\nbody  \t \r\n\r\n\r\n"},
		{"no body", "relaxed/relaxed", "From: alice@example.com\r\nSubject: empty\r\n"},
		{"no body, simple", "simple/simple", "From: alice@example.com\r\nSubject: empty\r\n"},
		{"spooled to a file", "relaxed/simple", "From: alice@example.com\r\nSubject: big\r\n\r\n" + big},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := signBoth(t, c.canon, rk, ek, c.msg)
			if got := opendkimResults(t, srv, msg); !maps.Equal(got, both) {
				t.Errorf("OpenDKIM's results %v; want %v", got, both)
			}
		})
	}
}

// OpenDKIM does check: a changed body, or a From field added above the
// signed one (what oversigning guards against), fails.
func TestOpenDKIMFailsAChangedMessage(t *testing.T) {
	rk, ek, srv := bothKeys(t)
	h := submission(t, rk.toml()+ek.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)
	for _, c := range []struct{ name, from, to string }{
		{"body", "Noon at", "Midnight at"},
		{"added From", "From: Alice", "From: Mallory <ceo@example.com>\r\nFrom: Alice"},
	} {
		changed := bytes.Replace(msg, []byte(c.from), []byte(c.to), 1)
		got := opendkimResults(t, srv, changed)
		if slices.Contains(slices.Collect(maps.Values(got)), "pass") {
			t.Errorf("%s changed: OpenDKIM's results %v; want no pass", c.name, got)
		}
	}
}

// A key made by opendkim-genkey (Debian package opendkim-tools) signs as
// well as one of ours: dkimsign loads its PEM, and both verifiers pass the
// signature against the record opendkim-genkey wrote.
func TestOpenDKIMGenkeyKeySigns(t *testing.T) {
	genkey := openDKIMProgram(t, "opendkim-genkey", "opendkim-tools")
	dir := t.TempDir()
	// -a: the record's name is fully qualified, as dnstest wants it.
	if out, err := exec.Command(genkey, "-D", dir, "-d", "example.com", "-s", "odk2026", "-a").CombinedOutput(); err != nil {
		t.Fatalf("opendkim-genkey: %v\n%s", err, out)
	}
	rec, err := os.ReadFile(filepath.Join(dir, "odk2026.txt"))
	if err != nil {
		t.Fatal(err)
	}
	record, _, _ := strings.Cut(string(rec), ";  -----") // its trailing comment
	srv := dnstest.Start(t, record)
	k := testKey{domain: "example.com", selector: "odk2026", file: filepath.Join(dir, "odk2026.private")}
	h := submission(t, k.toml())
	msg := sendOne(t, h, loggedIn(t, h), message)
	if vs := verify(t, srv, msg); len(vs) != 1 || vs[0].Err != nil {
		t.Errorf("go-msgauth: verifications %+v; want one that passes", vs)
	}
	if got := opendkimResults(t, srv, msg); got["odk2026"] != "pass" {
		t.Errorf("OpenDKIM's results %v; want odk2026 to pass", got)
	}
}

// opendkim-testkey (Debian package opendkim-tools) finds that the record
// TXTRecord prints (what `smtpd dkim-keygen` prints) publishes the key
// that MarshalKey writes, looking it up in the test's DNS server through a
// libunbound configuration (its ResolverConfiguration setting).
func TestOpenDKIMTestkeyAcceptsOurKeys(t *testing.T) {
	testkey := openDKIMProgram(t, "opendkim-testkey", "opendkim-tools")
	dir := t.TempDir()
	rk := newKey(t, dir, "rsa", "example.com", "rsa2026")
	srv := dnstest.Start(t, rk.record)
	unbound := filepath.Join(dir, "unbound.conf")
	os.WriteFile(unbound, []byte(fmt.Sprintf("server:\n\tdo-not-query-localhost: no\n\tmodule-config: \"iterator\"\nforward-zone:\n\tname: \".\"\n\tforward-addr: %s\n",
		strings.Replace(srv.Addr, ":", "@", 1))), 0o600)
	conf := filepath.Join(dir, "opendkim.conf")
	os.WriteFile(conf, []byte("ResolverConfiguration "+unbound+"\n"), 0o600)
	out, err := exec.Command(testkey, "-x", conf, "-d", "example.com", "-s", "rsa2026", "-k", rk.file, "-vvv").CombinedOutput()
	t.Logf("opendkim-testkey: %s\nqueries: %v", out, srv.Queries())
	if err != nil || !strings.Contains(string(out), "key OK") {
		t.Errorf("opendkim-testkey: %v; want \"key OK\":\n%s", err, out)
	}
}
