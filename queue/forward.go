package queue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/transaction"
)

// The Forwarder's default timeouts.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultDataTimeout    = 5 * time.Minute
)

// TLSMode says whether a Forwarder uses STARTTLS.
type TLSMode int

const (
	// TLSOff never sends STARTTLS.
	TLSOff TLSMode = iota
	// TLSOpportunistic uses STARTTLS when the downstream offers it, without
	// checking its certificate (RFC 7435 opportunistic security), and goes
	// on in plain text when it does not.
	TLSOpportunistic
	// TLSRequired defers every message unless STARTTLS is offered and the
	// certificate verifies against the downstream's host name.
	TLSRequired
)

// ParseTLSMode parses "off", "opportunistic" or "required" ("" is off).
func ParseTLSMode(s string) (TLSMode, error) {
	switch s {
	case "", "off":
		return TLSOff, nil
	case "opportunistic":
		return TLSOpportunistic, nil
	case "required":
		return TLSRequired, nil
	}
	return TLSOff, fmt.Errorf("%q: want \"off\", \"opportunistic\" or \"required\"", s)
}

// String returns the mode's setting value.
func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	}
	return "off"
}

// Forwarder relays messages to a downstream SMTP or LMTP server and passes
// its verdict through: a message counts as queued only when the downstream
// accepted it for every recipient. A Forwarder is safe for concurrent use;
// each message gets its own connection.
type Forwarder struct {
	// Addr is the downstream: "host:port", or "unix:/path/to/socket".
	Addr string
	// LMTP speaks LMTP (LHLO, one reply per recipient after DATA).
	LMTP bool
	// Helo is the name sent in EHLO or LHLO. "" means "localhost".
	Helo string
	// StartTLS says whether to use STARTTLS.
	StartTLS TLSMode
	// TLSConfig is used with TLSRequired; nil means the system's roots and
	// the host part of Addr as the server name.
	TLSConfig *tls.Config
	// ConnectTimeout bounds the connect, the greeting and each command's
	// reply. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// DataTimeout bounds sending the message and waiting for the reply to
	// its final dot. Zero means DefaultDataTimeout.
	DataTimeout time.Duration
}

// Forward relays tx. It returns a nil error only when the downstream accepted the
// message for every recipient. Otherwise it returns an *Error: permanent
// when the downstream answered 5xx for every recipient (or to MAIL or
// DATA), with the downstream's reply in Msg; temporary for a 4xx, a mix of
// refusals and acceptances, and any network error or timeout.
func (f *Forwarder) Forward(ctx context.Context, tx *transaction.Transaction) (Receipt, error) {
	if err := checkEnvelope(tx, ""); err != nil {
		return Receipt{}, err
	}
	conn, err := f.dial(ctx)
	if err != nil {
		return Receipt{}, temporary([3]int{4, 4, 1}, "Downstream server unreachable; try again later", err)
	}
	defer conn.Close()
	// A cancelled hook (deadline, client gone) unblocks any read or write.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	c, err := f.client(ctx, conn)
	if err != nil {
		return Receipt{}, f.failure(ctx, "the greeting", err)
	}
	defer c.Close()
	c.CommandTimeout = f.connectTimeout()
	c.SubmissionTimeout = f.dataTimeout()
	if err := c.Hello(f.helo()); err != nil {
		return Receipt{}, f.failure(ctx, "EHLO", err)
	}
	if err := f.envelope(ctx, c, tx); err != nil {
		if !connBroken(err) {
			f.quit(c)
		}
		return Receipt{}, err
	}
	remoteID, err := f.data(ctx, c, conn, tx)
	if err != nil {
		return Receipt{}, err
	}
	f.quit(c) // the message is accepted; a failing QUIT changes nothing
	return Receipt{ID: tx.ID, RemoteID: remoteID}, nil
}

// quitTimeout bounds the wait for the reply to QUIT, which is a courtesy:
// the verdict is already known and the client is waiting for it.
const quitTimeout = 5 * time.Second

func (f *Forwarder) quit(c *smtp.Client) {
	c.CommandTimeout = min(f.connectTimeout(), quitTimeout)
	c.Quit()
}

