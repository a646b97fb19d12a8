// Package connection holds what Sluice knows about one client connection:
// addresses, HELO, TLS, the authenticated user, the relay flag and the
// connection's notes. Every hook that runs for the connection sees the same
// *Connection.
package connection

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"net/netip"
	"time"

	"github.com/sluice-mta/sluice/hooks/notes"
)

// Connection is one client connection. The server owns it; plugins read it
// and may set Relay and Notes. Fields are only written from the
// connection's own goroutine, so plugins need no locking.
type Connection struct {
	// ID names the connection in logs and in the Received header.
	ID string
	// Listener is the name of the [[listener]] that accepted the connection.
	Listener string
	// Hostname is the name this server announces on that listener.
	Hostname string
	// Local and Remote are the two ends of the TCP connection.
	Local, Remote netip.AddrPort
	// RemoteHost is the client's reverse DNS name when a plugin looked it up.
	RemoteHost string
	// RemoteInfo is what the client's ident server (RFC 1413) said, when
	// the program that started smtpd asked (tcpserver's TCPREMOTEINFO).
	RemoteInfo string
	// Helo is the argument of the latest HELO or EHLO; ESMTP is true after EHLO.
	Helo  string
	ESMTP bool
	// TLS is the TLS state once STARTTLS or implicit TLS completed; nil before.
	TLS *tls.ConnectionState
	// AuthUser is the authenticated identity after a successful AUTH.
	AuthUser string
	// Relay marks a client allowed to send to any domain (qpsmtpd's
	// relay_client). The relay plugin and AUTH set it.
	Relay bool
	// EarlyTalker is set when the client sent something before the
	// greeting, while the listener's greeting_delay held it back
	// (qpsmtpd's check_earlytalker). Plugins decide what it means.
	EarlyTalker bool
	// Started is when the connection was accepted.
	Started time.Time
	// Messages counts the messages accepted on this connection.
	Messages int
	// Notes is shared by every plugin of the chain for this connection.
	Notes notes.Notes
}

// The connection notes a successful AUTH sets, beside AuthUser. They are
// here, not in the server, so that plugins read them without importing the
// server.
var (
	// NoteAuthUser is the authenticated identity, as AuthUser.
	NoteAuthUser = notes.NewKey[string]("auth.user")
	// NoteAuthMech is the SASL mechanism the client authenticated with
	// ("PLAIN", "LOGIN").
	NoteAuthMech = notes.NewKey[string]("auth.mech")
)

// NoteWhitelisted is the connection note a black/white list plugin (bwl)
// sets when the client is whitelisted; its value names the rule that
// matched ("client 192.0.2.0/24"). Plugins that judge a client's
// reputation (dnsbl, rhsbl, greylist, karma) skip a whitelisted client. A
// whitelist never makes a client a relay: that is Relay's job.
var NoteWhitelisted = notes.NewKey[string]("bwl.whitelisted")

// Exempt reports whether the client is spared the checks of its
// reputation (dnsbl, rhsbl, helo): a relay client, an authenticated user,
// or a client with NoteWhitelisted.
func (c *Connection) Exempt() bool {
	if c.Relay || c.AuthUser != "" {
		return true
	}
	_, white := NoteWhitelisted.Lookup(&c.Notes)
	return white
}

// New returns a Connection with a fresh ID.
func New(listener, hostname string, local, remote netip.AddrPort) *Connection {
	return &Connection{
		ID:       NewID(),
		Listener: listener,
		Hostname: hostname,
		Local:    local,
		Remote:   remote,
		Started:  time.Now(),
	}
}

// RemoteIP is the client's IP address, unmapped (an IPv4 client on a dual
// stack socket shows as 192.0.2.1, not ::ffff:192.0.2.1).
func (c *Connection) RemoteIP() netip.Addr { return c.Remote.Addr().Unmap() }

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// NewID returns a random 16-character identifier, safe in file names and
// headers. Connection and transaction ids and queue ids use it.
func NewID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}
