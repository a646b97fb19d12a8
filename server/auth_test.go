package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/authlimit"
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
	c.handshakeTLS()
	return c.expect("EHLO a.example", "250")
}

// handshakeTLS runs STARTTLS and the handshake, and goes on over TLS.
func (c *client) handshakeTLS() {
	c.t.Helper()
	c.expect("STARTTLS", "220 2.0.0")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

func submission(t *testing.T, limiter *authlimit.Limiter) *testServer {
	ts, _ := authServer(t, limiter, func(l *server.ListenerConfig) {
		l.TLS = testTLSConfig(t)
		l.RequireTLS, l.RequireAuth = true, true
	})
	return ts
}

// authServer is start with the passwords plugin, the given limiter (nil:
// the default one) and a log the test can read.
func authServer(t *testing.T, limiter *authlimit.Limiter, mutate func(*server.ListenerConfig)) (*testServer, *hookstest.LogBuffer) {
	t.Helper()
	logs := &hookstest.LogBuffer{}
	return startServer(t, hooks.Options{Logger: logs.Logger()}, limiter, mutate, hooks.Instance{Name: "passwords", Plugin: passwords{}}), logs
}

// dialFrom is dial from another loopback address, a second client IP.
func dialFrom(t *testing.T, local, addr string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

// tlsSession dials from local, reads the greeting, and runs EHLO,
// STARTTLS and EHLO again: ready for AUTH.
func tlsSession(t *testing.T, local, addr string) *client {
	t.Helper()
	c := dialFrom(t, local, addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.startTLS()
	return c
}

// timed runs c.expect and returns how long the reply took.
func timed(c *client, cmd, want string) time.Duration {
	c.t.Helper()
	start := time.Now()
	c.expect(cmd, want)
	return time.Since(start)
}

const (
	invalid = "535 5.7.8 Authentication credentials invalid"
	lockout = "535 5.7.8 Too many failed authentication attempts; closing connection"
)

// plain is an AUTH PLAIN command with an initial response.
func plain(authzid, user, pass string) string {
	return "AUTH PLAIN " + b64(authzid+"\x00"+user+"\x00"+pass)
}

// checkLog fails unless the log matches every pattern and holds none of
// the secrets.
func checkLog(t *testing.T, logs *hookstest.LogBuffer, patterns []string, secrets ...string) {
	t.Helper()
	log := logs.String()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(log) {
			t.Errorf("the log has no line matching %s:\n%s", p, log)
		}
	}
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("the log holds the password %q:\n%s", s, log)
		}
	}
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

// TestAuthBruteForceIsLockedOut: the fifth failure from one IP waits the
// delay, gets the lockout 535 and is disconnected; after it that IP is
// refused unchecked, even with the right password, for any user.
func TestAuthBruteForceIsLockedOut(t *testing.T) {
	const delay = 150 * time.Millisecond
	ts, logs := authServer(t, &authlimit.Limiter{Delay: delay}, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	c := tlsSession(t, "127.0.0.1", ts.addr)
	var guesses []string
	for i := 1; i <= 4; i++ {
		guesses = append(guesses, fmt.Sprintf("Guess-%d-pw", i))
		c.expect(plain("", "alice", guesses[i-1]), invalid)
	}
	guesses = append(guesses, "Guess-5-pw")
	if d := timed(c, plain("", "alice", "Guess-5-pw"), lockout); d < delay {
		t.Errorf("the lockout answered after %v, before the %v delay", d, delay)
	}
	c.closed()

	// The same IP, the right password: refused unchecked, after the delay.
	c2 := tlsSession(t, "127.0.0.1", ts.addr)
	if d := timed(c2, plain("", "alice", "s3cret"), lockout); d < delay {
		t.Errorf("the refusal answered after %v, before the %v delay", d, delay)
	}
	c2.closed()
	// Another user from that IP too: the count is the IP's.
	c3 := tlsSession(t, "127.0.0.1", ts.addr)
	c3.expect("AUTH LOGIN", "334 ")
	c3.expect(b64("bob"), "334 ")
	c3.expect(b64("bobs-pw"), lockout)
	c3.closed()

	checkLog(t, logs, []string{
		`level=WARN msg="AUTH failed" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice reply="535 5\.7\.8 Authentication credentials invalid"`,
		`level=WARN msg="AUTH refused: too many failures" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice limit=reached`,
		`level=WARN msg="AUTH refused: too many failures" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice limit=ip`,
		`level=WARN msg="AUTH refused: too many failures" listener=mx conn=\S+ mech=LOGIN ip=127\.0\.0\.1 user=bob limit=ip`,
	}, append(guesses, "s3cret", "bobs-pw")...)
	if n := strings.Count(logs.String(), `msg="AUTH failed"`); n != 5 {
		t.Errorf("logged %d AUTH failed lines, want one per checked password (5)", n)
	}
}

// TestAuthUserLockoutSlowsButNeverLocksOutTheOwner: five failures for
// alice (from 127.0.0.1, in any letter case) slow down every AUTH for alice
// from everywhere: from 127.0.0.2 a wrong password waits the delay and is
// disconnected, the right one waits the delay and succeeds.
func TestAuthUserLockoutSlowsButNeverLocksOutTheOwner(t *testing.T) {
	const delay = 150 * time.Millisecond
	ts, logs := authServer(t, &authlimit.Limiter{Delay: delay}, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	attacker := tlsSession(t, "127.0.0.1", ts.addr)
	for _, u := range []string{"alice", "Alice", "ALICE", "alice"} {
		attacker.expect(plain("", u, "Guess-pw"), invalid)
	}
	attacker.expect(plain("", "aLiCe", "Guess-pw"), lockout)
	attacker.closed()

	// From another IP: a wrong password gets one try, after the delay.
	c := tlsSession(t, "127.0.0.2", ts.addr)
	if d := timed(c, plain("", "alice", "Other-pw"), lockout); d < delay {
		t.Errorf("a guess for a locked user answered after %v, before the %v delay", d, delay)
	}
	c.closed()
	c = tlsSession(t, "127.0.0.2", ts.addr)
	c.expect("AUTH LOGIN", "334 ")
	c.expect(b64("alice"), "334 ")
	c.expect(b64("Other-pw-2"), lockout)
	c.closed()

	// The owner, from another IP, with the right password: slowed, not
	// locked out.
	owner := tlsSession(t, "127.0.0.2", ts.addr)
	if d := timed(owner, plain("", "alice", "s3cret"), "235 2.7.0"); d < delay {
		t.Errorf("AUTH for a user past the limit answered after %v, before the %v delay", d, delay)
	}
	owner.expect("MAIL FROM:<alice@example.test>", "250")

	checkLog(t, logs, []string{
		`level=WARN msg="AUTH failed" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=ALICE `,
		`level=INFO msg="AUTH delayed: too many failures for the user" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.2 user=alice delay=150ms`,
		`level=WARN msg="AUTH failed" listener=mx conn=\S+ mech=LOGIN ip=127\.0\.0\.2 user=alice `,
		`level=WARN msg="AUTH refused: too many failures" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.2 user=alice limit=user`,
		`level=INFO msg="AUTH succeeded" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.2 user=alice`,
	}, "Guess-pw", "Other-pw", "s3cret")
}

// TestAuthSuccessClearsTheUsersCountNotTheIPs: after alice logs in, her
// earlier failures are forgotten; the failures of the IP she logged in
// from are not.
func TestAuthSuccessClearsTheUsersCountNotTheIPs(t *testing.T) {
	ts, _ := authServer(t, &authlimit.Limiter{Delay: 50 * time.Millisecond}, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	// Four failures for alice from 127.0.0.2, one short of the limit.
	c := tlsSession(t, "127.0.0.2", ts.addr)
	for i := 0; i < 4; i++ {
		c.expect(plain("", "alice", "Guess-pw"), invalid)
	}
	// alice logs in from 127.0.0.3: her count starts again.
	ok := tlsSession(t, "127.0.0.3", ts.addr)
	ok.expect(plain("", "alice", "s3cret"), "235 2.7.0")
	for i := 0; i < 4; i++ {
		ok2 := tlsSession(t, "127.0.0.4", ts.addr)
		ok2.expect(plain("", "alice", "Guess-pw"), invalid)
	}
	// Without the reset the fourth would have been her ninth failure. And
	// the success did not clear 127.0.0.2's four: its fifth is locked out.
	c.expect(plain("", "bob", "Guess-pw"), lockout)
	c.closed()
}

// TestAuthIdentityMismatchAndMalformedAreLogged: a PLAIN authorization
// identity other than the user is a logged, counted failure; a PLAIN
// message that does not decode is answered 501 and logged at INFO.
func TestAuthIdentityMismatchAndMalformedAreLogged(t *testing.T) {
	ts, logs := authServer(t, &authlimit.Limiter{Delay: 50 * time.Millisecond}, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	c := tlsSession(t, "127.0.0.1", ts.addr)
	c.expect("AUTH PLAIN "+b64("alice\x00s3cret"), "501 5.5.2 Malformed PLAIN response")
	c.expect("AUTH PLAIN", "334 ")
	c.expect(b64("no-nul-at-all"), "501 5.5.2 Malformed PLAIN response")
	for i := 0; i < 4; i++ {
		c.expect(plain("bob", "alice", "s3cret"), "535 5.7.8 Authorization identity must be empty or the user name")
	}
	c.expect(plain("alice", "alice", "wrong-pw"), lockout)
	c.closed()
	checkLog(t, logs, []string{
		`level=INFO msg="AUTH: malformed SASL response" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1`,
		`level=WARN msg="AUTH failed" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice authzid=bob reply="535 5\.7\.8 Authorization identity must be empty or the user name"`,
		`level=WARN msg="AUTH failed" listener=mx conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice reply=`,
	}, "s3cret", "wrong-pw", "no-nul")
}

// TestStartTLSAfterPlaintextAuthIsRefused: go-smtp cannot forget an AUTH
// as RFC 3207 4.2 would have it, so STARTTLS after one is refused.
func TestStartTLSAfterPlaintextAuthIsRefused(t *testing.T) {
	ts, _ := authServer(t, nil, func(l *server.ListenerConfig) {
		l.TLS = testTLSConfig(t)
		l.AuthPlaintextLoopback = true
	})
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.expect(plain("", "alice", "s3cret"), "235 2.7.0")
	c.expect("STARTTLS", "503 5.5.1 STARTTLS is not allowed after AUTH")
	c.expect("MAIL FROM:<alice@example.test>", "250")
}

// TestAuthRightAfterStartTLSNeedsEHLO: STARTTLS forgets the EHLO (RFC 3207
// 4.2), so AUTH before a new one is refused.
func TestAuthRightAfterStartTLSNeedsEHLO(t *testing.T) {
	ts, _ := authServer(t, nil, func(l *server.ListenerConfig) { l.TLS = testTLSConfig(t) })
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.handshakeTLS()
	c.expect(plain("", "alice", "s3cret"), "503 5.5.1 Send EHLO first")
	c.expect("EHLO a.example", "250")
	c.expect(plain("", "alice", "s3cret"), "235 2.7.0")
}

// noteRecorder keeps the auth notes it sees at MAIL.
type noteRecorder struct{ seen chan string }

func (n noteRecorder) Mail(_ context.Context, c *connection.Connection, _ *transaction.Transaction, _ string) hooks.Result {
	n.seen <- connection.NoteAuthUser.Get(&c.Notes) + " " + connection.NoteAuthMech.Get(&c.Notes) + " " + c.AuthUser
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

// TestAuthUndecodableResponseIs501: a SASL response that is not base64,
// as the initial response or as an answer to a 334, gets 501 (RFC 4954
// section 4), not go-smtp's 454.
func TestAuthUndecodableResponseIs501(t *testing.T) {
	ts := submission(t, nil)
	c := dial(t, ts.addr)
	c.expect("", "220 ")
	c.expect("EHLO a.example", "250")
	c.startTLS()
	c.expect("AUTH PLAIN !!!not-base64", "501 5.5.2 Invalid base64 data")
	c.expect("AUTH LOGIN", "334 ")
	c.expect("%%%", "501 5.5.2 Invalid base64 data")
	c.expect("AUTH PLAIN "+b64("\x00alice\x00s3cret"), "235 2.7.0")
}
