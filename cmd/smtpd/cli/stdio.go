package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/server"
)

// stdio serves one SMTP connection on file descriptors 0 and 1 and exits,
// as qmail-smtpd and qpsmtpd do under ucspi-tcp's tcpserver or inetd:
//
//	tcpserver -R -H -x /etc/tcp.smtp.cdb 0 25 smtpd stdio -config /etc/sluice/smtpd.toml
//
// The connection runs through the named listener's plugin chain, limits
// and TLS settings (its address is not bound). What the launcher knows of
// the client comes from the environment (see clientFromEnv).
func stdio(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) int {
	fs := flag.NewFlagSet("stdio", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration `FILE`")
	name := fs.String("listener", "", "serve with the plugin chain and limits of listener `NAME` (default: the first)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpd stdio [-config FILE] [-listener NAME]\n\nServes one SMTP connection on stdin and stdout (under tcpserver or inetd).\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, "smtpd stdio", stderr); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "smtpd stdio: %v\n", err)
		return 1
	}
	cfg, listener, err := loadListener(*path, *name)
	if err != nil {
		return fail(err)
	}
	info, err := clientFromEnv(lookupEnv)
	if err != nil {
		return fail(err)
	}
	nc := stdioConn()
	if _, tcp := nc.(*net.TCPConn); !tcp && !info.Remote.IsValid() {
		return fail(errors.New("stdin is not a socket and TCPREMOTEIP is not set: run smtpd stdio under tcpserver or inetd, or set TCPREMOTEIP and TCPREMOTEPORT"))
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	b, err := build(cfg, log, nil, nil)
	if err != nil {
		return fail(err)
	}
	defer b.close(log)
	srv, err := server.New(b.server)
	if err != nil {
		return fail(err)
	}
	if err := srv.ServeConn(listener, nc, info); err != nil {
		return fail(err)
	}
	return 0
}

// loadListener loads the config at path and keeps only the listener
// named name (the first when name is empty) and the plugins it uses:
// stdio and policy serve one listener's chain and build nothing else.
func loadListener(path, name string) (*config.Config, string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, "", err
	}
	if name == "" {
		name = cfg.Listeners[0].Name
	}
	if !cfg.Only(name) {
		return nil, "", fmt.Errorf("%s has no listener named %q", path, name)
	}
	return cfg, name, nil
}

// clientFromEnv reads what tcpserver (and tcprules) or an inetd wrapper
// says of the client:
//
//	TCPREMOTEIP, TCPREMOTEPORT  the client's address and port
//	TCPLOCALIP, TCPLOCALPORT    the server's
//	TCPREMOTEHOST               the client's name, when tcpserver looked it up
//	TCPREMOTEINFO               the client's ident answer, when tcpserver asked
//	RELAYCLIENT                 set (even empty): the client may relay; its
//	                            value is appended to each recipient (qmail's rule)
//	DATABYTES                   the message size limit for this client
//	                            (0, qmail's "no limit", keeps the listener's)
//
// QMAILQUEUE needs nothing here: the qmailqueue plugin reads it from the
// environment of this process, which serves only this client.
func clientFromEnv(lookupEnv func(string) (string, bool)) (server.ClientInfo, error) {
	getenv := func(name string) string { v, _ := lookupEnv(name); return v }
	var info server.ClientInfo
	var err error
	if info.Remote, err = envAddr(getenv, "TCPREMOTEIP", "TCPREMOTEPORT"); err != nil {
		return info, err
	}
	if info.Local, err = envAddr(getenv, "TCPLOCALIP", "TCPLOCALPORT"); err != nil {
		return info, err
	}
	info.RemoteHost = getenv("TCPREMOTEHOST")
	info.RemoteInfo = getenv("TCPREMOTEINFO")
	if v, ok := lookupEnv("RELAYCLIENT"); ok {
		info.Relay, info.RcptSuffix = true, v
	}
	if v := getenv("DATABYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return info, fmt.Errorf("DATABYTES=%q: want a number of bytes", v)
		}
		info.MaxMessageSize = n
	}
	return info, nil
}

// envAddr reads an IP and a port variable; both unset is the zero
// address (the socket's is used).
func envAddr(getenv func(string) string, ipVar, portVar string) (netip.AddrPort, error) {
	ipText := getenv(ipVar)
	if ipText == "" {
		return netip.AddrPort{}, nil
	}
	ip, err := netip.ParseAddr(ipText)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s=%q is not an IP address", ipVar, ipText)
	}
	var port uint64
	if p := getenv(portVar); p != "" {
		if port, err = strconv.ParseUint(p, 10, 16); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%s=%q is not a port number", portVar, p)
		}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// stdioConn returns the connection on descriptors 0 and 1: the socket
// itself under tcpserver and inetd (both descriptors are the client's
// socket), or the two pipes when smtpd stdio is run by hand or by a test
// (no read timeouts then: a pipe has none).
func stdioConn() net.Conn {
	if c, err := net.FileConn(os.Stdin); err == nil {
		return c
	}
	return &pipeConn{in: os.Stdin, out: os.Stdout}
}

// pipeConn is a net.Conn over two pipes.
type pipeConn struct {
	in, out *os.File
}

func (p *pipeConn) Read(b []byte) (int, error)  { return p.in.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) { return p.out.Write(b) }
func (p *pipeConn) Close() error {
	p.in.Close()
	return p.out.Close()
}
func (p *pipeConn) LocalAddr() net.Addr  { return pipeAddr{} }
func (p *pipeConn) RemoteAddr() net.Addr { return pipeAddr{} }

// The deadlines are the files' where the descriptor supports them, and
// none otherwise.
func (p *pipeConn) SetDeadline(t time.Time) error {
	p.SetReadDeadline(t)
	return p.SetWriteDeadline(t)
}
func (p *pipeConn) SetReadDeadline(t time.Time) error  { p.in.SetReadDeadline(t); return nil }
func (p *pipeConn) SetWriteDeadline(t time.Time) error { p.out.SetWriteDeadline(t); return nil }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "stdio" }
