package queue

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// This file builds delivery status notifications (RFC 3464 inside an RFC
// 6522 multipart/report, RFC 6533 for SMTPUTF8 mail) by hand rather than
// with go-message's writers: go-message canonicalises field names
// ("Reporting-Mta", "Message-Id") and folds a value with no white space by
// inserting a space into it, while a DSN's fields are read by programs
// that expect them as the RFCs spell them, and the returned message must go
// out byte for byte with no transfer encoding. Three parts under one
// boundary are a few lines; go-message parses them back in the tests.

// DefaultReturnLimit is the largest original message, in bytes, that a
// bounce returns whole when Report.ReturnLimit is zero. A larger one is
// returned as its header alone: a truncated body could break its MIME
// structure, and 1 MiB is enough for any message that is text. Postfix's
// bounce_size_limit plays the same part.
const DefaultReturnLimit = 1 << 20

// Report describes the delivery status notification (a bounce) to send
// back for the recipients a downstream refused for good, after the client
// already got 250 for the message.
type Report struct {
	// ReportingMTA is this host's name, as in Reporting-MTA: dns; NAME and
	// MAILER-DAEMON@NAME. Required.
	ReportingMTA string
	// RemoteMTA is the downstream that refused the recipients (Remote-MTA:
	// dns; NAME); "" leaves the field out.
	RemoteMTA string
	// Arrival is when the message arrived (Arrival-Date); zero means the
	// transaction's Started.
	Arrival time.Time
	// Failed are the recipients that will not be delivered, with the
	// downstream's reply; usually refused for good (5xx), but a recipient
	// given up on after 4xx replies is reported as failed too, with its
	// 4.x.x status. Delivered outcomes are skipped.
	Failed []Outcome
	// Delivered are the recipients a success notice (SuccessNotice)
	// reports: delivered, or relayed to a downstream without DSN.
	Delivered []Outcome
	// Relayed makes a success notice say "relayed" (RFC 3461 section
	// 4.1: the message went on to a server that does not offer DSN, so no
	// notice will come from further on) instead of "delivered".
	Relayed bool
	// ReturnLimit is the size in bytes up to which the original message is
	// returned whole (RET=FULL or no RET); past it only its header is. 0
	// means DefaultReturnLimit.
	ReturnLimit int64
}

// Bounce returns the delivery status notification of r for tx: a new
// transaction from the null sender to tx.Sender, its header parsed and its
// body spooled like tx's (memory up to the same threshold, then a file in
// the same directory), ready to be handed to a queue. The caller closes it.
//
// It returns nil and no error when no notification is due: tx has the null
// sender (a bounce is never bounced), or no recipient of r.Failed wants one
// (its NOTIFY= was NEVER, or a list without FAILURE; no NOTIFY means
// FAILURE). The notification lists only the recipients that want it.
//
// The notification is a multipart/report of three parts: an explanation in
// English; the message/delivery-status fields (Reporting-MTA,
// Original-Envelope-Id, Arrival-Date, then per recipient
// Original-Recipient, Final-Recipient, Action: failed, Status, Remote-MTA,
// Diagnostic-Code); and the original message as message/rfc822, or only
// its header as text/rfc822-headers when the sender asked for RET=HDRS or
// the message is larger than r.ReturnLimit. For an SMTPUTF8 message the
// types are RFC 6533's message/global-delivery-status, message/global and
// message/global-headers, and the notification is SMTPUTF8 itself.
//
// Every line it writes ends in CRLF and is at most 998 octets; the
// returned message is copied verbatim. A reply text with control or
// non-ASCII characters has them replaced by '?', and a long one is folded.
func Bounce(tx *transaction.Transaction, r Report) (*transaction.Transaction, error) {
	var failed []Outcome
	for _, o := range r.Failed {
		if !o.Delivered && wantsFailureNotice(tx.RcptParams[o.Rcpt].Notify) {
			failed = append(failed, o)
		}
	}
	return notice(tx, r, "failed", failed)
}

// SuccessNotice returns the delivery status notification of success for
// the recipients of r.Delivered that asked for one with NOTIFY=SUCCESS:
// Action "delivered", or "relayed" with r.Relayed (the downstream does not
// offer DSN, so the notice must come from here, RFC 3461 section 4.1). It
// is built as Bounce builds its notification, with the original's header
// alone returned; nil when no notice is due.
func SuccessNotice(tx *transaction.Transaction, r Report) (*transaction.Transaction, error) {
	var done []Outcome
	for _, o := range r.Delivered {
		if o.Delivered && wantsNotice(tx.RcptParams[o.Rcpt].Notify, "SUCCESS") {
			done = append(done, o)
		}
	}
	action := "delivered"
	if r.Relayed {
		action = "relayed"
	}
	return notice(tx, r, action, done)
}

