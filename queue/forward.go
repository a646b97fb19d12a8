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

// The Forwarder's default timeouts. The data timeout is the 10 minutes
// RFC 5321 section 4.5.3.2.6 gives a client to wait for the reply to the
// final dot: giving up sooner makes a duplicate likelier (the downstream
// may deliver a message whose 250 came too late).
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultDataTimeout    = 10 * time.Minute
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
// its verdict through. A Forwarder is safe for concurrent use; each message
// gets its own connection (Forward), or its caller holds one (Open).
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
	// Refuse8Bit refuses (554 5.6.3) a message with 8-bit content for a
	// downstream that does not offer 8BITMIME, instead of converting it to
	// 7 bit (Write7Bit), which is the default.
	Refuse8Bit bool
}

// Forward relays tx over a connection of its own. It returns a nil error
// only when the downstream accepted the message for every recipient.
// Otherwise it returns an *Error: permanent when the downstream answered
// 5xx for every recipient (or to MAIL or DATA), with the downstream's reply
// in Msg; temporary for a 4xx, a mix of refusals and acceptances, and any
// network error or timeout. The Receipt's Outcomes say what became of each
// recipient, also with an error.
//
// split decides, when the downstream refused some recipients at RCPT and
// accepted others, whether the message goes on to the accepted ones (the
// caller then hands on the refused ones, see Routes); nil or false sends
// nothing, so that the client's retry duplicates nothing.
func (f *Forwarder) Forward(ctx context.Context, tx *transaction.Transaction, split func(refused Outcomes) bool) (Receipt, error) {
	rc := Receipt{ID: tx.ID}
	if err := checkEnvelope(tx, ""); err != nil {
		return rc, err
	}
	s, err := f.Open(ctx)
	if err != nil {
		return rc, err
	}
	defer s.Close()
	rc.DSN = s.Extension("DSN")
	if err := s.Mail(ctx, tx); err != nil {
		return rc, err
	}
	rc.Outcomes = make(Outcomes, 0, len(tx.Recipients))
	var refused Outcomes
	for _, r := range tx.Recipients {
		o, err := s.Rcpt(ctx, tx, r)
		if err != nil {
			undelivered(rc.Outcomes) // no message was sent
			return rc, err
		}
		rc.Outcomes = append(rc.Outcomes, o)
		if !o.Delivered {
			refused = append(refused, o)
		}
	}
	if len(refused) == len(tx.Recipients) || len(refused) > 0 && (split == nil || !split(refused)) {
		undelivered(rc.Outcomes)
		return rc, verdict(refused, len(tx.Recipients))
	}
	sent, remoteID, err := s.Data(ctx, tx)
	rc.RemoteID = remoteID
	j := 0
	for i := range rc.Outcomes {
		if !rc.Outcomes[i].Delivered {
			continue
		}
		if j < len(sent) {
			rc.Outcomes[i] = sent[j]
		} else {
			// No reply for this recipient: not delivered, as far as known.
			rc.Outcomes[i] = Outcome{Rcpt: rc.Outcomes[i].Rcpt}
		}
		j++
	}
	if err != nil {
		return rc, err
	}
	return rc, Verdict(rc.Outcomes)
}

// undelivered marks outcomes accepted at RCPT as not delivered: no
// message was sent to them.
func undelivered(outs Outcomes) {
	for i := range outs {
		outs[i].Delivered = false
	}
}

// Session is a connection to the downstream after its greeting and EHLO
// (LHLO), ready for one transaction at a time: Forward uses one per
// message; a live proxy keeps one open from MAIL to the end of the message;
// a recipient check asks with MAIL, RCPT and RSET. A Session is not safe
// for concurrent use. Every method takes the context of the hook it runs
// in: when it is done, the connection is closed and the Session is broken.
type Session struct {
	f      *Forwarder
	conn   net.Conn
	c      *smtp.Client
	rcpts  []string // accepted at RCPT in this transaction, in order
	utf8   bool     // MAIL carried SMTPUTF8
	broken bool
}

