// Package command is the one parser of the SMTP protocol loop: command
// lines (verb and argument), HELO/EHLO names, BDAT arguments, the
// attributes of XCLIENT, and the arguments of MAIL and RCPT (RFC 5321
// 4.1.2 and 4.1.1.11, RFC 6531 for SMTPUTF8, RFC 3461 for DSN).
// Addresses are parsed strictly, for a front-end that hands them to
// plugins and queues: no NUL, CR or stray 8-bit bytes, one '@', quotes
// kept. Everything here is a hand-written, single-pass scanner over the
// argument: linear time, no regexps, no allocation beyond the results.
// A refusal is an *Error that carries the reply to give.
package command

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Mail is a parsed MAIL FROM argument.
type Mail struct {
	Sender string // reverse-path without brackets; "" for the null sender <>
	Size   int64  // SIZE=, 0 when absent
	Body   string // "7BIT", "8BITMIME" or ""
	UTF8   bool   // SMTPUTF8 given
	Auth   string // AUTH= value (xtext-decoded), "" when absent
	Ret    string // DSN RET=: "FULL", "HDRS" or ""
	EnvID  string // DSN ENVID= (xtext-decoded), "" when absent
}

// Rcpt is a parsed RCPT TO argument.
type Rcpt struct {
	Rcpt string // forward-path without brackets, source route removed; "Postmaster" for <Postmaster>
	// DSN parameters (RFC 3461), only with dsn set.
	Notify    []string // NOTIFY=: nil, ["NEVER"] or SUCCESS, FAILURE, DELAY
	ORcptType string   // ORCPT= address type, lower case: "rfc822" or "utf-8"
	ORcpt     string   // ORCPT= address, decoded
}

// Error is a refusal with the reply to give: Code 501/553/555,
// Enhanced, Msg.
type Error struct {
	Code     int
	Enhanced [3]int
	Msg      string
}

// Error formats the refusal as the reply line would read (without CRLF).
func (e *Error) Error() string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Msg)
}

// Limits of RFC 5321 4.5.3.1.
const (
	addrMaxLocal  = 64  // local part, octets
	addrMaxDomain = 255 // domain, octets
	addrMaxPath   = 256 // path including the angle brackets
	addrMaxLabel  = 63  // one domain label
	addrMaxSize   = 19  // digits of a SIZE value (int64)
	addrMaxEcho   = 32  // octets of a parameter keyword echoed in a reply
	addrMaxAuth   = 256 // decoded AUTH= value: a mailbox or "<>"
	addrMaxEnvID  = 100 // decoded ENVID= (RFC 3461 4.4)
	addrMaxORcpt  = 500 // ORCPT= as sent (RFC 3461 4.2)
)

func addrErr(code, class, subject, detail int, msg string) *Error {
	return &Error{Code: code, Enhanced: [3]int{class, subject, detail}, Msg: msg}
}

func addrBad(msg string) *Error { return addrErr(553, 5, 1, 3, msg) }

func addrParamErr(msg string) *Error { return addrErr(501, 5, 5, 4, msg) }

func addrUnsupported(key string) *Error {
	return addrErr(555, 5, 5, 4, "Unsupported parameter "+addrEcho(key))
}

// addrEcho upper-cases a (syntactically valid, so ASCII) keyword for a reply
// and bounds its length.
func addrEcho(key string) string {
	if len(key) > addrMaxEcho {
		key = key[:addrMaxEcho]
	}
	return strings.ToUpper(key)
}