// notice builds the notification of action for the recipients list.
func notice(tx *transaction.Transaction, r Report, action string, list []Outcome) (*transaction.Transaction, error) {
	if tx.Sender == "" || len(list) == 0 {
		return nil, nil
	}
	if err := checkMTAName("ReportingMTA", r.ReportingMTA, true); err != nil {
		return nil, err
	}
	if err := checkMTAName("RemoteMTA", r.RemoteMTA, false); err != nil {
		return nil, err
	}
	if r.Arrival.IsZero() {
		r.Arrival = tx.Started
	}
	limit := r.ReturnLimit
	if limit <= 0 {
		limit = DefaultReturnLimit
	}

	b := bounce{tx: tx, r: r, action: action, list: list, global: tx.Params.UTF8}
	// A success notice returns the header alone, whatever RET says: the
	// sender has the message, and the recipient has it too.
	b.headersOnly = action != "failed" || tx.Params.Ret == "HDRS" || tx.MessageSize() > limit
	b.tooLarge = action == "failed" && tx.Params.Ret != "HDRS" && b.headersOnly
	b.limit = limit
	text, status := b.explanation(), b.deliveryStatus()
	boundary, returned8bit, err := b.pickBoundary(text, status)
	if err != nil {
		return nil, err
	}

	dsn := &transaction.Transaction{
		ID:         connection.NewID(),
		Recipients: []string{tx.Sender},
		Body:       tx.Scratch(),
		Started:    time.Now(),
	}
	dsn.Params.UTF8 = tx.Params.UTF8 || !isASCII(tx.Sender)
	if returned8bit || !isASCII(text) || !isASCII(status) {
		dsn.Params.Body = "8BITMIME"
	}
	header := b.header(dsn.ID, boundary, dsn.Started)
	if err := dsn.ReadHeader(bufio.NewReader(strings.NewReader(header)), transaction.HeaderLimits{}); err != nil {
		dsn.Close()
		return nil, fmt.Errorf("bounce: parse the notification's own header: %w", err)
	}
	if err := b.writeBody(dsn.Body, boundary, text, status, returned8bit); err != nil {
		dsn.Close()
		return nil, fmt.Errorf("bounce: spool the notification for %s: %w", tx.ID, err)
	}
	dsn.Size = dsn.MessageSize()
	return dsn, nil
}

// wantsFailureNotice reports whether a recipient's NOTIFY= asks for a
// notification of failure: absent (RFC 3461's default) or listing FAILURE.
func wantsFailureNotice(notify []string) bool {
	return notify == nil || wantsNotice(notify, "FAILURE")
}

// wantsNotice reports whether NOTIFY= lists kind.
func wantsNotice(notify []string, kind string) bool {
	for _, n := range notify {
		if strings.EqualFold(n, kind) {
			return true
		}
	}
	return false
}

// checkMTAName checks a host name that goes into a "dns; NAME" field: 1 to
// 255 printable ASCII characters, none of them white space or a character
// that would end the field or an address ("<>@;()\",").
func checkMTAName(setting, name string, required bool) error {
	if name == "" {
		if required {
			return fmt.Errorf("bounce: %s is empty: set it to this host's name", setting)
		}
		return nil
	}
	ok := len(name) <= 255
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c > ' ' && c < 0x7f && !strings.ContainsRune("<>@;()\",", rune(c))
	}
	if !ok {
		return fmt.Errorf("bounce: %s %q is not a host name (printable ASCII, no white space or <>@;()\",)", setting, name)
	}
	return nil
}

// bounce is one notification being built.
type bounce struct {
	tx          *transaction.Transaction
	r           Report
	action      string    // "failed", "delivered" or "relayed"
	list        []Outcome // the recipients reported
	global      bool      // RFC 6533 types: the original is SMTPUTF8
	headersOnly bool      // return the header only
	tooLarge    bool      // ... because the message is larger than limit
	limit       int64     // the size returned whole
}