// Open connects to the downstream and greets it. The error is an *Error.
func (f *Forwarder) Open(ctx context.Context) (*Session, error) {
	conn, err := f.dial(ctx)
	if err != nil {
		return nil, temporary([3]int{4, 4, 1}, "Downstream server unreachable; try again later", err)
	}
	s := &Session{f: f, conn: conn}
	defer s.watch(ctx)()
	c, err := f.client(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, f.failure(ctx, "the greeting", err)
	}
	s.c = c
	c.CommandTimeout = f.connectTimeout()
	c.SubmissionTimeout = f.dataTimeout()
	if err := c.Hello(f.helo()); err != nil {
		c.Close()
		return nil, f.failure(ctx, "EHLO", err)
	}
	return s, nil
}

// watch closes the connection if ctx ends before the returned function is
// called: a cancelled hook (deadline, client gone) unblocks any read or
// write.
func (s *Session) watch(ctx context.Context) func() {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	return func() { stop() }
}

// fail marks the session broken when err came from the connection rather
// than from a reply, and classifies err for the client.
func (s *Session) fail(ctx context.Context, step string, err error) error {
	if connBroken(err) || ctx.Err() != nil {
		s.broken = true
	}
	return s.f.failure(ctx, step, err)
}

// Broken reports whether the connection failed: the session can do
// nothing more but Close.
func (s *Session) Broken() bool { return s.broken }

// Extension reports whether the downstream offered the EHLO keyword name
// ("DSN", "SMTPUTF8", "8BITMIME").
func (s *Session) Extension(name string) bool {
	ok, _ := s.c.Extension(name)
	return ok
}

// Mail sends MAIL FROM with the parameters the downstream understands:
// SIZE, SMTPUTF8 when the message needs it, and DSN's RET and ENVID when
// the downstream offers DSN. A refusal is an *Error with the downstream's
// reply.
func (s *Session) Mail(ctx context.Context, tx *transaction.Transaction) error {
	defer s.watch(ctx)()
	s.rcpts = s.rcpts[:0]
	// At MAIL time (a live proxy) the message is not in yet: pass on the
	// size the client declared. A message that may be converted to 7 bit
	// grows, so no size is declared to a downstream without 8BITMIME.
	opts := &smtp.MailOptions{Size: tx.MessageSize()}
	if opts.Size == 0 {
		opts.Size = tx.Params.Size
	}
	if !s.Extension("8BITMIME") {
		opts.Size = 0
	}
	// SMTPUTF8 only where the message needs it (Postfix's
	// smtputf8_autodetect): a client may ask for it with an all-ASCII
	// message, which a downstream without SMTPUTF8 then still gets.
	s.utf8 = false
	if NeedsUTF8(tx) || tx.Params.UTF8 && s.Extension("SMTPUTF8") {
		if !s.Extension("SMTPUTF8") {
			return needsUTF8Error()
		}
		opts.UTF8, s.utf8 = true, true
	}
	if s.Extension("DSN") {
		opts.Return = smtp.DSNReturn(tx.Params.Ret)
		if printableASCII(tx.Params.EnvID) {
			opts.EnvelopeID = tx.Params.EnvID
		}
	}
	if err := s.c.Mail(tx.Sender, opts); err != nil {
		return s.fail(ctx, "MAIL FROM", err)
	}
	return nil
}

// Rcpt sends RCPT TO for rcpt, with its DSN parameters (NOTIFY, ORCPT)
// when the downstream offers DSN, and returns the downstream's answer as
// an Outcome (Delivered meaning accepted so far). The error is for the
// connection only (an *Error); a refusal is an Outcome.
func (s *Session) Rcpt(ctx context.Context, tx *transaction.Transaction, rcpt string) (Outcome, error) {
	defer s.watch(ctx)()
	var opts *smtp.RcptOptions
	if p, ok := tx.RcptParams[rcpt]; ok && s.Extension("DSN") {
		opts = rcptOptions(p)
	}
	err := s.c.Rcpt(rcpt, opts)
	if err == nil {
		s.rcpts = append(s.rcpts, rcpt)
		return Outcome{Rcpt: rcpt, Delivered: true, Code: 250}, nil
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return Outcome{Rcpt: rcpt}, s.fail(ctx, "RCPT TO", err)
	}
	return refusedOutcome(rcpt, se), nil
}

