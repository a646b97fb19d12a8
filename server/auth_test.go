package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/transaction"
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

// noteRecorder keeps the auth notes it sees at MAIL.
type noteRecorder struct{ seen chan string }

func (n noteRecorder) Mail(_ context.Context, c *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	n.seen <- notes.Get[string](&c.Notes, server.NoteAuthUser) + " " + notes.Get[string](&c.Notes, server.NoteAuthMech) + " " + c.AuthUser
	return hooks.Result{}
}

func TestPlaintextAuthOnlyWhereAllowedAndIdentityInLaterHooks(t *testing.T) {
	rec := noteRecorder{seen: make(chan string, 1)}
	ts := start(t, func(l *server.ListenerConfig) { l.AuthPlaintextLoopback = true },
		hooks.Instance{Name: "passwords", Plugin: passwords{}}, hooks.Instance{Name: "rec", Plugin: rec})
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO a.example", "250"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("auth_plaintext_loopback: AUTH not offered to a loopback client: %q", ehlo)
	}
	c.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "235")
	c.expect("MAIL FROM:<alice@example.test>", "250")
	if got := <-rec.seen; got != "alice PLAIN alice" {
		t.Fatalf("mail hook saw %q, want the auth notes and AuthUser", got)
	}
}

func TestCertificatesBySNIAndReload(t *testing.T) {
	dir := t.TempDir()
	writePair := func(name, host string) server.CertPair {
		cert, key := selfSignedPEM(t, host)
		p := server.CertPair{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key")}
		os.WriteFile(p.Cert, cert, 0o600)
		os.WriteFile(p.Key, key, 0o600)
		return p
	}
	a, b := writePair("a", "mx.a.example"), writePair("b", "mx.b.example")
	certs, err := server.LoadCertificates([]server.CertPair{a, b})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := certs.TLSConfig("1.2")
	if err != nil {
		t.Fatal(err)
	}
	served := func(sni string) string {
		t.Helper()
		cs, ss := net.Pipe()
		defer cs.Close()
		go tls.Server(ss, cfg).Handshake()
		tc := tls.Client(cs, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		return tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served("mx.b.example"); got != "mx.b.example" {
		t.Fatalf("SNI mx.b.example got %s", got)
	}
	if got := served("other.example"); got != "mx.a.example" {
		t.Fatalf("unknown SNI got %s, want the first pair", got)
	}
	writePair("a", "renewed.a.example")
	if err := certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served("other.example"); got != "renewed.a.example" {
		t.Fatalf("after reload got %s", got)
	}
	os.WriteFile(a.Cert, []byte("garbage"), 0o600)
	if err := certs.Reload(); err == nil {
		t.Fatal("a broken certificate file reloaded without error")
	}
	if got := served("other.example"); got != "renewed.a.example" {
		t.Fatalf("a failed reload replaced the certificate: %s", got)
	}
}
