package transaction

import (
	"crypto/tls"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
)

// Received returns the value of the Received field the server adds to the
// message (RFC 5321 4.4) that t is receiving on c: the client's HELO name
// and address, the TLS version and cipher, whether the client
// authenticated (and as whom when showAuthUser), this server's name, the
// protocol (RFC 3848), the transaction id, the recipient when there is
// only one, and the date now.
func (t *Transaction) Received(c *connection.Connection, showAuthUser bool, now time.Time) string {
	b := make([]byte, 0, 256) // built with appends, not fmt: it is made for every message
	b = append(b, "from "...)
	b = append(b, orUnknown(c.Helo)...)
	b = append(b, " ("...)
	if c.RemoteHost != "" { // a name the launcher, a plugin or XCLIENT gave
		b = append(b, c.RemoteHost...)
		b = append(b, ' ')
	}
	b = append(b, '[')
	b = c.RemoteIP().AppendTo(b)
	b = append(b, "])"...)
	if c.TLS != nil {
		b = append(b, "\r\n\t(using "...)
		version := tls.VersionName(c.TLS.Version) // "TLS 1.3": written "TLSv1.3", as Postfix does
		if v, ok := strings.CutPrefix(version, "TLS "); ok {
			b = append(b, "TLSv"...)
			version = v
		}
		b = append(b, version...)
		b = append(b, " with cipher "...)
		b = append(b, tls.CipherSuiteName(c.TLS.CipherSuite)...)
		b = append(b, ')')
	}
	if c.AuthUser != "" {
		if showAuthUser {
			b = append(b, "\r\n\t(authenticated as "...)
			b = append(b, c.AuthUser...)
			b = append(b, ')')
		} else {
			b = append(b, "\r\n\t(authenticated)"...)
		}
	}
	b = append(b, "\r\n\tby "...)
	b = append(b, c.Hostname...)
	b = append(b, " (Sluice) with "...)
	b = append(b, withProtocol(c)...)
	b = append(b, " id "...)
	b = append(b, t.ID...)
	if len(t.Recipients) == 1 {
		b = append(b, "\r\n\tfor <"...)
		b = append(b, t.Recipients[0]...)
		b = append(b, '>')
	}
	b = append(b, "; "...)
	b = now.AppendFormat(b, time.RFC1123Z)
	return string(b)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// withProtocol names the protocol as RFC 3848 registers it.
func withProtocol(c *connection.Connection) string {
	p := "SMTP"
	if c.ESMTP {
		p = "ESMTP"
		if c.TLS != nil {
			p += "S"
		}
		if c.AuthUser != "" {
			p += "A"
		}
	}
	return p
}
