package milter_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/hooks/hookstest"
)

var quoted = regexp.MustCompile(`"([^"]*)"`)

// TestOpenDKIMSigns runs the real OpenDKIM (Debian's opendkim) as a
// signing milter, as a Postfix site does with smtpd_milters: the message
// Sluice queues carries its DKIM-Signature, and the signature verifies
// over the bytes queued.
func TestOpenDKIMSigns(t *testing.T) {
	opendkim, genkey := "/usr/sbin/opendkim", "/usr/sbin/opendkim-genkey"
	for bin, pkg := range map[string]string{opendkim: "opendkim", genkey: "opendkim-tools"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s is not installed: apt-get install %s", bin, pkg)
		}
	}
	dir := t.TempDir()
	if out, err := exec.Command(genkey, "-b", "2048", "-d", "example.org", "-s", "sel", "-D", dir).CombinedOutput(); err != nil {
		t.Fatalf("opendkim-genkey: %v\n%s", err, out)
	}
	txt, err := os.ReadFile(filepath.Join(dir, "sel.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text, _, _ := strings.Cut(string(txt), ")")
	var record strings.Builder
	for _, m := range quoted.FindAllStringSubmatch(text, -1) {
		record.WriteString(m[1])
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(dir, "opendkim.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`Mode s
Domain example.org
Selector sel
KeyFile %s
Socket inet:%d@127.0.0.1
InternalHosts 192.0.2.0/24
Canonicalization relaxed/simple
RequireSafeKeys false
Background no
Syslog no
PidFile %s
`, filepath.Join(dir, "sel.private"), port, filepath.Join(dir, "opendkim.pid"))), 0o644)
	cmd := exec.Command(opendkim, "-f", "-x", conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("opendkim did not listen on %s:\n%s", addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	h := harness(t, `address = "inet:`+addr+`"`)
	msg := "From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: signed by a milter\r\n" +
		"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nHello Bob,\r\nthis is signed.\r\n"
	rep := h.Connect("192.0.2.1:40000").Send("alice@example.org", []string{"bob@example.test"}, msg)
	hookstest.Expect(t, rep, 250)
	data := h.Queued()[0].Data
	if !bytes.Contains(data, []byte("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.org;")) {
		t.Fatalf("no DKIM-Signature from opendkim:\n%s\n--- opendkim:\n%s", data, out.String())
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain != "sel._domainkey.example.org" {
				return nil, fmt.Errorf("no record for %s", domain)
			}
			return []string{record.String()}, nil
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
		t.Errorf("the signature does not verify over the queued message: %v %+v\n%s", err, verifs, data)
	}
}
