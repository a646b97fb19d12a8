// Package queuetest holds test helpers for the queue package and the queue
// plugins: a real go-smtp server on loopback that records what reached it
// (SMTP or LMTP, TCP or a unix socket, with or without STARTTLS), Postfix's
// smtp-sink started on loopback, and the qmail-queue protocol checker
// (queue/testdata/qqcheck) built for the test run.
package queuetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Options configure a Downstream.
type Options struct {
	// LMTP makes the server speak LMTP.
	LMTP bool
	// Unix listens on a unix socket instead of 127.0.0.1:0.
	Unix bool
	// TLS, when set, offers STARTTLS with this configuration.
	TLS *tls.Config
	// RcptErr refuses RCPT TO for the listed recipients.
	RcptErr map[string]*smtp.SMTPError
	// DataErr is the reply after the final dot: per recipient for LMTP;
	// under the key "" for SMTP.
	DataErr map[string]*smtp.SMTPError
	// QueuedAs, when set, makes the success reply after the final dot
	// "250 2.0.0 Ok: queued as QueuedAs", as Postfix words it.
	QueuedAs string
	// NoSMTPUTF8 stops the server from offering SMTPUTF8.
	NoSMTPUTF8 bool
	// HoldReply, when set, makes the server record the message and then
	// wait this long before its reply to the final dot: a downstream that
	// delivered but whose reply comes too late.
	HoldReply time.Duration
}

// Message is one message that reached a Downstream.
type Message struct {
	Helo string
	From string
	To   []string
	// Data is the message exactly as received (dot-unstuffed).
	Data []byte
	// TLS is true when the message came over STARTTLS.
	TLS bool
}

// Downstream is a go-smtp server on loopback that records messages.
type Downstream struct {
	// Addr is the address in queue.Forwarder form: "127.0.0.1:PORT" or
	// "unix:/path".
	Addr string
	opts Options
	mu   sync.Mutex
	msgs []Message
}

// StartDownstream starts a Downstream; it stops when the test ends.
func StartDownstream(t testing.TB, opts Options) *Downstream {
	t.Helper()
	d := &Downstream{opts: opts}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{d: d, c: c}, nil
	}))
	s.Domain = "downstream.test"
	s.LMTP = opts.LMTP
	s.TLSConfig = opts.TLS
	s.EnableSMTPUTF8 = !opts.NoSMTPUTF8
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	var l net.Listener
	var err error
	if opts.Unix {
		path := filepath.Join(t.TempDir(), "downstream.sock")
		l, err = net.Listen("unix", path)
		d.Addr = "unix:" + path
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			d.Addr = l.Addr().String()
		}
	}
	if err != nil {
		t.Fatalf("queuetest: listen: %v", err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return d
}

// Messages returns what was delivered so far.
func (d *Downstream) Messages() []Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Message(nil), d.msgs...)
}

type session struct {
	d    *Downstream
	c    *smtp.Conn
	from string
	to   []string
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if e := s.d.opts.RcptErr[to]; e != nil {
		return e
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) read(r io.Reader) (Message, error) {
	b, err := io.ReadAll(r)
	_, tlsOn := s.c.TLSConnectionState()
	return Message{Helo: s.c.Hostname(), From: s.from, To: append([]string(nil), s.to...), Data: b, TLS: tlsOn}, err
}

func (s *session) Data(r io.Reader) error {
	m, err := s.read(r)
	if err != nil {
		return err
	}
	if e := s.d.opts.DataErr[""]; e != nil {
		return e
	}
	s.d.record(m)
	if s.d.opts.HoldReply > 0 {
		time.Sleep(s.d.opts.HoldReply)
	}
	return s.d.okReply()
}

// okReply is the success reply after the final dot: go-smtp's default
// (nil), or one naming a queue id.
func (d *Downstream) okReply() error {
	if d.opts.QueuedAs == "" {
		return nil
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + d.opts.QueuedAs}
}

// LMTPData gives each recipient its own status. The message is recorded
// before any status is set: go-smtp writes each status to the client as
// it is set, and a test reads Messages as soon as it has its reply.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	m, err := s.read(r)
	if err != nil {
		return err
	}
	var ok []string
	for _, rcpt := range s.to {
		if s.d.opts.DataErr[rcpt] == nil {
			ok = append(ok, rcpt)
		}
	}
	if len(ok) > 0 {
		m.To = ok
		s.d.record(m)
	}
	for _, rcpt := range s.to {
		if e := s.d.opts.DataErr[rcpt]; e != nil {
			status.SetStatus(rcpt, e)
			continue
		}
		status.SetStatus(rcpt, s.d.okReply())
	}
	return nil
}

func (d *Downstream) record(m Message) {
	d.mu.Lock()
	d.msgs = append(d.msgs, m)
	d.mu.Unlock()
}

// SelfSigned returns a server TLS configuration with a fresh certificate
// for 127.0.0.1 and localhost, and a pool that trusts it.
func SelfSigned(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "downstream.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// SMTPSinkPath is where Debian's postfix package installs smtp-sink.
const SMTPSinkPath = "/usr/sbin/smtp-sink"

// SMTPSink starts Postfix's smtp-sink on a free loopback port with the
// extra arguments (e.g. "-f", "RCPT" to refuse RCPT with a 5xx) and returns
// its address once it accepts connections. It skips the test when
// smtp-sink is not installed.
func SMTPSink(t testing.TB, args ...string) string {
	t.Helper()
	if _, err := os.Stat(SMTPSinkPath); err != nil {
		t.Skip("smtp-sink not found: install postfix (apt-get install postfix) to run this test")
	}
	addr := freePort(t)
	all := []string{}
	if os.Geteuid() == 0 {
		all = append(all, "-u", "nobody") // smtp-sink refuses to run as root
	}
	all = append(all, args...)
	all = append(all, addr, "10")
	cmd := exec.Command(SMTPSinkPath, all...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start smtp-sink: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	waitListening(t, addr, exited, &stderr)
	return addr
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitListening waits until addr accepts a connection, the process exits,
// or 5 seconds pass.
func waitListening(t testing.TB, addr string, exited <-chan error, stderr *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("smtp-sink exited before listening: %v: %s", err, stderr)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink not listening on %s after 5s: %v", addr, err)
		}
	}
}

// BuildQQCheck builds the qmail-queue protocol checker into dir and returns
// the binary's path. Call it from TestMain, once per test binary.
func BuildQQCheck(dir string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("queuetest: cannot locate the qqcheck source")
	}
	src := filepath.Join(filepath.Dir(self), "..", "testdata", "qqcheck")
	out := filepath.Join(dir, "qqcheck")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build qqcheck: %v\n%s", err, b)
	}
	return out, nil
}