// connBroken reports whether err came from the connection rather than
// from a reply, so that sending QUIT would only wait for nothing.
func connBroken(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

func (f *Forwarder) helo() string {
	if f.Helo == "" {
		return "localhost"
	}
	return f.Helo
}

func (f *Forwarder) connectTimeout() time.Duration {
	if f.ConnectTimeout > 0 {
		return f.ConnectTimeout
	}
	return DefaultConnectTimeout
}

func (f *Forwarder) dataTimeout() time.Duration {
	if f.DataTimeout > 0 {
		return f.DataTimeout
	}
	return DefaultDataTimeout
}

// Network splits an address setting into the network and address to dial.
func Network(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	return "tcp", addr
}

func (f *Forwarder) dial(ctx context.Context) (net.Conn, error) {
	network, address := Network(f.Addr)
	d := net.Dialer{Timeout: f.connectTimeout()}
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", f.Addr, err)
	}
	return conn, nil
}

// newClient wraps conn in a go-smtp client of the right protocol.
func (f *Forwarder) newClient(conn net.Conn) *smtp.Client {
	if f.LMTP {
		return smtp.NewClientLMTP(conn)
	}
	return smtp.NewClient(conn)
}

// envelope sends MAIL FROM and one RCPT TO per recipient. Refused
// recipients do not stop the loop, so the verdict covers them all; no DATA
// is sent unless every recipient was accepted.
func (f *Forwarder) envelope(ctx context.Context, c *smtp.Client, tx *transaction.Transaction) error {
	opts := &smtp.MailOptions{Size: tx.MessageSize()}
	if tx.Params.UTF8 || !isASCII(tx.Sender) || !allASCII(tx.Recipients) {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return permanent([3]int{5, 6, 7}, "Downstream server does not support SMTPUTF8, which this message needs", nil)
		}
		opts.UTF8 = true
	}
	if err := c.Mail(tx.Sender, opts); err != nil {
		return f.failure(ctx, "MAIL FROM", err)
	}
	var refused []refusal
	for _, r := range tx.Recipients {
		err := c.Rcpt(r, nil)
		if err == nil {
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return f.failure(ctx, "RCPT TO", err)
		}
		refused = append(refused, refusal{r, se})
	}
	return verdict(refused, len(tx.Recipients))
}

// data sends DATA and the message and reads the verdict: one reply, or
// one per recipient for LMTP. It returns the downstream's queue id when
// its reply named one.
func (f *Forwarder) data(ctx context.Context, c *smtp.Client, conn net.Conn, tx *transaction.Transaction) (string, error) {
	w, err := c.Data()
	if err != nil {
		return "", f.failure(ctx, "DATA", err)
	}
	// go-smtp sets no deadline while the message is written.
	conn.SetWriteDeadline(time.Now().Add(f.dataTimeout()))
	if _, err := tx.WriteTo(w); err != nil {
		return "", f.failure(ctx, "the message", err)
	}
	if !f.LMTP {
		resp, err := w.CloseWithResponse()
		if err != nil {
			return "", f.failure(ctx, "the end of the message", err)
		}
		return remoteID(resp.StatusText), nil
	}
	return f.lmtpVerdict(ctx, w, tx)
}

// lmtpVerdict reads LMTP's per-recipient replies after the final dot.
func (f *Forwarder) lmtpVerdict(ctx context.Context, w *smtp.DataCommand, tx *transaction.Transaction) (string, error) {
	resps, err := w.CloseWithLMTPResponse()
	var perRcpt smtp.LMTPDataError
	if err != nil {
		if e, ok := err.(smtp.LMTPDataError); ok {
			perRcpt = e
		} else {
			// A network error part-way: some recipients may have their
			// copy; defer (see the README's note on duplicates).
			return "", f.failure(ctx, "the end of the message", err)
		}
	}
	var refused []refusal
	id := ""
	for _, r := range tx.Recipients {
		if se, bad := perRcpt[r]; bad {
			refused = append(refused, refusal{r, se})
		} else if resp, ok := resps[r]; ok && id == "" {
			id = remoteID(resp.StatusText)
		}
	}
	return id, verdict(refused, len(tx.Recipients))
}

