package qmailctl_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/qmailctl"
)

// makeCDB builds a cdb file with tinycdb's cdb(1), a cdb writer no one here
// wrote, from keys with empty values, as qmail-newmrh builds
// morercpthosts.cdb from morercpthosts.
func makeCDB(t *testing.T, path string, keys ...string) {
	t.Helper()
	if _, err := exec.LookPath("cdb"); err != nil {
		t.Fatal("cdb is not installed: run `make deps` (Debian package tinycdb)")
	}
	var in strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&in, "+%d,0:%s->\n", len(k), k)
	}
	in.WriteString("\n")
	cmd := exec.Command("cdb", "-c", path)
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cdb -c: %v\n%s", err, out)
	}
}

func write(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadControlDirectory(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "me", "mx.example.com\n")
	write(t, dir, "databytes", "10485760\n")
	write(t, dir, "timeoutsmtpd", "300\n")
	write(t, dir, "rcpthosts", "example.com\n.example.net\n*.wild.example\nExample.ORG  \n\n# not a comment in qmail\nuser@example.com\n")
	write(t, dir, "badmailfrom", "spammer@bad.example\n@worse.example\nnot-an-address\n")
	write(t, dir, "badrcptto", "trap@example.com\n")
	var many []string
	for i := range 3000 {
		many = append(many, fmt.Sprintf("d%d.example", i))
	}
	makeCDB(t, filepath.Join(dir, "morercpthosts.cdb"), append(many, ".sub.example")...)

	c, err := qmailctl.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Me != "mx.example.com" || c.SMTPGreeting != "mx.example.com" || c.LocalIPHost != "mx.example.com" {
		t.Errorf("me %q, smtpgreeting %q, localiphost %q: want control/me for all three", c.Me, c.SMTPGreeting, c.LocalIPHost)
	}
	if c.Databytes != 10485760 || c.TimeoutSMTPD != 300*time.Second {
		t.Errorf("databytes %d, timeoutsmtpd %v", c.Databytes, c.TimeoutSMTPD)
	}
	for domain, want := range map[string]bool{
		"example.com":         true,  // exact
		"mail.example.com":    false, // "example.com" is not ".example.com"
		"example.net":         false, // ".example.net" matches only subdomains
		"a.b.example.net":     true,
		"example.org":         true, // case and trailing blanks as qmail
		"x.wild.example":      false,
		"d0.example":          true, // from the cdb
		"d2999.example":       true,
		"d3000.example":       false,
		"deep.in.sub.example": true, // ".sub.example" in the cdb
		"sub.example":         false,
	} {
		got, err := c.Allowed(domain)
		if err != nil || got != want {
			t.Errorf("Allowed(%q) = %v, %v; want %v", domain, got, err, want)
		}
	}
	if len(c.Warnings) != 4 {
		t.Errorf("warnings %q: want the wildcard, the comment, the address in rcpthosts and the bad badmailfrom line", c.Warnings)
	}
	for _, w := range []string{`rcpthosts:3: "*.wild.example" ignored: qmail has no wildcards: write ".wild.example"`, `badmailfrom:3: "not-an-address" ignored`} {
		if !slices.ContainsFunc(c.Warnings, func(s string) bool { return strings.Contains(s, w) }) {
			t.Errorf("no warning %q in %q", w, c.Warnings)
		}
	}
	for addr, want := range map[string]bool{
		"spammer@bad.example": true, "SPAMMER@BAD.EXAMPLE": true, "other@bad.example": false,
		"anyone@worse.example": true, "anyone@sub.worse.example": false,
	} {
		if got := qmailctl.Listed(c.BadMailFrom, addr); got != want {
			t.Errorf("badmailfrom lists %q: %v, want %v", addr, got, want)
		}
	}
	if !qmailctl.Listed(c.BadRcptTo, "Trap@example.com") || qmailctl.Listed(c.BadRcptTo, "bob@example.com") {
		t.Error("badrcptto")
	}
}

func TestReadDefaultsAndErrors(t *testing.T) {
	dir := t.TempDir()
	c, err := qmailctl.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.HasRcpthosts || c.Me != "" || c.Databytes != 0 || c.MoreRcpthosts != nil {
		t.Errorf("an empty directory: %+v", c)
	}
	write(t, dir, "smtpgreeting", "greetings.example.com\n")
	write(t, dir, "me", "mx.example.com\n")
	if c, _ = qmailctl.Read(dir); c.SMTPGreeting != "greetings.example.com" {
		t.Errorf("smtpgreeting %q", c.SMTPGreeting)
	}
	write(t, dir, "databytes", "ten megs\n")
	if _, err := qmailctl.Read(dir); err == nil || !strings.Contains(err.Error(), `databytes: "ten megs" is not a number`) {
		t.Errorf("bad databytes: %v", err)
	}
	os.Remove(filepath.Join(dir, "databytes"))
	write(t, dir, "morercpthosts.cdb", "short")
	if _, err := qmailctl.Read(dir); err == nil || !strings.Contains(err.Error(), "not a cdb file") {
		t.Errorf("bad cdb: %v", err)
	}
	if _, err := qmailctl.Read(filepath.Join(dir, "nope")); err == nil {
		t.Error("a missing directory is not an error")
	}
}