// ParseMail parses what follows "MAIL " (e.g.
// "FROM:<a@b.example> SIZE=100 BODY=8BITMIME"). RET and ENVID are
// accepted only with dsn (the listener offers DSN); without it they are
// unsupported parameters (555).
func ParseMail(arg string, dsn bool) (Mail, error) {
	var m Mail
	path, rest, err := addrSplit(arg, "FROM:", "Syntax: MAIL FROM:<address>")
	if err != nil {
		return m, err
	}
	params := addrTokens(rest)
	// SMTPUTF8 on this very command is what permits 8-bit anywhere in it;
	// a malformed SMTPUTF8 (with a value) is refused below with the other
	// parameters, so a success never rests on it.
	for _, p := range params {
		if addrEqualFold(p.key, "SMTPUTF8") {
			m.UTF8 = true
		}
	}
	if err := addr8bit(arg, m.UTF8); err != nil {
		return Mail{}, err
	}
	if path != "" { // "<>" is the null reverse-path
		addr, _, err := addrParsePath(path, m.UTF8, false)
		if err != nil {
			return Mail{}, err
		}
		m.Sender = addr
	}

	var seenSize, seenBody, seenUTF8, seenAuth, seenRet, seenEnvID bool
	for _, p := range params {
		if err := addrCheckParam(p, m.UTF8); err != nil {
			return Mail{}, err
		}
		var seen *bool
		switch strings.ToUpper(p.key) {
		case "SIZE":
			seen = &seenSize
			if !p.hasValue || len(p.value) > addrMaxSize || !addrDigits(p.value) {
				return Mail{}, addrParamErr("Bad SIZE value")
			}
			n, err := strconv.ParseInt(p.value, 10, 64)
			if err != nil {
				return Mail{}, addrParamErr("Bad SIZE value")
			}
			m.Size = n
		case "BODY":
			seen = &seenBody
			switch {
			case !p.hasValue:
				return Mail{}, addrParamErr("BODY requires a value")
			case addrEqualFold(p.value, "7BIT"):
				m.Body = "7BIT"
			case addrEqualFold(p.value, "8BITMIME"):
				m.Body = "8BITMIME"
			default:
				return Mail{}, addrErr(555, 5, 5, 4, "Unsupported BODY value")
			}
		case "SMTPUTF8":
			if p.hasValue {
				return Mail{}, addrParamErr("SMTPUTF8 takes no value")
			}
			// An exact repeat of a parameter without a value says nothing
			// new: Python's smtplib sends "SMTPUTF8 SMTPUTF8" from
			// send_message(mail_options=["SMTPUTF8"]), and Postfix takes it.
			seenUTF8 = false
			seen = &seenUTF8
		case "RET":
			if !dsn {
				return Mail{}, addrUnsupported(p.key)
			}
			seen = &seenRet
			switch {
			case addrEqualFold(p.value, "FULL"):
				m.Ret = "FULL"
			case addrEqualFold(p.value, "HDRS"):
				m.Ret = "HDRS"
			default:
				return Mail{}, addrParamErr("Bad RET value: FULL or HDRS")
			}
		case "ENVID":
			if !dsn {
				return Mail{}, addrUnsupported(p.key)
			}
			seen = &seenEnvID
			v, ok := addrXtext(p.value, false)
			if !p.hasValue || !ok || len(v) > addrMaxEnvID || !addrPrintable(v) {
				return Mail{}, addrParamErr("Bad ENVID value")
			}
			m.EnvID = v
		case "AUTH":
			seen = &seenAuth
			v, ok := addrXtext(p.value, m.UTF8)
			if !p.hasValue || !ok {
				return Mail{}, addrParamErr("Bad AUTH value")
			}
			m.Auth = v
		default:
			return Mail{}, addrUnsupported(p.key)
		}
		if *seen {
			return Mail{}, addrParamErr("Duplicate parameter " + addrEcho(p.key))
		}
		*seen = true
	}
	return m, nil
}