// header returns the notification's header section, with the empty line
// that ends it.
func (b *bounce) header(id, boundary string, now time.Time) string {
	var h strings.Builder
	host := b.r.ReportingMTA
	fmt.Fprintf(&h, "From: \"Mail Delivery System\" <MAILER-DAEMON@%s>\r\n", host)
	fmt.Fprintf(&h, "To: <%s>\r\n", cleanText(b.tx.Sender, true))
	if b.action == "failed" {
		h.WriteString("Subject: Undelivered Mail Returned to Sender\r\n")
	} else {
		h.WriteString("Subject: Successful Mail Delivery Report\r\n")
	}
	fmt.Fprintf(&h, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&h, "Message-ID: <%s@%s>\r\n", id, host)
	h.WriteString("Auto-Submitted: auto-replied\r\n")
	h.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&h, "Content-Type: multipart/report; report-type=%s;\r\n\tboundary=\"%s\"\r\n", b.statusType(), boundary)
	h.WriteString("\r\n")
	return h.String()
}

// statusType is the subtype of the machine-readable part, which is also
// the multipart/report's report-type (RFC 6522 section 3).
func (b *bounce) statusType() string {
	if b.global {
		return "global-delivery-status"
	}
	return "delivery-status"
}

// returnedType is the media type of the third part.
func (b *bounce) returnedType() string {
	switch {
	case b.global && b.headersOnly:
		return "message/global-headers"
	case b.global:
		return "message/global"
	case b.headersOnly:
		return "text/rfc822-headers"
	}
	return "message/rfc822"
}

// writeReturned writes what the third part returns of the original.
func (b *bounce) writeReturned(w io.Writer) error {
	var err error
	if b.headersOnly {
		_, err = b.tx.Header.WriteTo(w)
	} else {
		_, err = b.tx.WriteTo(w)
	}
	return err
}

// explanation returns the human-readable first part.
func (b *bounce) explanation() string {
	var t strings.Builder
	t.WriteString(wrapText("This is the mail system at "+b.r.ReportingMTA+".", "", ""))
	t.WriteString("\r\n")
	if b.action != "failed" {
		return b.successExplanation(&t)
	}
	t.WriteString(wrapText("Your message could not be delivered to the recipients below. "+
		"The server that was to take it refused them, so Sluice has given up on them "+
		"and will not try again. Recipients not listed here are not affected by this report.", "", ""))
	for _, o := range b.list {
		t.WriteString("\r\n")
		who := "<" + cleanText(o.Rcpt, b.global) + ">: "
		switch {
		case b.r.RemoteMTA != "" && o.Reply != "":
			t.WriteString(wrapText(who+b.r.RemoteMTA+" refused it with this reply:", "", ""))
		case o.Reply != "":
			t.WriteString(wrapText(who+"the receiving server refused it with this reply:", "", ""))
		default:
			t.WriteString(wrapText(who+"the receiving server gave no reply (status "+o.Status()+").", "", ""))
		}
		if reply := diagnostic(o); reply != "" {
			t.WriteString(wrapText(reply, "    ", "    "))
		}
	}
	t.WriteString("\r\n")
	switch {
	case b.tooLarge:
		t.WriteString(wrapText(fmt.Sprintf("Your message was larger than %d bytes, so only its header is returned below, "+
			"after the delivery report.", b.limit), "", ""))
	case b.headersOnly:
		t.WriteString(wrapText("As you asked, only the header of your message is returned below, after the delivery report.", "", ""))
	default:
		t.WriteString(wrapText("Your message is returned below, after the delivery report.", "", ""))
	}
	return t.String()
}

// successExplanation finishes the human-readable part of a success
// notice.
func (b *bounce) successExplanation(t *strings.Builder) string {
	if b.action == "relayed" {
		t.WriteString(wrapText("Your message was passed on to the recipients below, as you asked to be told. "+
			"The server it went to does not report deliveries, so this is the last notice you will get "+
			"about them, whether the message reaches them or not.", "", ""))
	} else {
		t.WriteString(wrapText("Your message was delivered to the recipients below, as you asked to be told.", "", ""))
	}
	t.WriteString("\r\n")
	for _, o := range b.list {
		where := ""
		if b.r.RemoteMTA != "" {
			where = " by " + b.r.RemoteMTA
		}
		t.WriteString(wrapText("<"+cleanText(o.Rcpt, b.global)+">: "+b.action+where+".", "", ""))
	}
	t.WriteString("\r\n")
	t.WriteString(wrapText("The header of your message is returned below, after the delivery report.", "", ""))
	return t.String()
}

