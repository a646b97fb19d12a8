package t_test

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestMegabyteHeaderOfTinyFields: 20 clients each send a message whose
// header is 1 MiB of "a:" fields (under max_header_size, so accepted),
// then stay connected. Each gets 250 and its message lands in the Maildir
// byte for byte behind the Received field, though Sluice parsed only the
// first 1000 fields; the server's RSS grows by far less than a header per
// connection (it grew by 29 MB per connection when every field was parsed
// into a string and a struct).
func TestMegabyteHeaderOfTinyFields(t *testing.T) {
	t.Parallel()
	const clients = 20
	s := startSmtpd(t, listenerConfig(`"loop", "rcptok", "maildir"`, "max_connections_per_ip = 50", ""))
	pid := s.cmd.Process.Pid
	header := strings.Repeat("a:\r\n", (1<<20-64)/4)
	msg := header + "\r\nbody\r\n"
	var sessions []*rawSession
	for range clients {
		c := rawDial(t, s.Addr("mx"))
		c.greet("bob@example.test")
		c.expect("DATA", "354")
		sessions = append(sessions, c)
	}
	before := vmRSS(t, pid)
	replies := make(chan string, clients)
	for _, c := range sessions {
		go func() {
			// The dot-stuffed message: no line starts with a dot.
			if _, err := c.c.Write([]byte(msg + ".\r\n")); err != nil {
				replies <- err.Error()
				return
			}
			line, err := c.r.ReadString('\n')
			if err != nil {
				line = err.Error()
			}
			replies <- line
		}()
	}
	for range clients {
		if r := <-replies; !strings.HasPrefix(r, "250 2.0.0 Ok: queued") {
			t.Fatalf("reply to a 1 MiB header of tiny fields: %q", r)
		}
	}
	after := vmRSS(t, pid)
	// The race detector's shadow memory makes RSS no measure of the
	// server's own buffers: the plain run checks the bound.
	if growth := after - before; growth > clients<<20 && !raceBuild {
		t.Errorf("smtpd RSS grew by %d KiB per connection for a 1 MiB header (%d -> %d)", growth/clients>>10, before, after)
	}
	t.Logf("RSS %d -> %d KiB: %+d KiB per connection", before>>10, after>>10, (after-before)/clients>>10)
	files := maildirFiles(t, s.dir+"/var/mail")
	if len(files) != clients {
		t.Fatalf("%d messages in the Maildir, want %d", len(files), clients)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, []byte("\r\na:\r\n"))
		if !bytes.HasPrefix(b, []byte("Received: from client.example ")) || i < 0 || string(b[i+2:]) != msg {
			t.Fatalf("%s is not the Received field and the message byte for byte (%d bytes, want %d after the Received field)", f, len(b), len(msg))
		}
	}
	// The sessions go on.
	for _, c := range sessions {
		c.expect("QUIT", "221")
	}
}