// ParseRcpt parses what follows "RCPT " (e.g. "TO:<b@c.example>"); utf8
// is whether the transaction's MAIL had SMTPUTF8; strictRouting refuses %
// and ! in the local part (for clients that are neither authenticated nor
// relay clients); dsn accepts NOTIFY and ORCPT (the listener offers DSN).
func ParseRcpt(arg string, utf8, strictRouting, dsn bool) (Rcpt, error) {
	path, rest, err := addrSplit(arg, "TO:", "Syntax: RCPT TO:<address>")
	if err != nil {
		return Rcpt{}, err
	}
	params := addrTokens(rest)
	if err := addr8bit(arg, utf8); err != nil {
		return Rcpt{}, err
	}
	if path == "" {
		return Rcpt{}, addrBad("Bad address syntax: empty recipient")
	}
	addr, local, err := addrParsePath(path, utf8, true)
	if err != nil {
		return Rcpt{}, err
	}
	if strictRouting && strings.ContainsAny(local, "%!") {
		return Rcpt{}, addrErr(553, 5, 7, 1, "Source routing with % or ! is not accepted")
	}
	// DSN's NOTIFY and ORCPT are the only RCPT parameters Sluice knows,
	// and only where DSN is offered.
	r := Rcpt{Rcpt: addr}
	var seenNotify, seenORcpt bool
	for _, p := range params {
		if err := addrCheckParam(p, utf8); err != nil {
			return Rcpt{}, err
		}
		switch {
		case dsn && addrEqualFold(p.key, "NOTIFY"):
			if seenNotify {
				return Rcpt{}, addrParamErr("Duplicate parameter NOTIFY")
			}
			seenNotify = true
			n, ok := addrNotify(p.value)
			if !p.hasValue || !ok {
				return Rcpt{}, addrParamErr("Bad NOTIFY value: NEVER, or SUCCESS, FAILURE and DELAY separated by commas")
			}
			r.Notify = n
		case dsn && addrEqualFold(p.key, "ORCPT"):
			if seenORcpt {
				return Rcpt{}, addrParamErr("Duplicate parameter ORCPT")
			}
			seenORcpt = true
			typ, v, err := addrORcpt(p.value, utf8)
			if !p.hasValue || err != nil {
				if err == nil {
					err = addrParamErr("Bad ORCPT value")
				}
				return Rcpt{}, err
			}
			r.ORcptType, r.ORcpt = typ, v
		default:
			return Rcpt{}, addrUnsupported(p.key)
		}
	}
	return r, nil
}

// addrNotify parses NOTIFY's value (RFC 3461 4.1): NEVER alone, or one or
// more of SUCCESS, FAILURE and DELAY, each at most once, any case.
func addrNotify(v string) ([]string, bool) {
	if addrEqualFold(v, "NEVER") {
		return []string{"NEVER"}, true
	}
	var out []string
	for kw := range strings.SplitSeq(v, ",") {
		var k string
		switch {
		case addrEqualFold(kw, "SUCCESS"):
			k = "SUCCESS"
		case addrEqualFold(kw, "FAILURE"):
			k = "FAILURE"
		case addrEqualFold(kw, "DELAY"):
			k = "DELAY"
		default:
			return nil, false
		}
		for _, o := range out {
			if o == k {
				return nil, false
			}
		}
		out = append(out, k)
	}
	return out, len(out) > 0
}

// addrORcpt parses ORCPT's value, addr-type ";" xtext (RFC 3461 4.2):
// the type rfc822 with an xtext address, or utf-8 (RFC 6533) whose
// address may hold UTF-8 under SMTPUTF8 and \x{HEX} escapes. The decoded
// address must be printable, with no control character.
func addrORcpt(v string, allow8 bool) (typ, addr string, err error) {
	if len(v) > addrMaxORcpt {
		return "", "", addrParamErr("ORCPT value too long")
	}
	typ, raw, ok := strings.Cut(v, ";")
	if !ok || raw == "" {
		return "", "", addrParamErr("Bad ORCPT value: want rfc822;address")
	}
	switch {
	case addrEqualFold(typ, "rfc822"):
		a, ok := addrXtext(raw, allow8)
		if !ok || !addrPrintable8(a) {
			return "", "", addrParamErr("Bad ORCPT address")
		}
		return "rfc822", a, nil
	case addrEqualFold(typ, "utf-8"):
		a, ok := addrUTF8Xtext(raw, allow8)
		if !ok {
			return "", "", addrParamErr("Bad ORCPT address")
		}
		return "utf-8", a, nil
	}
	return "", "", addrErr(501, 5, 5, 4, "Unsupported ORCPT address type: rfc822 or utf-8")
}

// addrUTF8Xtext decodes utf-8-addr-xtext (RFC 6533 3): printable ASCII
// except '+', '=', '\\' and controls, UTF-8 (with allow8), and \x{HEX}
// escapes of Unicode scalar values that are not controls.
func addrUTF8Xtext(v string, allow8 bool) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(v); {
		c := v[i]
		switch {
		case c == '\\':
			rest := v[i+1:]
			if !strings.HasPrefix(rest, "x{") {
				return "", false
			}
			end := strings.IndexByte(rest, '}')
			if end < 3 || end > 8 {
				return "", false
			}
			n, err := strconv.ParseUint(rest[2:end], 16, 32)
			r := rune(n)
			if err != nil || !utf8.ValidRune(r) || r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
				return "", false
			}
			b.WriteRune(r)
			i += 1 + end + 1
		case c >= 0x80:
			if !allow8 {
				return "", false
			}
			r, size := utf8.DecodeRuneInString(v[i:])
			if r == utf8.RuneError || r <= 0x9f {
				return "", false
			}
			b.WriteRune(r)
			i += size
		case c < 33 || c > 126 || c == '+' || c == '=':
			return "", false
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), b.Len() > 0
}

