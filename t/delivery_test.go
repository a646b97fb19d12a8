package t_test

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
)

// mxConfig is an inbound listener for example.test delivering to Maildir.
func mxConfig(extra string) string {
	return `hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["loop", "size", "maxrcpt", "rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maxrcpt]
max = 2

[plugins.size]
max = "1MB"

[plugins.maildir]
path = "./var/mail"
` + extra
}

const message = "From: Alice <alice@example.org>\r\n" +
	"To: Bob <bob@example.test>\r\n" +
	"Subject: end to end\r\n" +
	"Message-ID: <e2e-1@example.org>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	".a line that starts with a dot\r\n" +
	"\r\n" +
	"Bye.\r\n"

var receivedRe = regexp.MustCompile(`^Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n\tby mx\.example\.test \(Sluice\) with ESMTP id ([0-9A-Z]{16})\r\n\tfor <bob@example\.test>; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n`)

// dataFile writes message for swaks's --data. swaks ends the data with
// "\r\n.\r\n" itself, so the file leaves out the message's last CRLF.
func dataFile(t *testing.T) string {
	return "@" + writeFile(t, t.TempDir(), "msg.eml", strings.TrimSuffix(message, "\r\n"))
}

func TestSwaksDeliveryLandsInMaildirByteForByte(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org", "--to", "bob@example.test", "--data", dataFile(t))
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	m := regexp.MustCompile(`<-\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no 250 queued reply:\n%s", out)
	}
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != 1 {
		t.Fatalf("Maildir new/ has %d files, want 1", len(files))
	}
	if !strings.Contains(filepath.Base(files[0]), m[1]) {
		t.Errorf("Maildir file %s does not carry the queue id %s", files[0], m[1])
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	rm := receivedRe.FindSubmatch(got)
	if rm == nil {
		t.Fatalf("stored message does not start with the expected Received header:\n%q", got)
	}
	if string(rm[1]) != m[1] {
		t.Errorf("Received id %s, queue id %s", rm[1], m[1])
	}
	// swaks dot-stuffs; the stored body is the original, byte for byte.
	if body := got[len(rm[0]):]; !bytes.Equal(body, []byte(message)) {
		t.Fatalf("stored message differs from what was sent:\n got %q\nwant %q", body, message)
	}
	s.waitLog("queue_id=" + m[1])
	if entries, _ := os.ReadDir(filepath.Join(s.dir, "var", "mail", "tmp")); len(entries) != 0 {
		t.Errorf("Maildir tmp/ still holds %d files", len(entries))
	}
}

func TestForeignRecipientIsRefusedAndNothingQueued(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org", "--to", "victim@elsewhere.test")
	if code == 0 {
		t.Fatalf("swaks succeeded relaying to a foreign domain:\n%s", out)
	}
	if !regexp.MustCompile(`<\*\*\s+550 5\.7\.1 relaying denied`).MatchString(out) {
		t.Fatalf("want 550 5.7.1 relaying denied:\n%s", out)
	}
	if files := maildirFiles(t, filepath.Join(s.dir, "var", "mail")); len(files) != 0 {
		t.Fatalf("something was queued: %v", files)
	}
}

func TestPluginDenySoftReachesTheClientAs4xx(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	// maxrcpt (max = 2) defers the third recipient: a 4xx, not a bounce.
	out, _ := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org",
		"--to", "a@example.test,b@example.test,c@example.test", "--quit-after", "RCPT")
	if !regexp.MustCompile(`<\*\*\s+452 4\.5\.3 Too many recipients`).MatchString(out) {
		t.Fatalf("third recipient: want 452 4.5.3 Too many recipients:\n%s", out)
	}
	if n := len(regexp.MustCompile(`<-\s+250 2\.1\.5`).FindAllString(out, -1)); n != 2 {
		t.Fatalf("want the first two recipients accepted:\n%s", out)
	}
}

func TestOversizeMessageIsRefusedWhileReading(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 1100)
	data := "@" + writeFile(t, t.TempDir(), "big.eml", big)
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org", "--to", "bob@example.test", "--data", data)
	if code == 0 || !strings.Contains(out, "552 5.3.4") {
		t.Fatalf("want 552 5.3.4 for a 1.1 MB message over a 1 MB limit (exit %d):\n%s", code, out)
	}
	if files := maildirFiles(t, filepath.Join(s.dir, "var", "mail")); len(files) != 0 {
		t.Fatalf("an oversize message was queued")
	}
}

func TestQmailQueueHandoffSpeaksTheProtocol(t *testing.T) {
	dir := t.TempDir()
	qq := filepath.Join(dir, "qqcheck")
	build := exec.Command("go", "build", "-o", qq, "./queue/testdata/qqcheck")
	build.Dir = rootDir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building qqcheck: %v\n%s", err, out)
	}
	envFile, msgFile := filepath.Join(dir, "envelope"), filepath.Join(dir, "message")
	for _, tc := range []struct {
		exit  string
		reply string
	}{
		{"0", "250 2.0.0 Ok: queued as"},
		{"31", "554 5.3.0"},
		{"53", "451 4.3.0"},
	} {
		t.Run("exit"+tc.exit, func(t *testing.T) {
			t.Setenv("QQCHECK_ENVELOPE", envFile)
			t.Setenv("QQCHECK_MESSAGE", msgFile)
			t.Setenv("QQCHECK_EXIT", tc.exit)
			s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "qmailqueue"]
[plugins.rcptok]
domains = ["example.test"]
[plugins.qmailqueue]
path = "`+qq+`"
`)
			out, _ := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org",
				"--to", "bob@example.test,carol@example.test", "--data", dataFile(t))
			if !strings.Contains(out, tc.reply) {
				t.Fatalf("qmail-queue exit %s: want %q:\n%s", tc.exit, tc.reply, out)
			}
			env, err := os.ReadFile(envFile)
			if err != nil {
				t.Fatalf("qqcheck wrote no envelope: %v", err)
			}
			if want := "Falice@example.org\x00Tbob@example.test\x00Tcarol@example.test\x00\x00"; string(env) != want {
				t.Fatalf("envelope %q, want %q", env, want)
			}
			// qmail stores LF line endings: the plugin converts, as
			// qmail-smtpd does.
			msg, _ := os.ReadFile(msgFile)
			lf := strings.ReplaceAll(message, "\r\n", "\n")
			if !bytes.HasSuffix(msg, []byte("\n"+lf)) || !bytes.HasPrefix(msg, []byte("Received: ")) || bytes.Contains(msg, []byte("\r")) {
				t.Fatalf("message given to qmail-queue: %q", msg)
			}
		})
	}
}

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestSMTPForwardToPostfixSmtpSink(t *testing.T) {
	sinkBin := "/usr/sbin/smtp-sink"
	if _, err := os.Stat(sinkBin); err != nil {
		t.Fatal("smtp-sink is not installed: run `make deps` (Debian package postfix)")
	}
	dumpDir := t.TempDir()
	sinkAddr := freePort(t)
	// -d: dump each message into dumpDir; -u: run as this user; 10: backlog.
	sink := exec.Command(sinkBin, "-u", "root", "-d", dumpDir+"/%M.", "-c", sinkAddr, "10")
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Process.Kill(); sink.Wait() })
	waitListening(t, sinkAddr)

	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "smtpforward"]
