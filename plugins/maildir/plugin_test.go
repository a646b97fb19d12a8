package maildir_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/maildir"
	"github.com/sluice-mta/sluice/transaction"
)

// acceptAll accepts every recipient.
type acceptAll struct{}

func (acceptAll) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

const body = "Subject: hi\r\n\r\nbody\r\n.dot line\r\n"

func harness(t *testing.T, dir string) *hookstest.Harness {
	t.Helper()
	p := hookstest.Build(t, "maildir", `path = "`+dir+`"`)
	return hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("maildir", p))
}

func TestQueuedMessageLandsInNew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	h := harness(t, dir)
	s := h.Connect("192.0.2.1")
	rep := s.Send("a@example.org", []string{"b@example.test"}, body)
	hookstest.Expect(t, rep, 250, "queued as")
	id := strings.TrimPrefix(rep.Msg, "Ok: queued as ")

	files, err := filepath.Glob(filepath.Join(dir, "new", "*"))
	if err != nil || len(files) != 1 {
		t.Fatalf("new/ holds %v (%v), want one file", files, err)
	}
	if !strings.Contains(filepath.Base(files[0]), id) {
		t.Errorf("file %s does not carry the queue id %q from the reply", files[0], id)
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(got), "Received: from client.example.test ([192.0.2.1])\r\n") ||
		!strings.Contains(string(got), " id "+id) || !strings.HasSuffix(string(got), "\r\n"+body) {
		t.Errorf("stored message:\n%q\nwant the Received field with id %s, then the message byte for byte", got, id)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ is not empty")
	}
}

func TestDeliveredFileIsLoggedNotSent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	h := harness(t, dir)
	var log hookstest.LogBuffer
	h.Logger = log.Logger()
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"b@example.test"}, body)
	hookstest.Expect(t, rep, 250, "Ok: queued as")
	if strings.Contains(rep.String(), dir) {
		t.Errorf("reply %q shows the file's path", rep)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	if len(files) != 1 || !strings.Contains(log.String(), `msg="message queued"`) || !strings.Contains(log.String(), `detail="delivered to `+files[0]+`"`) {
		t.Errorf("the message queued line lacks detail=\"delivered to %v\":\n%s", files, log.String())
	}
}

func TestUnwritableMaildirDefers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	h := harness(t, dir)
	// Break the Maildir after start-up: tmp/ becomes a file.
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := h.Connect("192.0.2.1")
	rep := s.Send("a@example.org", []string{"b@example.test"}, body)
	hookstest.Expect(t, rep, 451, "4.3.0", "try again later")
	if strings.Contains(rep.String(), dir) {
		t.Errorf("reply %q leaks the path", rep)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "new", "*")); len(files) != 0 {
		t.Errorf("new/ holds %v after a failure", files)
	}
}

func TestSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ settings, wantErr string }{
		{`path = ""`, "path"},
		{`path = "` + file + `"`, "path = "},
		{`path = 5`, "path"},
		{`paht = "x"`, "paht"},
	} {
		hookstest.ExpectBuildError(t, "maildir", tc.settings, tc.wantErr)
	}
	// The default path is created relative to the working directory.
	t.Chdir(dir)
	hookstest.Build(t, "maildir", "")
	if fi, err := os.Stat(filepath.Join(dir, "var", "mail", "new")); err != nil || !fi.IsDir() {
		t.Errorf("default path ./var/mail/new not created: %v", err)
	}
}
