package policy_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks/hookstest"
)

// postgreyPath is where Debian's postgrey package installs the server.
const postgreyPath = "/usr/sbin/postgrey"

// startPostgrey runs a real postgrey on a loopback port with a private
// database and empty whitelists, greylisting for delay seconds, and
// returns its address once it answers. It is stopped when the test ends.
func startPostgrey(t *testing.T, delay int) string {
	t.Helper()
	if _, err := os.Stat(postgreyPath); err != nil {
		t.Fatalf("postgrey is not installed: run `make deps` (Debian package postgrey): %v", err)
	}
	dir := t.TempDir()
	for _, f := range []string{"whitelist_clients", "whitelist_recipients"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A free port: postgrey takes the port number, not a listener.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// postgrey drops privileges to the user and group it is given:
	// ours, so that it can write its database in our directory.
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(postgreyPath,
		"--inet="+addr,
		"--dbdir="+dir,
		fmt.Sprintf("--delay=%d", delay),
		"--max-age=1",
		"--retry-window=1",
		"--auto-whitelist-clients=0",
		"--whitelist-clients="+filepath.Join(dir, "whitelist_clients"),
		"--whitelist-recipients="+filepath.Join(dir, "whitelist_recipients"),
		"--hostname=greylist.example.test",
		"--user="+u.Username, "--group="+g.Name,
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start postgrey: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("postgrey's output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			t.Fatalf("postgrey exited at start:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgrey does not listen on %s after 20s:\n%s", addr, out.String())
		}
	}
}

// A real postgrey greylists the first attempt of a (client, sender,
// recipient) triplet, refuses retries that come too early, and accepts
// the one after its delay, with its X-Greylist header prepended.
func TestPostgrey(t *testing.T) {
	const delay = 2
	addr := startPostgrey(t, delay)
	h, _ := chain(t, fmt.Sprintf("address = %q", addr))
	const greylisted = "450 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.test.html"

	first := time.Now()
	s := h.Connect("192.0.2.1")
	hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), greylisted)
	// Another triplet is greylisted on its own.
	hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"carol@example.test"}, msg), greylisted)

	// Retry, as a client's queue would, until accepted or past a deadline.
	deadline := first.Add(delay*time.Second + 20*time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	attempts := 0
	for {
		attempts++
		rep := s.Send("alice@example.org", []string{"bob@example.test"}, msg)
		if rep.Code == 250 {
			// postgrey counts whole seconds: the wait may be a fraction
			// of a second shorter than its delay, never a whole one.
			if waited := time.Since(first); waited < (delay-1)*time.Second || attempts == 1 {
				t.Fatalf("accepted after %v, at attempt %d; postgrey's delay is %ds", waited, attempts, delay)
			}
			break
		}
		hookstest.ExpectReply(t, rep, greylisted)
		if time.Now().After(deadline) {
			t.Fatalf("still greylisted after %d attempts over %v", attempts, time.Since(first))
		}
		<-tick.C
	}
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages; want 1", len(q))
	}
	data := string(q[0].Data)
	if !strings.HasPrefix(data, "X-Greylist: delayed ") || !strings.Contains(data, " seconds by postgrey-") ||
		!strings.Contains(data, " at greylist.example.test; ") {
		t.Errorf("the message lacks postgrey's X-Greylist header on top:\n%.300s", data)
	}
	if i, j := strings.Index(data, "X-Greylist:"), strings.Index(data, "Received:"); j < i {
		t.Errorf("X-Greylist comes after Received:\n%.300s", data)
	}
}