// refusal is one recipient the downstream refused.
type refusal struct {
	rcpt string
	err  *smtp.SMTPError
}

// verdict decides from the refused recipients out of total: none is
// success; all refused permanently is a permanent failure; anything else
// is temporary, because SMTP cannot tell the client that some recipients
// were accepted and others not after DATA.
func verdict(refused []refusal, total int) error {
	if len(refused) == 0 {
		return nil
	}
	first := refused[0]
	text := fmt.Sprintf("Downstream server refused <%s>: %s", first.rcpt, replyText(first.err))
	if n := len(refused) - 1; n > 0 {
		text += fmt.Sprintf(" (and %d more)", n)
	}
	allPermanent := len(refused) == total
	for _, r := range refused {
		allPermanent = allPermanent && r.err.Code >= 500
	}
	cause := fmt.Errorf("%d of %d recipients refused: %w", len(refused), total, first.err)
	if allPermanent {
		return downstreamPermanent(first.err, text, cause)
	}
	if accepted := total - len(refused); accepted > 0 {
		text = fmt.Sprintf("%s; %d of %d recipients accepted", text, accepted, total)
	}
	return temporary([3]int{4, 3, 0}, text+"; try again later", cause)
}

// failure classifies an error at one step: a 5xx reply is permanent, a
// 4xx reply temporary, with the downstream's reply in the text; any other
// error (network, timeout, TLS) is temporary with a generic text.
func (f *Forwarder) failure(ctx context.Context, step string, err error) error {
	var qe *Error
	if errors.As(err, &qe) {
		return err
	}
	cause := fmt.Errorf("%s %s: %s: %w", f.protocol(), f.Addr, step, err)
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 600 {
		text := fmt.Sprintf("Downstream server refused %s: %s", step, replyText(se))
		if se.Code >= 500 {
			return downstreamPermanent(se, text, cause)
		}
		return temporary(enhancedOr(se, [3]int{4, 0, 0}), text+"; try again later", cause)
	}
	var ne net.Error
	if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return temporary([3]int{4, 4, 2}, "Downstream server timed out; try again later", cause)
	}
	return temporary([3]int{4, 4, 2}, "Connection to the downstream server failed; try again later", cause)
}

func (f *Forwarder) protocol() string {
	if f.LMTP {
		return "lmtp"
	}
	return "smtp"
}

// replyText formats a downstream reply as it was on the wire, on one line:
// "550 5.1.1 No such user".
func replyText(se *smtp.SMTPError) string {
	msg := strings.Join(strings.Fields(printable(se.Message)), " ")
	if len(msg) > 300 {
		msg = msg[:300]
	}
	if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
		e := se.EnhancedCode
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, e[0], e[1], e[2], msg)
	}
	return fmt.Sprintf("%d %s", se.Code, msg)
}

// downstreamPermanent is the permanent error for a downstream 5xx. The
// client gets the downstream's code when it is one RFC 5321 allows at the
// end of DATA (550, 552, 554), else 554.
func downstreamPermanent(se *smtp.SMTPError, text string, cause error) *Error {
	e := permanent(enhancedOr(se, [3]int{5, 0, 0}), text, cause)
	switch se.Code {
	case 550, 552, 554:
		e.Code = se.Code
	}
	return e
}

func enhancedOr(se *smtp.SMTPError, def [3]int) [3]int {
	if se.EnhancedCode == smtp.EnhancedCodeNotSet || se.EnhancedCode == smtp.NoEnhancedCode {
		return def
	}
	return [3]int(se.EnhancedCode)
}

var queuedAs = regexp.MustCompile(`(?i)\bqueued as:?\s+<?([A-Za-z0-9][A-Za-z0-9._@-]*)`)

// remoteID finds the downstream's queue id in its reply text
// ("2.0.0 Ok: queued as 4Xyz"), or "".
func remoteID(text string) string {
	m := queuedAs.FindStringSubmatch(text)
	if m == nil {
		return ""
	}
	return strings.TrimRight(m[1], ".")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !isASCII(s) {
			return false
		}
	}
	return true
}