// rcptOptions turns a recipient's DSN parameters into go-smtp's.
func rcptOptions(p transaction.RcptParams) *smtp.RcptOptions {
	opts := &smtp.RcptOptions{}
	for _, n := range p.Notify {
		opts.Notify = append(opts.Notify, smtp.DSNNotify(n))
	}
	switch {
	case p.ORcpt == "":
	case p.ORcptType == "rfc822" && printableASCII(p.ORcpt):
		opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressTypeRFC822, p.ORcpt
	case p.ORcptType == "utf-8":
		opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressTypeUTF8, p.ORcpt
	}
	return opts
}

// refusedOutcome is the Outcome of a refusal.
func refusedOutcome(rcpt string, se *smtp.SMTPError) Outcome {
	o := Outcome{Rcpt: rcpt, Permanent: se.Code >= 500, Code: se.Code, Reply: replyText(se)}
	if e := enhancedOr(se, [3]int{}); e[0] != 0 {
		o.Enhanced = e
	}
	return o
}

// Data sends DATA and the message to the recipients Rcpt accepted and
// returns what became of each of them, in order (one reply for all with
// SMTP, one each with LMTP), and the downstream's queue id when a reply
// named one. The error is an *Error: a refusal of DATA itself, a failure
// of the connection, or (SMTP) the refusal of the message, which the
// Outcomes then also hold. A failure after the whole message was sent
// is ambiguous (the downstream may have delivered it): its cause says
// "possible duplicate" and names the queue id.
func (s *Session) Data(ctx context.Context, tx *transaction.Transaction) (Outcomes, string, error) {
	defer s.watch(ctx)()
	if len(s.rcpts) == 0 {
		return nil, "", permanent([3]int{5, 5, 1}, "no valid recipients", nil)
	}
	if !s.utf8 && NeedsUTF8(tx) {
		// A live proxy sent MAIL before the header was in.
		return nil, "", needsUTF8Error()
	}
	write := tx.WriteTo
	if !s.Extension("8BITMIME") {
		eight, err := Has8Bit(tx)
		if err != nil {
			return nil, "", fmt.Errorf("reading the spooled message: %w", err)
		}
		switch {
		case eight && s.f.Refuse8Bit:
			return nil, "", permanent([3]int{5, 6, 3}, "Downstream server does not support 8BITMIME, which this message needs", nil)
		case eight:
			write = func(w io.Writer) (int64, error) { return Write7Bit(w, tx) }
		}
	}
	w, err := s.c.Data()
	if err != nil {
		return nil, "", s.fail(ctx, "DATA", err)
	}
	// go-smtp sets no deadline while the message is written.
	s.conn.SetWriteDeadline(time.Now().Add(s.f.dataTimeout()))
	if _, err := write(w); err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			// Not convertible: leave without the final dot.
			s.broken = true
			return nil, "", err
		}
		return nil, "", s.fail(ctx, "the message", err)
	}
	s.conn.SetWriteDeadline(time.Time{})
	rcpts := s.rcpts
	s.rcpts = nil
	if !s.f.LMTP {
		resp, err := w.CloseWithResponse()
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			outs := make(Outcomes, len(rcpts))
			for i, r := range rcpts {
				outs[i] = refusedOutcome(r, se)
			}
			return outs, "", s.f.failure(ctx, "the end of the message", err)
		}
		if err != nil {
			return nil, "", s.fail(ctx, "the end of the message", possibleDuplicate(tx, err))
		}
		outs := make(Outcomes, len(rcpts))
		for i, r := range rcpts {
			outs[i] = Outcome{Rcpt: r, Delivered: true, Code: 250}
		}
		return outs, remoteID(resp.StatusText), nil
	}
	resps, err := w.CloseWithLMTPResponse()
	// Only a bare LMTPDataError means a reply for every recipient: a
	// network error part-way comes joined with the refusals read before
	// it, and the recipients after it have no reply.
	perRcpt, replied := err.(smtp.LMTPDataError)
	if err != nil && !replied {
		// A network error part-way: some recipients may have their copy.
		return nil, "", s.fail(ctx, "the end of the message", possibleDuplicate(tx, err))
	}
	outs := make(Outcomes, len(rcpts))
	id := ""
	for i, r := range rcpts {
		if se, bad := perRcpt[r]; bad {
			outs[i] = refusedOutcome(r, se)
			continue
		}
		outs[i] = Outcome{Rcpt: r, Delivered: true, Code: 250}
		if resp, ok := resps[r]; ok && id == "" {
			id = remoteID(resp.StatusText)
		}
	}
	return outs, id, nil
}