[plugins.rcptok]
domains = ["example.test"]
[plugins.smtpforward]
host = "`+sinkAddr+`"
`)
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org",
		"--to", "bob@example.test", "--data", dataFile(t))
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued as") {
		t.Fatalf("forward via smtp-sink (exit %d):\n%s", code, out)
	}
	var dumped []byte
	deadline := time.Now().Add(5 * time.Second)
	for dumped == nil && time.Now().Before(deadline) {
		entries, _ := os.ReadDir(dumpDir)
		for _, e := range entries {
			dumped, _ = os.ReadFile(filepath.Join(dumpDir, e.Name()))
		}
		if dumped == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !bytes.Contains(dumped, []byte("Subject: end to end")) || !bytes.Contains(dumped, []byte("by mx.example.test (Sluice)")) {
		t.Fatalf("smtp-sink received:\n%s", dumped)
	}
}

func TestForwardToADeadDownstreamDefers(t *testing.T) {
	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "smtpforward"]
[plugins.rcptok]
domains = ["example.test"]
[plugins.smtpforward]
host = "`+freePort(t)+`"
`)
	out, code := swaks(t, s.Addr("mx"), "--ehlo", "client.example", "--from", "alice@example.org", "--to", "bob@example.test")
	if code == 0 || !regexp.MustCompile(`<\*\*\s+45\d `).MatchString(out) {
		t.Fatalf("a dead downstream must give 4xx (exit %d):\n%s", code, out)
	}
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSmtpdCheckAndPluginsAndVersion(t *testing.T) {
	run := func(args ...string) (string, int) {
		cmd := exec.Command(smtpdBin, args...)
		cmd.Dir = rootDir
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		return string(out), 0
	}
	// The shipped config, from a fresh checkout's point of view: `make run`
	// creates the empty password file before it starts smtpd.
	fresh := t.TempDir()
	shipped, err := os.ReadFile(filepath.Join(rootDir, "config", "smtpd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, fresh, "smtpd.toml", string(shipped))
	os.MkdirAll(filepath.Join(fresh, "var"), 0o755)
	writeFile(t, fresh, "var/passwd", "")
	check := exec.Command(smtpdBin, "check", "-config", "smtpd.toml")
	check.Dir = fresh
	if out, err := check.CombinedOutput(); err != nil || !strings.Contains(string(out), "smtpd.toml: OK") ||
		!strings.Contains(string(out), "listener submission on 127.0.0.1:2587: authfile, rcptok, maildir") {
		t.Fatalf("the shipped config fails check (%v):\n%s", err, out)
	}
	bad := writeFile(t, t.TempDir(), "bad.toml", "hostname = \"x\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nadress = \"typo\"\nplugins = [\"maildir\"]\n")
	if out, code := run("check", "-config", bad); code != 1 || !strings.Contains(out, "bad.toml:5: unknown key \"listener.adress\"") {
		t.Fatalf("check of a config with a typo (exit %d):\n%s", code, out)
	}
	unknown := writeFile(t, t.TempDir(), "unknown.toml", "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nplugins = [\"nosuchplugin\"]\n")
	if out, code := run("check", "-config", unknown); code != 1 || !strings.Contains(out, `unknown plugin "nosuchplugin"`) {
		t.Fatalf("check with an unknown plugin (exit %d):\n%s", code, out)
	}
	out, code := run("plugins")
	if code != 0 || !regexp.MustCompile(`(?m)^rcptok\s+rcpt`).MatchString(out) || !regexp.MustCompile(`(?m)^maildir\s+queue`).MatchString(out) {
		t.Fatalf("smtpd plugins (exit %d):\n%s", code, out)
	}
	if out, code := run("version"); code != 0 || !strings.HasPrefix(out, "smtpd (Sluice) ") {
		t.Fatalf("smtpd version (exit %d): %s", code, out)
	}
	_ = fmt.Sprint
}
