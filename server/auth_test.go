package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
)

// passwords is a test auth plugin: alice's password is "s3cret".
type passwords struct{}

func (passwords) Auth(_ context.Context, _ *connection.Connection, mech, user, pass string) hooks.Result {
	if user == "alice" && pass == "s3cret" {
		return hooks.Accept("")
	}
	if user == "tempfail" {
		return hooks.Defer("")
	}
	return hooks.Reject("")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// startTLS runs STARTTLS and a new EHLO; it returns the EHLO reply.
func (c *client) startTLS() string {
	c.t.Helper()
	c.expect("STARTTLS", "220 2.0.0")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	return c.expect("EHLO a.example", "250")
}

func submission(t *testing.T, limiter *server.AuthLimiter) *testServer {
	return start(t, func(l *server.ListenerConfig) {
		l.TLS = testTLSConfig(t)
		l.RequireTLS, l.RequireAuth = true, true
	}, hooks.Instance{Name: "passwords", Plugin: passwords{}})
}

func TestAuthNeedsTLSAndMailNeedsAuth(t *testing.T) {
	ts := submission(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO a.example", "250"); strings.Contains(ehlo, "AUTH") {
		t.Fatalf("AUTH offered before TLS: %q", ehlo)
	}
	c.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "538 5.7.11")
	c.expect("MAIL FROM:<alice@example.test>", "530 5.7.0 Must issue a STARTTLS command first")
	if ehlo := c.startTLS(); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not offered after TLS: %q", ehlo)
	}
	c.expect("MAIL FROM:<alice@example.test>", "530 5.7.0 Authentication required")
	c.expect("AUTH PLAIN "+b64("\x00alice\x00wrong"), "535 5.7.8")
	c.expect("AUTH PLAIN "+b64("\x00tempfail\x00x"), "454 4.7.0")
	c.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "235 2.7.0")
	c.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "503")
	c.expect("MAIL FROM:<alice@example.test>", "250")
	c.expect("RCPT TO:<bob@elsewhere.test>", "250")
	c.expect("DATA", "354")
	c.send("Subject: submitted\r\n\r\nhi\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued")
	data := string(ts.queue.Messages()[0].Data)
	for _, want := range []string{"(using TLSv1.3 with cipher ", "(authenticated)", "with ESMTPSA id"} {
		if !strings.Contains(data, want) {
			t.Errorf("Received header lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(data, "alice") && strings.Contains(data, "authenticated as") {
		t.Errorf("Received names the user though ReceivedAuthUser is off:\n%s", data)
	}
}

func TestAuthLoginExchange(t *testing.T) {
	ts := submission(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.startTLS()
	c.expect("AUTH LOGIN", "334 "+b64("Username:"))
	c.expect(b64("alice"), "334 "+b64("Password:"))
	c.expect(b64("s3cret"), "235 2.7.0")
}

func TestAuthBruteForceIsLockedOut(t *testing.T) {
	ts := start(t, func(l *server.ListenerConfig) {
		l.TLS = testTLSConfig(t)
	}, hooks.Instance{Name: "passwords", Plugin: passwords{}})
	_ = ts
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.startTLS()
	for i := 0; i < 4; i++ {
		c.expect("AUTH PLAIN "+b64("\x00alice\x00guess"), "535 5.7.8 Authentication credentials invalid")
	}
	start := time.Now()
	c.expect("AUTH PLAIN "+b64("\x00alice\x00guess5"), "535 5.7.8 Too many failed authentication attempts")
	if time.Since(start) < time.Second {
		t.Errorf("the lockout answered without a delay")
	}
	c.closed()
	// A new connection from the same IP is refused even with the right password.
	c2 := dial(t, ts.addr)
	c2.expect("", "220 ")
	c2.expect("EHLO a.example", "250")
	c2.startTLS()
	c2.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "535 5.7.8 Too many failed")
}
