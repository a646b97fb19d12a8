package t_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/state/statetest"
)

// greylistConfig is an inbound chain that greylists for one second; state
// is the [state] table.
func greylistConfig(state string) string {
	return `[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["greylist", "rcptok", "maildir"]

` + state + `

[plugins.greylist]
delay = "1s"
retry_window = "1h"

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"
`
}

// greylistSend sends one message from alice to bob with swaks.
func greylistSend(t *testing.T, addr string) string {
	t.Helper()
	out, _ := swaks(t, addr, "--from", "alice@example.org", "--to", "bob@example.test",
		"--ehlo", "client.example.org", "--header", "Subject: greylist")
	return out
}

// expectGreylisted checks a transcript for the first attempt's 451 with
// the time to retry.
func expectGreylisted(t *testing.T, out string) {
	t.Helper()
	if !strings.Contains(out, "<** 451 4.7.1 Greylisted: please try again in 1 seconds") {
		t.Fatalf("the first attempt was not greylisted:\n%s", out)
	}
}

// retryUntilAccepted retries send, as a client's queue does, until the
// message is accepted: never sooner than delay after first, and within a
// deadline. Each attempt before the delay must get 451 4.7.1 again.
func retryUntilAccepted(t *testing.T, send func() string, first time.Time, delay time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := send()
		// first is before the server stored the triplet, and now after
		// it accepted the retry: the delay must fit between them.
		if strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
			if since := time.Since(first); since < delay {
				t.Fatalf("accepted %v after the first attempt, before the delay of %v:\n%s", since, delay, out)
			}
			return out
		}
		if !strings.Contains(out, "<** 451 4.7.1 Greylisted") {
			t.Fatalf("a retry got neither 451 4.7.1 nor 250:\n%s", out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still greylisted 15s after the first attempt:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond) // the client's retry interval
	}
}

// The first attempt is greylisted; smtpd restarts; the retry after the
// delay is accepted, from the state in data_dir/state.db.
func TestGreylistSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := greylistConfig("[state]\nbackend = \"bbolt\"")
	s := startSmtpdIn(t, dir, cfg)
	first := time.Now()
	expectGreylisted(t, greylistSend(t, s.Addr("mx")))
	// A reload builds new plugins while the old ones hold the file: they
	// share it (bbolt cannot open a file twice), and the new chain works.
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLog("msg=reloaded")
	out, _ := swaks(t, s.Addr("mx"), "--from", "carol@example.org", "--to", "bob@example.test", "--ehlo", "client.example.org")
	expectGreylisted(t, out)
	if strings.Contains(s.Log(), "locked by another process") {
		t.Fatalf("the reload met the file lock:\n%s", s.Log())
	}

	s.stop()
	s2 := startSmtpdIn(t, dir, cfg)
	out = retryUntilAccepted(t, func() string { return greylistSend(t, s2.Addr("mx")) }, first, time.Second)
	if files := maildirFiles(t, dir+"/var/mail"); len(files) != 1 {
		t.Fatalf("the Maildir has %d messages; want the retried one:\n%s", len(files), out)
	}
	if !strings.Contains(s2.Log(), "msg=\"message queued\"") {
		t.Fatalf("the restarted smtpd logged no delivery:\n%s", s2.Log())
	}
}

// Two smtpd processes share a Redis server: the first attempt reaches
// one, the retry the other, and is accepted.
func TestGreylistSharedByTwoSmtpdThroughRedis(t *testing.T) {
	addr := statetest.StartRedis(t)
	state := fmt.Sprintf("[state]\nbackend = \"redis\"\naddrs = [%q]", addr)
	a := startSmtpd(t, greylistConfig(state))
	b := startSmtpd(t, greylistConfig(state))
	first := time.Now()
	expectGreylisted(t, greylistSend(t, a.Addr("mx")))
	retryUntilAccepted(t, func() string { return greylistSend(t, b.Addr("mx")) }, first, time.Second)
	if files := maildirFiles(t, b.dir+"/var/mail"); len(files) != 1 {
		t.Fatalf("the second smtpd's Maildir has %d messages; want the retried one", len(files))
	}
	if files := maildirFiles(t, a.dir+"/var/mail"); len(files) != 0 {
		t.Fatalf("the first smtpd delivered %d messages; want none", len(files))
	}
}