// addrPrintable reports whether s is printable ASCII (ENVID, RFC 3461 4.4).
func addrPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// addrPrintable8 is addrPrintable that also lets UTF-8 through (already
// checked by addrXtext).
func addrPrintable8(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// addrSplit refuses control bytes, checks the verb's keyword ("FROM:",
// "TO:", any case, one optional space after the colon) and splits the rest
// into the path between the angle brackets and what follows the closing
// bracket (empty or starting with a space).
func addrSplit(arg, keyword, usage string) (path, rest string, err error) {
	for i := 0; i < len(arg); i++ {
		if c := arg[i]; c < 0x20 || c == 0x7f {
			return "", "", addrErr(501, 5, 5, 2, "Control characters are not allowed")
		}
	}
	if len(arg) < len(keyword) || !addrEqualFold(arg[:len(keyword)], keyword) {
		return "", "", addrErr(501, 5, 5, 2, usage)
	}
	s := strings.TrimPrefix(arg[len(keyword):], " ")
	if !strings.HasPrefix(s, "<") {
		return "", "", addrErr(501, 5, 5, 2, usage)
	}
	// The path ends at the first '>' outside a quoted string: qtextSMTP
	// includes '>'.
	end, quoted := -1, false
scan:
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '>':
			end = i
			break scan
		}
	}
	if end < 0 {
		return "", "", addrErr(501, 5, 5, 2, usage)
	}
	path, rest = s[1:end], s[end+1:]
	if rest != "" && rest[0] != ' ' {
		return "", "", addrErr(501, 5, 5, 2, usage)
	}
	return path, rest, nil
}

// addr8bit enforces RFC 6531: bytes >= 0x80 only with SMTPUTF8, and then
// only as valid UTF-8 with no C1 control characters.
func addr8bit(arg string, allow bool) error {
	i := 0
	for i < len(arg) && arg[i] < 0x80 {
		i++
	}
	if i == len(arg) {
		return nil
	}
	if !allow {
		return addrErr(553, 5, 6, 7, "Non-ASCII address requires SMTPUTF8")
	}
	if !utf8.ValidString(arg) {
		return addrErr(553, 5, 6, 7, "Non-ASCII address must be valid UTF-8")
	}
	for _, r := range arg[i:] {
		if r >= 0x80 && r <= 0x9f {
			return addrErr(501, 5, 5, 2, "Control characters are not allowed")
		}
	}
	return nil
}

// addrParsePath parses a non-empty path (between the brackets): an optional
// source route, which it drops, and a Mailbox. It returns the mailbox as
// given and its local part. With rcpt, a bare "Postmaster" (any case) is
// accepted and returned as "Postmaster".
func addrParsePath(path string, allow8, rcpt bool) (addr, local string, err error) {
	if len(path)+2 > addrMaxPath {
		return "", "", addrErr(501, 5, 1, 3, "Address too long")
	}
	mbox := path
	if path[0] == '@' {
		// A-d-l = At-domain *( "," At-domain ) ":"; domains hold no ':'.
		colon := strings.IndexByte(path, ':')
		if colon < 0 {
			return "", "", addrBad("Bad address syntax: bad source route")
		}
		for _, hop := range strings.Split(path[:colon], ",") {
			if len(hop) < 2 || hop[0] != '@' || !addrDomainOK(hop[1:], allow8) {
				return "", "", addrBad("Bad address syntax: bad source route")
			}
		}
		mbox = path[colon+1:]
		if mbox == "" {
			return "", "", addrBad("Bad address syntax")
		}
	}

	var n int
	var ok, quotedAt bool
	if mbox[0] == '"' {
		n, quotedAt, ok = addrQuoted(mbox, allow8)
	} else {
		n, ok = addrDotString(mbox, allow8)
	}
	if !ok {
		return "", "", addrBad("Bad address syntax")
	}
	local = mbox[:n]
	if n == len(mbox) { // no domain
		if rcpt && len(mbox) == len(path) && addrEqualFold(local, "Postmaster") {
			return "Postmaster", "Postmaster", nil
		}
		return "", "", addrBad("Bad address syntax: domain required")
	}
	if len(local) > addrMaxLocal {
		return "", "", addrErr(501, 5, 1, 3, "Address too long")
	}
	if mbox[n] != '@' {
		return "", "", addrBad("Bad address syntax")
	}
	domain := mbox[n+1:]
	if len(domain) > addrMaxDomain {
		return "", "", addrErr(501, 5, 1, 3, "Address too long")
	}
	if domain == "" {
		return "", "", addrBad("Bad address syntax: domain required")
	}
	if domain[0] == '[' {
		ok = addrLiteralOK(domain)
	} else {
		ok = addrDomainOK(domain, allow8)
	}
	if !ok {
		return "", "", addrBad("Bad address syntax")
	}
	if quotedAt {
		// "relay@elsewhere"@here is a relay trick once the quotes are
		// lost somewhere downstream.
		return "", "", addrBad("Bad address syntax: @ in quoted local part")
	}
	return mbox, local, nil
}