// needsUTF8Error is the refusal of a message that needs SMTPUTF8 by a
// downstream that does not offer it.
func needsUTF8Error() error {
	return permanent([3]int{5, 6, 7}, "Downstream server does not support SMTPUTF8, which this message needs", nil)
}

// possibleDuplicate says in the log that the downstream may have the
// message although the client is told to try again.
func possibleDuplicate(tx *transaction.Transaction, err error) error {
	return fmt.Errorf("no reply after the whole message was sent: possible duplicate of queue id %s if the downstream delivered it: %w", tx.ID, err)
}

// Reset sends RSET, ending the transaction so that another can start.
func (s *Session) Reset(ctx context.Context) error {
	defer s.watch(ctx)()
	s.rcpts = nil
	if err := s.c.Reset(); err != nil {
		return s.fail(ctx, "RSET", err)
	}
	return nil
}

// Close sends QUIT (waiting a few seconds at most for its reply) unless
// the connection broke, and closes it.
func (s *Session) Close() {
	if !s.broken {
		s.c.CommandTimeout = min(s.f.connectTimeout(), quitTimeout)
		s.conn.SetDeadline(time.Now().Add(quitTimeout))
		s.c.Quit()
	}
	s.c.Close()
}

// quitTimeout bounds the wait for the reply to QUIT, which is a courtesy:
// the verdict is already known and the client is waiting for it.
const quitTimeout = 5 * time.Second

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

// Verdict is the error for a handoff's outcomes (nil when every recipient
// was delivered): permanent (the downstream's 550, 552 or 554, else 554)
// when every recipient was refused for good; temporary (451 4.3.0)
// otherwise, because SMTP cannot tell the client after DATA that some
// recipients got the message and others not. Routes.Settle takes it with
// the outcomes.
func Verdict(outs Outcomes) error {
	var refused Outcomes
	for _, o := range outs {
		if !o.Delivered {
			refused = append(refused, o)
		}
	}
	return verdict(refused, len(outs))
}

// verdict is Verdict given the refused recipients out of total.
func verdict(refused Outcomes, total int) error {
	if len(refused) == 0 {
		return nil
	}
	first := refused[0]
	text := fmt.Sprintf("Downstream server refused <%s>: %s", first.Rcpt, first.Reply)
	if n := len(refused) - 1; n > 0 {
		text += fmt.Sprintf(" (and %d more)", n)
	}
	allPermanent := len(refused) == total
	for _, r := range refused {
		allPermanent = allPermanent && r.Permanent
	}
	cause := fmt.Errorf("%d of %d recipients refused: %s", len(refused), total, first.Reply)
	if allPermanent {
		e := permanent(first.Enhanced, text, cause)
		if e.Enhanced[0] != 5 {
			e.Enhanced = [3]int{5, 0, 0}
		}
		switch first.Code {
		case 550, 552, 554:
			e.Code = first.Code
		}
		return e
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

// RemoteName names the downstream in a delivery status notification's
// Remote-MTA field: the host part of Addr, or "localhost" for a unix
// socket.
func (f *Forwarder) RemoteName() string {
	network, addr := Network(f.Addr)
	if network == "unix" {
		return "localhost"
	}
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
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

// printableASCII reports whether s is printable US-ASCII, as DSN's ENVID
// and an rfc822 ORCPT must be; "" is not.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return s != ""
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
