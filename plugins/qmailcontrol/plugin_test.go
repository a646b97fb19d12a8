package qmailcontrol_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/qmailcontrol"
	_ "github.com/sluice-mta/sluice/plugins/relay"
)

// controlDir writes a qmail control directory: rcpthosts with an exact and
// a ".domain" line, a morercpthosts.cdb built by tinycdb's cdb(1) (a
// writer no one here wrote, as qmail-newmrh would), badmailfrom,
// badrcptto and localiphost.
func controlDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range map[string]string{
		"rcpthosts":   "example.com\n.example.net\n",
		"badmailfrom": "spammer@bad.example\n@worse.example\n",
		"badrcptto":   "trap@example.com\n",
		"localiphost": "example.com\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := exec.LookPath("cdb"); err != nil {
		t.Fatal("cdb is not installed: run `make deps` (Debian package tinycdb)")
	}
	var in strings.Builder
	for _, k := range []string{"more.example", ".hosted.example"} {
		fmt.Fprintf(&in, "+%d,0:%s->\n", len(k), k)
	}
	in.WriteString("\n")
	cmd := exec.Command("cdb", "-c", filepath.Join(dir, "morercpthosts.cdb"))
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cdb -c: %v\n%s", err, out)
	}
	return dir
}

func TestQmailRules(t *testing.T) {
	dir := controlDir(t)
	h := hookstest.New(t, hookstest.Plugin("qmailcontrol", hookstest.Build(t, "qmailcontrol", fmt.Sprintf("control_dir = %q", dir))), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	s.Helo("client.example")
	hookstest.ExpectReply(t, s.Mail("alice@example.org"), "250 2.1.0 Sender OK")
	for rcpt, want := range map[string]string{
		"bob@example.com":             "250 2.1.5 Recipient OK",
		"bob@mail.example.com":        "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts",
		"bob@example.net":             "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts",
		"bob@a.example.net":           "250 2.1.5 Recipient OK",
		"bob@MORE.example":            "250 2.1.5 Recipient OK",
		"bob@x.hosted.example":        "250 2.1.5 Recipient OK",
		"bob@hosted.example":          "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts",
		"bob@[127.0.0.1]":             "250 2.1.5 Recipient OK", // localiphost
		"bob@[192.0.2.9]":             "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts",
		"trap@example.com":            "553 5.7.1 sorry, your envelope recipient is in my badrcptto list",
		"carol%elsewhere@example.com": "553 5.7.1 Source routing with % or ! is not accepted", // the server's rule
		"carol@elsewhere.example":     "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts",
		"postmaster":                  "250 2.1.5 Recipient OK",
	} {
		hookstest.ExpectReply(t, s.Rcpt(rcpt), want)
	}
	s.Cmd("RSET")
	for from, want := range map[string]string{
		"spammer@bad.example": "553 5.7.1 sorry, your envelope sender is in my badmailfrom list",
		"any@worse.example":   "553 5.7.1 sorry, your envelope sender is in my badmailfrom list",
	} {
		hookstest.ExpectReply(t, s.Mail(from), "250 2.1.0 Sender OK") // qmail-smtpd refuses at RCPT
		hookstest.ExpectReply(t, s.Rcpt("bob@example.com"), want)
		s.Cmd("RSET")
	}
}

func TestRelayClients(t *testing.T) {
	dir := controlDir(t)
	p := hookstest.Build(t, "qmailcontrol", fmt.Sprintf("control_dir = %q", dir))
	h := hookstest.New(t, hookstest.Plugin("relay", hookstest.Build(t, "relay", `allow = ["192.0.2.0/24"]`)), hookstest.Plugin("qmailcontrol", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	rep := s.Send("alice@example.com", []string{"carol@elsewhere.example", "trap@example.com"}, "Subject: hi\r\n\r\nhi\r\n")
	hookstest.ExpectReply(t, rep, "553 5.7.1 sorry, your envelope recipient is in my badrcptto list")
	if q := h.Queued(); len(q) != 1 || len(q[0].Recipients) != 1 || q[0].Recipients[0] != "carol@elsewhere.example" {
		t.Fatalf("a relay client's message to a remote domain was not queued for it alone: %+v", q)
	}

	strict := hookstest.New(t, hookstest.Plugin("relay", hookstest.Build(t, "relay", `allow = ["192.0.2.0/24"]`)),
		hookstest.Plugin("qmailcontrol", hookstest.Build(t, "qmailcontrol", fmt.Sprintf("control_dir = %q\nrelay_clients_ok = false", dir))), hookstest.Queue())
	s = strict.Connect("192.0.2.1")
	s.Helo("client.example")
	s.Mail("alice@example.com")
	hookstest.ExpectReply(t, s.Rcpt("carol@elsewhere.example"), "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts")
}

func TestBuildErrors(t *testing.T) {
	empty := t.TempDir()
	hookstest.ExpectBuildError(t, "qmailcontrol", fmt.Sprintf("control_dir = %q", empty), "rcpthosts does not exist: qmail-smtpd would accept mail for every domain (an open relay)")
	hookstest.ExpectBuildError(t, "qmailcontrol", fmt.Sprintf("control_dir = %q", filepath.Join(empty, "nope")), "qmail control directory")
	os.WriteFile(filepath.Join(empty, "rcpthosts"), []byte("example.com\n"), 0o644)
	os.WriteFile(filepath.Join(empty, "morercpthosts.cdb"), []byte("not a cdb"), 0o644)
	hookstest.ExpectBuildError(t, "qmailcontrol", fmt.Sprintf("control_dir = %q", empty), "not a cdb file")
}

func TestReadme(t *testing.T) {
	dir := controlDir(t)
	ex := hookstest.ReadmeExamples(t, "README.md")[0]
	ex = strings.ReplaceAll(ex, "/var/qmail/control", dir)
	if _, ok := hookstest.BuildFromConfig(t, "qmailcontrol", ex).(*qmailcontrol.Plugin); !ok {
		t.Fatal("the README example does not build a qmailcontrol plugin")
	}
}