// addrDotString scans a Dot-string at the start of s and returns its
// length; ok is false for an empty atom (leading, trailing or double dot).
func addrDotString(s string, allow8 bool) (n int, ok bool) {
	for {
		start := n
		for n < len(s) && addrAtext(s[n], allow8) {
			n++
		}
		if n == start {
			return n, false
		}
		if n < len(s) && s[n] == '.' {
			n++
			continue
		}
		return n, true
	}
}

// addrQuoted scans a Quoted-string at the start of s (s[0] == '"') and
// returns its length including both quotes, and whether it holds an '@'
// (literal or quoted-pair). An empty quoted string is refused: the grammar
// allows it but no mailbox should be named "".
func addrQuoted(s string, allow8 bool) (n int, hasAt, ok bool) {
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return i + 1, hasAt, i > 1
		case c == '\\': // quoted-pairSMTP = %d92 %d32-126
			if i+1 >= len(s) || s[i+1] < 0x20 || s[i+1] > 0x7e {
				return 0, false, false
			}
			i++
			hasAt = hasAt || s[i] == '@'
		case c >= 0x20 && c <= 0x7e: // qtextSMTP: %d32-33 / %d35-91 / %d93-126
			hasAt = hasAt || c == '@'
		case c >= 0x80 && allow8: // RFC 6531 UTF8-non-ascii
		default:
			return 0, false, false
		}
	}
	return 0, false, false // unterminated
}

// addrAtext reports whether c is atext (RFC 5322), or part of a UTF-8
// sequence when allow8.
func addrAtext(c byte, allow8 bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c >= 0x80:
		return allow8
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// addrDomainOK reports whether d is a Domain: dot-separated labels of
// letters, digits and inner hyphens (plus UTF-8 with allow8), each 1 to 63
// octets.
func addrDomainOK(d string, allow8 bool) bool {
	if d == "" || len(d) > addrMaxDomain {
		return false
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > addrMaxLabel || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
			case c >= 0x80 && allow8:
			default:
				return false
			}
		}
	}
	return true
}

// addrLiteralOK reports whether d is "[IPv4]" or "[IPv6:addr]" (no zone).
// General address literals (other tags) are refused.
func addrLiteralOK(d string) bool {
	if len(d) < 2 || d[0] != '[' || d[len(d)-1] != ']' {
		return false
	}
	lit := d[1 : len(d)-1]
	if len(lit) >= 5 && addrEqualFold(lit[:5], "IPv6:") {
		a, err := netip.ParseAddr(lit[5:])
		return err == nil && a.Is6() && a.Zone() == ""
	}
	a, err := netip.ParseAddr(lit)
	return err == nil && a.Is4()
}

// addrParam is one ESMTP parameter: KEY or KEY=VALUE.
type addrParam struct {
	key, value string
	hasValue   bool
}

// addrTokens splits what follows the closing bracket into parameters
// separated by one or more spaces. It does not check their syntax.
func addrTokens(rest string) []addrParam {
	var ps []addrParam
	for tok := range strings.SplitSeq(rest, " ") {
		if tok == "" {
			continue
		}
		key, value, has := strings.Cut(tok, "=")
		ps = append(ps, addrParam{key: key, value: value, hasValue: has})
	}
	return ps
}

