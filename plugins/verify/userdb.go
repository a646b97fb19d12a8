package verify

import (
	"bufio"
	"context"
	"fmt"
	"github.com/sluice-mta/sluice/internal/dovecotwire"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// userdb looks recipients up in Dovecot's userdb over its auth-userdb
// socket, with the auth master protocol that doveadm user and Dovecot's
// own LDA speak:
//
//	C: VERSION	1	0
//	C: USER	1	alice@example.test	service=smtp
//	S: VERSION	1	2
//	S: SPID	1234
//	S: USER	1	alice@example.test	home=...     (the user exists)
//	S: NOTFOUND	1                               (no such user)
//	S: FAIL	1	reason=...                      (the lookup failed)
//
// Each lookup opens its own connection (local and cheap), so a Dovecot
// restart needs no reconnection logic; the socket is usually
// /run/dovecot/auth-userdb, and its mode must let smtpd's user connect.
type userdb struct {
	network, addr string
	service       string
	delimiter     string
	// lookups counts the USER requests sent, for tests.
	lookups atomic.Int64
}

func (u *userdb) close() {}

func (u *userdb) check(ctx context.Context, rcpt string) answer {
	user := u.user(rcpt)
	found, err := u.lookup(ctx, user)
	switch {
	case err != nil:
		return answer{verdict: unreachable, err: fmt.Errorf("dovecot userdb %s: %w", u.addr, err)}
	case !found:
		return answer{verdict: unknown, code: 550, enhanced: [3]int{5, 1, 1},
			text: "<" + rcpt + ">: Recipient address rejected: User unknown"}
	}
	return answer{verdict: exists}
}

// user is the name Dovecot is asked about: the address, with the
// extension cut off its local part (alice+news@example.test is
// alice@example.test with recipient_delimiter = "+"). Dovecot's
// auth_username_format then decides its form (lowercased by default).
func (u *userdb) user(rcpt string) string {
	if u.delimiter == "" {
		return rcpt
	}
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 {
		return rcpt
	}
	if i := strings.IndexAny(rcpt[:at], u.delimiter); i > 0 {
		return rcpt[:i] + rcpt[at:]
	}
	return rcpt
}

// lookup asks Dovecot whether user exists.
func (u *userdb) lookup(ctx context.Context, user string) (bool, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, u.network, u.addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	const id = "1"
	u.lookups.Add(1)
	if _, err := fmt.Fprintf(c, "VERSION\t1\t0\nUSER\t%s\t%s\tservice=%s\n", id, dovecotwire.Escape(user), u.service); err != nil {
		return false, err
	}
	r := bufio.NewReaderSize(c, 4096)
	for {
		line, err := dovecotwire.ReadLine(r)
		if err != nil {
			return false, fmt.Errorf("waiting for the answer: %w", err)
		}
		f := strings.Split(line, "\t")
		switch f[0] {
		case "VERSION":
			if len(f) < 2 || f[1] != "1" {
				return false, fmt.Errorf("handshake: Dovecot speaks auth master protocol version %q; want 1: is this the auth-userdb socket?", strings.Join(f[1:], "."))
			}
			continue
		case "SPID":
			continue
		}
		if len(f) < 2 || f[1] != id {
			return false, fmt.Errorf("unexpected answer %q: is this Dovecot's auth-userdb socket?", dovecotwire.Clip(line))
		}
		switch f[0] {
		case "USER":
			return true, nil
		case "NOTFOUND":
			return false, nil
		case "FAIL":
			reason := "no reason given"
			for _, a := range f[2:] {
				if v, ok := strings.CutPrefix(a, "reason="); ok {
					reason = dovecotwire.Clip(v)
				}
			}
			return false, fmt.Errorf("the lookup of %q failed: %s", user, reason)
		}
		return false, fmt.Errorf("unexpected answer %q", dovecotwire.Clip(line))
	}
}