// deliveryStatus returns the machine-readable second part (RFC 3464
// section 2): the per-message fields, then one group per recipient, each
// ended by an empty line but the last.
func (b *bounce) deliveryStatus() string {
	var s strings.Builder
	field(&s, "Reporting-MTA", "dns; "+b.r.ReportingMTA)
	if b.tx.Params.EnvID != "" {
		field(&s, "Original-Envelope-Id", xtext(b.tx.Params.EnvID))
	}
	if !b.r.Arrival.IsZero() {
		field(&s, "Arrival-Date", b.r.Arrival.Format(time.RFC1123Z))
	}
	for _, o := range b.list {
		s.WriteString("\r\n")
		p := b.tx.RcptParams[o.Rcpt]
		if p.ORcpt != "" {
			field(&s, "Original-Recipient", b.originalRecipient(p.ORcptType, p.ORcpt))
		}
		field(&s, "Final-Recipient", b.address(o.Rcpt))
		field(&s, "Action", b.action)
		field(&s, "Status", o.Status())
		if b.r.RemoteMTA != "" {
			field(&s, "Remote-MTA", "dns; "+b.r.RemoteMTA)
		}
		if d := diagnostic(o); d != "" {
			field(&s, "Diagnostic-Code", "smtp; "+d)
		}
	}
	return s.String()
}

// address returns a Final-Recipient value: "rfc822; ADDR" for an ASCII
// address, "utf-8; ADDR" for another (RFC 6533 section 3), the address
// escaped as utf-8-addr-xtext outside message/global-delivery-status.
func (b *bounce) address(addr string) string {
	switch {
	case isASCII(addr):
		return "rfc822; " + cleanText(addr, false)
	case b.global:
		return "utf-8; " + cleanText(addr, true)
	}
	return "utf-8; " + utf8AddrXtext(addr)
}

// originalRecipient returns an Original-Recipient value from ORCPT's type
// and decoded address: "rfc822;ADDR" or "utf-8;ADDR" as the sender gave
// it, the address escaped as utf-8-addr-xtext where it cannot stay as it
// is (non-ASCII outside message/global-delivery-status).
func (b *bounce) originalRecipient(typ, addr string) string {
	if typ == "" {
		typ = "rfc822"
	}
	if isASCII(addr) || b.global {
		return typ + ";" + cleanText(addr, b.global)
	}
	return "utf-8;" + utf8AddrXtext(addr)
}

// diagnostic returns the reply for Diagnostic-Code: smtp; and the
// explanation, printable ASCII only (the reply code alone when there was
// no text, "" when there was no reply).
func diagnostic(o Outcome) string {
	if d := strings.TrimSpace(cleanText(o.Reply, false)); d != "" {
		return d
	}
	if o.Code != 0 {
		return fmt.Sprint(o.Code)
	}
	return ""
}

// maxLine is RFC 5322's limit on a line, CRLF excluded; foldAt is where
// lines are folded or wrapped when they can be.
const (
	maxLine = 998
	foldAt  = 78
)

// field writes a header-style field, folded at spaces to lines of foldAt
// octets where it can, and never past maxLine: a run of more than that
// with no space is cut with a fold (which adds a space to the value).
func field(w *strings.Builder, name, value string) {
	w.WriteString(wrapText(value, name+": ", " "))
}

// wrapText breaks text at spaces into CRLF-ended lines of at most foldAt
// octets where it can and maxLine octets in any case. The first line
// starts with first, the others with rest; a space where a line is broken
// stays at the start of the next line when rest is " " (a header fold, so
// unfolding gives the value back) and is dropped otherwise.
func wrapText(text, first, rest string) string {
	var out strings.Builder
	line := first
	fold := rest == " "
	for text != "" {
		room := foldAt - len(line)
		if len(text) <= room {
			line += text
			break
		}
		// The last space within reach, not counting a leading one.
		cut := -1
		if room > 0 {
			cut = strings.LastIndexByte(text[1:min(len(text), room+1)], ' ') + 1
			if cut == 0 {
				cut = -1
			}
		}
		if cut < 0 {
			// No space in reach: the first space, if it is within maxLine.
			if i := strings.IndexByte(text[1:], ' ') + 1; i > 0 && len(line)+i <= maxLine {
				cut = i
			} else if i <= 0 && len(line)+len(text) <= maxLine {
				line += text
				break
			} else {
				cut = maxLine - len(line)
				for cut > 1 && !utf8.RuneStart(text[cut]) {
					cut-- // do not split a UTF-8 sequence
				}
			}
		}
		out.WriteString(line + text[:cut] + "\r\n")
		text = text[cut:]
		if fold {
			if text != "" && text[0] == ' ' {
				line = ""
			} else {
				line = " "
			}
		} else {
			text = strings.TrimPrefix(text, " ")
			line = rest
		}
	}
	out.WriteString(line + "\r\n")
	return out.String()
}