// addrCheckParam checks a parameter's syntax (RFC 5321 4.1.2):
// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"),
// esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8.
func addrCheckParam(p addrParam, allow8 bool) error {
	if p.key == "" || p.key[0] == '-' {
		return addrParamErr("Bad parameter syntax")
	}
	for i := 0; i < len(p.key); i++ {
		c := p.key[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return addrParamErr("Bad parameter syntax")
		}
	}
	if !p.hasValue {
		return nil
	}
	if p.value == "" {
		return addrParamErr("Bad parameter syntax")
	}
	for i := 0; i < len(p.value); i++ {
		c := p.value[i]
		if !(c >= 33 && c <= 126 && c != '=' || c >= 0x80 && allow8) {
			return addrParamErr("Bad parameter syntax")
		}
	}
	return nil
}

// addrXtext decodes xtext (RFC 3461 4): "!" to "~" except "+" and "=", and
// "+" followed by two hexadecimal digits (either case is accepted). The
// decoded value must hold no control character, 8-bit only as valid UTF-8
// under SMTPUTF8, and at most addrMaxAuth octets.
func addrXtext(v string, allow8 bool) (string, bool) {
	if v == "" {
		return "", false
	}
	if strings.IndexByte(v, '+') < 0 {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 33 || c > 126 || c == '=' {
				return "", false
			}
		}
		return v, len(v) <= addrMaxAuth
	}
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '+':
			if i+2 >= len(v) {
				return "", false
			}
			hi, ok1 := addrHex(v[i+1])
			lo, ok2 := addrHex(v[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			c = hi<<4 | lo
			if c < 0x20 || c == 0x7f {
				return "", false
			}
			i += 2
		case c < 33 || c > 126 || c == '=':
			return "", false
		}
		b.WriteByte(c)
	}
	s := b.String()
	if len(s) > addrMaxAuth {
		return "", false
	}
	if err := addr8bit(s, allow8); err != nil {
		return "", false
	}
	return s, true
}

func addrHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func addrDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// addrEqualFold is strings.EqualFold for ASCII only: no Unicode folding
// (the Kelvin sign is not a K here).
func addrEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Split splits a command line (without its CRLF) into the verb,
// upper-cased, and its argument, with the spaces around it removed. Only
// ASCII space and tab separate: a Unicode space is part of the argument.
func Split(line string) (verb, arg string) {
	verb, arg, _ = strings.Cut(line, " ")
	return Upper(verb), strings.Trim(arg, " \t")
}

// Upper upper-cases ASCII letters only, allocating only when it
// changes something.
func Upper(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'a' <= c && c <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'a' <= b[j] && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// HeloName returns the name HELO or EHLO gives: the first word of the
// argument (RFC 5321: Domain or address-literal; anything after it is
// ignored, as Postfix does), and whether it may be used: at most 255
// octets, with no byte that would reach the Received header and the logs
// as garbage: control characters (C0, DEL, C1 such as U+0085), line and
// paragraph separators (U+2028, U+2029), bidirectional controls, and
// bytes that are not UTF-8. Whether it is a well-formed domain is policy,
// for a helo plugin to judge.
func HeloName(arg string) (string, bool) {
	name, _, _ := strings.Cut(arg, " ")
	if len(name) > 255 || !utf8.ValidString(name) {
		return name, false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c == 0x7f {
			return name, false
		}
	}
	for _, r := range name {
		switch {
		case r < 0x80:
		case r <= 0x9f, r == 0x2028, r == 0x2029, r == 0x061c,
			r >= 0x200e && r <= 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0xfeff:
			return name, false
		}
	}
	return name, true
}

// ParseBdat parses BDAT's argument (RFC 3030 2): the chunk size in octets
// and an optional LAST, any case. ok is false for anything else: the size
// of the chunk that follows is then unknown.
func ParseBdat(arg string) (size int64, last, ok bool) {
	num, rest, _ := strings.Cut(arg, " ")
	rest = strings.Trim(rest, " ")
	switch {
	case rest == "":
	case addrEqualFold(rest, "LAST"):
		last = true
	default:
		return 0, false, false
	}
	if !addrDigits(num) || len(num) > addrMaxSize {
		return 0, false, false
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, false, false
	}
	return n, last, true
}