// client reads the greeting and, when the mode asks for it, runs STARTTLS
// by hand (go-smtp's client cannot do it with our EHLO name or
// opportunistically on one connection), then hands the connection to a
// go-smtp client.
func (f *Forwarder) client(ctx context.Context, conn net.Conn) (*smtp.Client, error) {
	if f.StartTLS == TLSOff {
		return f.newClient(conn), nil
	}
	conn.SetDeadline(time.Now().Add(f.connectTimeout()))
	defer conn.SetDeadline(time.Time{})
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, protoError(err)
	}
	offered, err := f.helloForTLS(tp)
	if err != nil {
		return nil, err
	}
	if offered {
		if _, _, err = tpCmd(tp, 220, "STARTTLS"); err == nil {
			return f.afterStartTLS(ctx, conn, tp)
		}
		if f.StartTLS == TLSRequired {
			return nil, err
		}
	} else if f.StartTLS == TLSRequired {
		return nil, temporary([3]int{4, 7, 10}, "Downstream server does not offer STARTTLS, which is required; try again later",
			fmt.Errorf("%s %s: STARTTLS not offered", f.protocol(), f.Addr))
	}
	// Opportunistic and no TLS: go on in plain text. go-smtp sends its own
	// EHLO after the replayed greeting, which RFC 5321 allows.
	return f.newClient(replayGreeting(conn, tp.R)), nil
}

// helloForTLS sends EHLO (or LHLO) and reports whether STARTTLS is offered.
func (f *Forwarder) helloForTLS(tp *textproto.Conn) (bool, error) {
	verb := "EHLO"
	if f.LMTP {
		verb = "LHLO"
	}
	_, msg, err := tpCmd(tp, 250, "%s %s", verb, f.helo())
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.TrimSpace(line), "STARTTLS") {
			return true, nil
		}
	}
	return false, nil
}

// afterStartTLS runs the TLS handshake after the downstream's 220 to
// STARTTLS and returns a go-smtp client on the encrypted connection.
func (f *Forwarder) afterStartTLS(ctx context.Context, conn net.Conn, tp *textproto.Conn) (*smtp.Client, error) {
	if tp.R.Buffered() > 0 {
		// Bytes sent before the handshake must not be read as if they came
		// over TLS (STARTTLS command injection).
		return nil, fmt.Errorf("%s %s: the server sent data before the TLS handshake", f.protocol(), f.Addr)
	}
	tc := tls.Client(conn, f.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("%s %s: TLS handshake: %w", f.protocol(), f.Addr, err)
	}
	return f.newClient(replayGreeting(tc, tc)), nil
}

func (f *Forwarder) tlsConfig() *tls.Config {
	if f.StartTLS == TLSOpportunistic {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.TLSConfig != nil {
		cfg = f.TLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		if network, addr := Network(f.Addr); network == "tcp" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
	}
	return cfg
}

// tpCmd sends one command and reads its reply, as go-smtp's *SMTPError
// when the code is not the expected one.
func tpCmd(tp *textproto.Conn, expect int, format string, args ...any) (int, string, error) {
	id, err := tp.Cmd(format, args...)
	if err != nil {
		return 0, "", err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	code, msg, err := tp.ReadResponse(expect)
	return code, msg, protoError(err)
}

// protoError converts a textproto reply error to go-smtp's type, so one
// classifier handles both.
func protoError(err error) error {
	var pe *textproto.Error
	if !errors.As(err, &pe) {
		return err
	}
	se := &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	if code, rest, ok := strings.Cut(pe.Msg, " "); ok {
		var e smtp.EnhancedCode
		if n, _ := fmt.Sscanf(code, "%d.%d.%d", &e[0], &e[1], &e[2]); n == 3 {
			se.EnhancedCode, se.Message = e, rest
		}
	}
	return se
}

// replayGreeting gives go-smtp a connection that starts with a greeting
// line (the real one was already read), followed by whatever rest yields.
func replayGreeting(conn net.Conn, rest io.Reader) net.Conn {
	return &replayConn{Conn: conn, r: io.MultiReader(strings.NewReader("220 greeting already read\r\n"), rest)}
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