// cleanText returns s with every byte that could break a line or a field
// replaced by '?': control characters, and bytes past ASCII unless
// allowUTF8 and they are valid UTF-8.
func cleanText(s string, allowUTF8 bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError, r < ' ', r == 0x7f, r >= 0x80 && (!allowUTF8 || r < 0xa0):
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// xtext encodes s as RFC 3461 section 4 xtext: '+', '=' and every byte
// outside '!'..'~' as "+HH".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// utf8AddrXtext encodes an address as RFC 6533's utf-8-addr-xtext, which
// is ASCII: every character but the printable ones other than '+', '=' and
// '\\' as \x{HEX}.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > ' ' && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "\\x{%X}", r)
		}
	}
	return b.String()
}

// pickBoundary returns a random boundary that occurs nowhere in the
// notification's parts, and whether the returned part holds bytes past
// ASCII. It reads the returned content once (from its spool) to know.
func (b *bounce) pickBoundary(text, status string) (string, bool, error) {
	for range 4 {
		var rnd [16]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return "", false, fmt.Errorf("bounce: make a MIME boundary: %w", err)
		}
		// "=_" cannot occur in quoted-printable text (RFC 2045 6.7).
		boundary := "=_sluice_" + hex.EncodeToString(rnd[:])
		if strings.Contains(text, boundary) || strings.Contains(status, boundary) {
			continue
		}
		s := &scan{needle: []byte(boundary)}
		if err := b.writeReturned(s); err != nil {
			return "", false, fmt.Errorf("bounce: read the original message %s: %w", b.tx.ID, err)
		}
		if !s.found {
			return boundary, s.eightBit, nil
		}
	}
	return "", false, errors.New("bounce: every random MIME boundary occurs in the message (it cannot happen by chance)")
}

// scan is a writer that notes whether what goes through it holds needle
// (across writes too) and bytes past ASCII.
type scan struct {
	needle   []byte
	tail     []byte // the last len(needle)-1 bytes written
	found    bool
	eightBit bool
}

func (s *scan) Write(p []byte) (int, error) {
	if !s.eightBit {
		for _, c := range p {
			if c >= 0x80 {
				s.eightBit = true
				break
			}
		}
	}
	if !s.found {
		seam := append(append([]byte(nil), s.tail...), p[:min(len(p), len(s.needle)-1)]...)
		s.found = bytes.Contains(seam, s.needle) || bytes.Contains(p, s.needle)
		keep := len(s.needle) - 1
		s.tail = append(s.tail, p[max(0, len(p)-keep):]...)
		s.tail = s.tail[max(0, len(s.tail)-keep):]
	}
	return len(p), nil
}

// writeBody writes the multipart/report body to w.
func (b *bounce) writeBody(w io.Writer, boundary, text, status string, returned8bit bool) error {
	bw := bufio.NewWriter(w)
	delim := "--" + boundary + "\r\n"
	bw.WriteString("This is a delivery status notification in MIME format (RFC 3464).\r\n\r\n")

	bw.WriteString(delim)
	bw.WriteString("Content-Description: Notification\r\n")
	if isASCII(text) {
		bw.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n")
	} else {
		bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	}
	bw.WriteString(text)

	bw.WriteString("\r\n" + delim)
	bw.WriteString("Content-Description: Delivery report\r\n")
	bw.WriteString("Content-Type: message/" + b.statusType() + "\r\n")
	if !isASCII(status) {
		bw.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	}
	bw.WriteString("\r\n")
	bw.WriteString(status)

	bw.WriteString("\r\n" + delim)
	if b.headersOnly {
		bw.WriteString("Content-Description: Undelivered message header\r\n")
	} else {
		bw.WriteString("Content-Description: Undelivered message\r\n")
	}
	bw.WriteString("Content-Type: " + b.returnedType() + "\r\n")
	if returned8bit {
		bw.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	}
	bw.WriteString("\r\n")
	// The delimiter's leading CRLF belongs to the delimiter (RFC 2046
	// 5.1.1), so the part's content is the original byte for byte.
	if err := b.writeReturned(bw); err != nil {
		return err
	}
	bw.WriteString("\r\n--" + boundary + "--\r\n")
	return bw.Flush()
}
