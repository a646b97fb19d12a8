package t_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// TestAuthenticationResultsEndToEnd: an inbound MX with the five
// message-authentication plugins, its DNS answers from a server the test
// starts on loopback. swaks sends mail from example.net, signed with
// example.net's key and sent from an address its SPF record allows:
//
//   - the delivered message carries one Authentication-Results field of
//     ours with spf, dkim and dmarc pass, on top, and a Received-SPF;
//   - a forged Authentication-Results field claiming our authserv-id is
//     gone, another server's is kept;
//   - the same message with its body changed in transit (by a mailing
//     list, whose own envelope sender has no SPF record) fails DKIM;
//     neither identifier aligns, DMARC fails and example.net's p=reject
//     refuses it with 550. (Had the envelope sender still been
//     alice@example.net, her SPF pass would align and DMARC would pass.)
func TestAuthenticationResultsEndToEnd(t *testing.T) {
	t.Parallel()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t,
		`example.net. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		dnstest.TXT("s1._domainkey.example.net.", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub)),
		`_dmarc.example.net. 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=r"`,
	)
	dir := t.TempDir()
	s := startSmtpdIn(t, dir, fmt.Sprintf(`hostname = "mx.example.test"
data_dir = "./var"

[dns]
servers = [%q]
timeout = "2s"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["spf", "rcptok", "dkim", "dmarc", "authresults", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.authresults]
authserv_id = "mx.example.test"

[plugins.maildir]
path = "./var/mail"
`, dns.Addr))

	body := "Hello Bob,\r\n\r\nthe figures are attached.\r\n"
	header := "From: Alice <alice@example.net>\r\nTo: bob@example.test\r\nSubject: figures\r\n" +
		"Date: Sat, 05 Dec 2026 12:00:00 +0000\r\nMessage-ID: <figures-1@example.net>\r\n"
	var signed bytes.Buffer
	err = dkim.Sign(&signed, strings.NewReader(header+"\r\n"+body), &dkim.SignOptions{
		Domain: "example.net", Selector: "s1", Signer: priv,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// What a forger adds on the way, outside what the signature covers.
	msg := "Authentication-Results: mx.example.test; dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example\r\n" +
		"Authentication-Results: relay.example.org; spf=none smtp.mailfrom=alice@example.net\r\n" +
		signed.String()
	data := filepath.Join(dir, "signed.eml")
	if err := os.WriteFile(data, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}

	out, code := swaks(t, s.Addr("mx"), "--from", "alice@example.net", "--to", "bob@example.test", "--ehlo", "client.example.net", "--data", data)
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued") {
		t.Fatalf("the signed message was not accepted: exit %d\n%s", code, out)
	}
	files := maildirFiles(t, filepath.Join(dir, "var/mail"))
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	delivered := string(got)
	m, err := mail.ReadMessage(strings.NewReader(delivered))
	if err != nil {
		t.Fatal(err)
	}
	var ours []string
	for _, v := range m.Header["Authentication-Results"] {
		if strings.HasPrefix(v, "mx.example.test;") {
			ours = append(ours, v)
		}
	}
	if len(ours) != 1 || !strings.HasPrefix(delivered, "Authentication-Results: mx.example.test;") {
		t.Fatalf("want exactly one Authentication-Results field of ours, on top; the message begins:\n%.1500s", delivered)
	}
	unfolded := ours[0]
	for _, want := range []string{
		"spf=pass", "smtp.mailfrom=alice@example.net",
		"dkim=pass", "header.d=example.net", "header.s=s1",
		"dmarc=pass", "header.from=example.net",
	} {
		if !strings.Contains(unfolded, want) {
			t.Errorf("our Authentication-Results field lacks %q:\n%s", want, unfolded)
		}
	}
	if strings.Contains(delivered, "bank.example") {
		t.Errorf("the forged Authentication-Results field claiming mx.example.test was delivered:\n%.1500s", delivered)
	}
	if !strings.Contains(delivered, "\r\nAuthentication-Results: relay.example.org; spf=none smtp.mailfrom=alice@example.net\r\n") {
		t.Errorf("another server's Authentication-Results field was not kept as it was")
	}
	if !regexp.MustCompile(`(?m)^Received-SPF: pass `).MatchString(delivered) {
		t.Errorf("no Received-SPF: pass field:\n%.1500s", delivered)
	}
	if !strings.Contains(delivered, "\r\n\r\n"+body) {
		t.Errorf("the body was not delivered as sent:\n%q", delivered)
	}

	// The body changed on the way: DKIM fails, DMARC fails, p=reject.
	tampered := strings.Replace(msg, "the figures are attached", "the figures are at http://evil.example", 1)
	if err := os.WriteFile(data, []byte(tampered), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = swaks(t, s.Addr("mx"), "--from", "list-bounces@lists.example.org", "--to", "bob@example.test", "--ehlo", "client.example.net", "--data", data)
	if !strings.Contains(out, "<** 550 5.7.1 rejected by DMARC policy for example.net") {
		t.Errorf("a message whose signed body was changed was not refused by example.net's p=reject:\n%s", out)
	}
	if n := len(maildirFiles(t, filepath.Join(dir, "var/mail"))); n != 1 {
		t.Errorf("%d messages delivered, want still 1", n)
	}
	if q := dns.Queries(); len(q) == 0 {
		t.Error("no DNS query reached the test's server")
	}
}
