// Package dovecotauth checks AUTH credentials against Dovecot's auth
// service, over the auth client protocol (version 1.2) that Postfix's
// Dovecot SASL and maddy use: Sluice hands Dovecot the user and password
// with the PLAIN mechanism and Dovecot answers OK or FAIL. Any passdb
// Dovecot has (passwd-file, SQL, LDAP, PAM) then serves SMTP AUTH too.
//
// Each AUTH opens one connection to the socket, does the handshake, sends
// one AUTH request and closes: no connection is kept between AUTHs, so a
// Dovecot restart needs no reconnection logic, at the price of one
// handshake per AUTH (local and cheap).
package dovecotauth

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/internal/dovecotwire"
)

func init() { hooks.Register("dovecotauth", New) }

// Settings are the keys of a [plugins.dovecotauth] table.
type Settings struct {
	// Socket is Dovecot's auth client listener: a unix socket path
	// ("/var/run/dovecot/auth-client", anything with a '/') or a TCP
	// "host:port". Required. It need not exist when the plugin is built.
	Socket string `toml:"socket"`
	// Service is the service name Dovecot sees (%s in its configuration,
	// PAM's service). Default "smtp".
	Service string `toml:"service"`
	// Timeout bounds one AUTH: connecting, the handshake and the answer.
	// Default "10s".
	Timeout config.Duration `toml:"timeout"`
}

// DefaultTimeout is the timeout setting's default.
const DefaultTimeout = 10 * time.Second

// Plugin is a dovecotauth instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	network, address string
	service          string
	timeout          time.Duration
}

var _ hooks.Auth = (*Plugin)(nil)

// New builds a dovecotauth instance from its settings. It does not connect:
// Dovecot may start after Sluice.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Service: "smtp", Timeout: config.Duration{Duration: DefaultTimeout}}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{service: s.Service, timeout: s.Timeout.Duration}
	switch {
	case s.Socket == "":
		return nil, errors.New(`socket: required: Dovecot's auth client socket, like "/var/run/dovecot/auth-client" or "127.0.0.1:12345"`)
	case strings.Contains(s.Socket, "/"):
		p.network, p.address = "unix", s.Socket
	default:
		host, port, err := net.SplitHostPort(s.Socket)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf(`socket: %q: want a unix socket path (with a '/') or a TCP host:port`, s.Socket)
		}
		p.network, p.address = "tcp", s.Socket
	}
	if s.Service == "" || strings.ContainsFunc(s.Service, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("service: %q: want a name like \"smtp\", without white space", s.Service)
	}
	if s.Timeout.Duration <= 0 {
		return nil, fmt.Errorf("timeout: %v: want a positive duration like \"10s\"", s.Timeout.Duration)
	}
	return p, nil
}

// errTemp marks a FAIL that Dovecot flagged temporary.
var errTemp = errors.New("dovecot: temporary failure")

// Auth asks Dovecot whether user's password is right.
func (p *Plugin) Auth(ctx context.Context, c *connection.Connection, _, user, password string) hooks.Result {
	// PLAIN separates the fields with NUL: a NUL inside one would change
	// whose password is checked.
	if user == "" || strings.ContainsRune(user, 0) || strings.ContainsRune(password, 0) {
		return hooks.Result{Code: hooks.Deny}
	}
	ok, err := p.auth(ctx, c, user, password)
	switch {
	case errors.Is(err, errTemp):
		return hooks.Fail(err)
	case err != nil:
		return hooks.Fail(fmt.Errorf("dovecotauth: %s %s: %w", p.network, p.address, err))
	case ok:
		return hooks.Accept("")
	default:
		return hooks.Result{Code: hooks.Deny}
	}
}

// auth runs one exchange: connect, handshake, AUTH, answer.
func (p *Plugin) auth(ctx context.Context, c *connection.Connection, user, password string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, p.network, p.address)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A canceled hook (client gone, shutdown) ends the exchange at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := fmt.Fprintf(conn, "VERSION\t1\t2\nCPID\t%d\n", os.Getpid()); err != nil {
		return false, err
	}
	r := bufio.NewReaderSize(conn, 4096)
	if err := handshake(r); err != nil {
		return false, err
	}
	const id = "1"
	if _, err := conn.Write([]byte(request(id, p.service, c, user, password))); err != nil {
		return false, err
	}
	line, err := dovecotwire.ReadLine(r)
	if err != nil {
		return false, fmt.Errorf("waiting for the answer: %w", err)
	}
	f := strings.Split(line, "\t")
	if len(f) < 2 || f[1] != id {
		return false, fmt.Errorf("unexpected answer %q", dovecotwire.Clip(f[0]))
	}
	switch f[0] {
	case "OK":
		return true, nil
	case "FAIL":
		for _, arg := range f[2:] {
			if arg == "temp" || arg == "code=temp_fail" {
				reason := "no reason given"
				for _, a := range f[2:] {
					if r, ok := strings.CutPrefix(a, "reason="); ok {
						reason = strconv.Quote(dovecotwire.Clip(r))
					}
				}
				return false, fmt.Errorf("%w (%s)", errTemp, reason)
			}
		}
		return false, nil
	case "CONT":
		return false, errors.New("dovecot asked for more data after a complete PLAIN response")
	}
	return false, fmt.Errorf("unexpected answer %q", dovecotwire.Clip(f[0]))
}

// handshake reads the server's handshake up to DONE and checks it offers
// version 1 and PLAIN.
func handshake(r *bufio.Reader) error {
	var version, plain bool
	for {
		line, err := dovecotwire.ReadLine(r)
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		f := strings.Split(line, "\t")
		switch f[0] {
		case "VERSION":
			if len(f) < 3 || f[1] != "1" {
				return fmt.Errorf("handshake: Dovecot speaks auth protocol version %q; want 1", strings.Join(f[1:], "."))
			}
			version = true
		case "MECH":
			if len(f) > 1 && strings.EqualFold(f[1], "PLAIN") {
				plain = true
			}
		case "DONE":
			switch {
			case !version:
				return errors.New("handshake: no VERSION line: is this Dovecot's auth client socket?")
			case !plain:
				return errors.New("handshake: Dovecot does not offer PLAIN: add plain to auth_mechanisms")
			}
			return nil
		}
		// SPID, CUID, COOKIE and future lines are not needed.
	}
}

// request formats the AUTH line. resp comes last, as Dovecot wants it.
func request(id, service string, c *connection.Connection, user, password string) string {
	var b strings.Builder
	b.WriteString("AUTH\t" + id + "\tPLAIN\tservice=" + service + "\tnologin")
	if c != nil {
		if c.TLS != nil {
			b.WriteString("\tsecured")
		}
		if c.Local.IsValid() {
			b.WriteString("\tlip=" + c.Local.Addr().Unmap().String() + "\tlport=" + strconv.Itoa(int(c.Local.Port())))
		}
		if c.Remote.IsValid() {
			b.WriteString("\trip=" + c.RemoteIP().String() + "\trport=" + strconv.Itoa(int(c.Remote.Port())))
		}
	}
	b.WriteString("\tresp=" + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)) + "\n")
	return b.String()
}
