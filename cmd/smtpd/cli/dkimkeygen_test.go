package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/cmd/smtpd/cli"
	"github.com/sluice-mta/sluice/plugins/dkimsign"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// keygen runs `smtpd dkim-keygen args...` and returns its exit code, its
// standard output and its standard error.
func keygen(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := cli.Main(append([]string{"dkim-keygen"}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestDKIMKeygen(t *testing.T) {
	for _, c := range []struct{ algorithm, k string }{
		{"rsa", "rsa"},
		{"ed25519", "ed25519"},
	} {
		t.Run(c.algorithm, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "key.pem")
			code, out, errOut := keygen("-domain", "Example.COM", "-selector", "s2026", "-algorithm", c.algorithm, "-out", file)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !strings.Contains(errOut, "private key written to "+file) {
				t.Errorf("stderr %q: want it to say where the key went", errOut)
			}
			// The record, on one line, name first (the domain as DNS
			// compares it), value split into strings of at most 255 bytes.
			record := strings.TrimSuffix(out, "\n")
			prefix := `s2026._domainkey.example.com. IN TXT "v=DKIM1; k=` + c.k + `; p=`
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(record, prefix) {
				t.Fatalf("stdout %q: want one line starting %q", out, prefix)
			}
			for _, s := range strings.Split(strings.TrimPrefix(record, "s2026._domainkey.example.com. IN TXT "), `" "`) {
				if n := len(strings.Trim(s, `"`)); n > 255 {
					t.Errorf("a string of %d bytes in the record", n)
				}
			}

			fi, err := os.Stat(file)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v; want 0600", fi.Mode().Perm())
			}

			// The record publishes the key in the file: a message signed
			// with the file verifies against a DNS server serving the
			// printed line as it is.
			key, err := dkimsign.LoadKey(file)
			if err != nil {
				t.Fatal(err)
			}
			var signed bytes.Buffer
			msg := "From: alice@example.com\r\nSubject: hi\r\n\r\nHello\r\n"
			if err := dkim.Sign(&signed, strings.NewReader(msg), &dkim.SignOptions{Domain: "example.com", Selector: "s2026", Signer: key}); err != nil {
				t.Fatal(err)
			}
			srv := dnstest.Start(t, record)
			r, err := srv.Settings().New()
			if err != nil {
				t.Fatal(err)
			}
			vs, err := dkim.VerifyWithOptions(&signed, &dkim.VerifyOptions{
				LookupTXT: func(name string) ([]string, error) { return r.LookupTXT(context.Background(), name) },
			})
			if err != nil || len(vs) != 1 || vs[0].Err != nil {
				t.Errorf("verify: %v %+v; want one signature that passes", err, vs)
			}

			// A second run never replaces the key.
			before, _ := os.ReadFile(file)
			code, out, errOut = keygen("-domain", "example.com", "-selector", "s2026", "-algorithm", c.algorithm, "-out", file)
			if code != 1 || out != "" || !strings.Contains(errOut, file+" already exists: not replacing") {
				t.Errorf("over an existing file: exit %d, stdout %q, stderr %q; want 1 and a refusal naming the file", code, out, errOut)
			}
			if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
				t.Error("the existing key file was changed")
			}
		})
	}
}

func TestDKIMKeygenDefaultFileAndBits(t *testing.T) {
	t.Chdir(t.TempDir())
	code, out, errOut := keygen("-domain", "example.org", "-selector", "big", "-bits", "3072")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	key, err := dkimsign.LoadKey("big._domainkey.example.org.pem")
	if err != nil {
		t.Fatalf("the default file: %v", err)
	}
	rec, _ := dkimsign.TXTRecord("big", "example.org", key.Public())
	if strings.TrimSuffix(out, "\n") != rec {
		t.Errorf("stdout %q; want %q", out, rec)
	}
	if !strings.Contains(rec, "k=rsa") || len(rec) < 500 {
		t.Errorf("record %q: want a 3072-bit RSA key", rec)
	}
}

func TestDKIMKeygenBadArguments(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-selector", "s1"}, 2, "-domain and -selector are required"},
		{[]string{"-domain", "example.com"}, 2, "-domain and -selector are required"},
		{[]string{"-domain", "example.com", "-selector", "s1", "-algorithm", "dsa"}, 2, `algorithm "dsa": want "rsa" or "ed25519"`},
		{[]string{"-domain", "example.com", "-selector", "s1", "-bits", "512"}, 2, "an RSA key of 512 bits: want at least 1024"},
		{[]string{"-domain", "example.com", "-selector", "s_1"}, 2, `-selector "s_1": want a DNS label`},
		{[]string{"-domain", "alice@example.com", "-selector", "s1"}, 2, `-domain "alice@example.com" is not a domain name`},
		{[]string{"-domain", "example.com", "-selector", "s1", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"-domain", "example.com", "-selector", "s1", "-out", filepath.Join(dir, "no", "such", "dir.pem")}, 1, "no such file or directory"},
	} {
		code, out, errOut := keygen(c.args...)
		if code != c.code || out != "" || !strings.Contains(errOut, c.want) {
			t.Errorf("dkim-keygen %q: exit %d, stdout %q, stderr %q; want exit %d and %q", c.args, code, out, errOut, c.code, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused run left files behind: %v", entries)
	}
}
