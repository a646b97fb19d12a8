package t_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// TestFiltersFromTheDocs: the inbound MX of docs/filters.md, with its
// scanners' addresses pointed at a real clamd and a real spamd the test
// starts: swaks sends the EICAR test file (refused, naming the virus),
// GTUBE (refused as spam) and a clean message (delivered with both
// scanners' headers).
func TestFiltersFromTheDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join(rootDir, "docs/filters.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```toml\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/filters.md has no toml example")
	}
	clamd, err := scannertest.StartClamd(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clamd.Stop)
	spamd, err := scannertest.StartSpamd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(spamd.Stop)

	cfg := string(m[1])
	for old, repl := range map[string]string{
		`"unix:/run/clamav/clamd.ctl"`: `"unix:` + clamd.Socket + `"`,
		`"127.0.0.1:783"`:              `"` + spamd.Addr + `"`,
		`"0.0.0.0:25"`:                 `"127.0.0.1:0"`,
		`"/var/lib/sluice/mail"`:       `"./var/mail"`,
		`"/var/lib/sluice"`:            `"./var"`,
	} {
		if !strings.Contains(cfg, old) {
			t.Fatalf("the docs example no longer has %s:\n%s", old, cfg)
		}
		cfg = strings.ReplaceAll(cfg, old, repl)
	}
	dir := t.TempDir()
	s := startSmtpdIn(t, dir, cfg)

	out, _ := swaks(t, s.Addr("mx"), "--from", "a@example.org", "--to", "bob@example.test", "--body", scannertest.EICAR)
	if !strings.Contains(out, "<** 554 5.7.1 Message contains a virus: "+scannertest.EICARSignature) {
		t.Errorf("EICAR was not refused with the virus name:\n%s", out)
	}
	out, _ = swaks(t, s.Addr("mx"), "--from", "a@example.org", "--to", "bob@example.test", "--body", scannertest.GTUBE)
	if !regexp.MustCompile(`<\*\* 550 5\.7\.1 Message refused as spam \(score \d+\.\d, limit 10\.0\)`).MatchString(out) {
		t.Errorf("GTUBE was not refused as spam:\n%s", out)
	}
	if files := maildirFiles(t, filepath.Join(dir, "var/mail")); len(files) != 0 {
		t.Errorf("%d messages delivered after two refusals", len(files))
	}
	out, code := swaks(t, s.Addr("mx"), "--from", "alice@example.org", "--to", "bob@example.test",
		"--header", "Subject: lunch", "--body", "Lunch tomorrow at noon?")
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued") {
		t.Fatalf("the clean message was not accepted: exit %d\n%s", code, out)
	}
	files := maildirFiles(t, filepath.Join(dir, "var/mail"))
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	got, _ := os.ReadFile(files[0])
	head, _, _ := strings.Cut(string(got), "\r\n\r\n")
	if !strings.Contains(head, "\r\nX-Virus-Scanned: clean (ClamAV)\r\n") || !regexp.MustCompile(`\r\nX-Spam-Status: No, score=-?\d+\.\d required=5\.0 tests=`).MatchString(head) {
		t.Errorf("the delivered header lacks the scanners' fields:\n%s", head)
	}
}
