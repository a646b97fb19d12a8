package queue_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"mime"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/transaction"
)

// dsnPart is one body part of a parsed notification, its body as raw
// bytes (no transfer decoding).
type dsnPart struct {
	header textproto.Header
	body   []byte
}

// parsedDSN is a notification taken apart with go-message's textproto
// reader: its header, and its parts as bytes.
type parsedDSN struct {
	raw    []byte
	header textproto.Header
	params map[string]string
	parts  []dsnPart
}

// readDSN returns the whole notification as a queue would write it.
func readDSN(t *testing.T, dsn *transaction.Transaction) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := dsn.WriteTo(&b); err != nil {
		t.Fatalf("write the notification: %v", err)
	}
	if int64(b.Len()) != dsn.MessageSize() || dsn.Size != dsn.MessageSize() {
		t.Errorf("notification: %d bytes written, MessageSize %d, Size %d", b.Len(), dsn.MessageSize(), dsn.Size)
	}
	return b.Bytes()
}

// parseDSN walks the notification: multipart/report with three parts.
func parseDSN(t *testing.T, raw []byte) parsedDSN {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("read the notification's header: %v\n%s", err, raw)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		t.Fatalf("Content-Type %q (%v), want multipart/report", h.Get("Content-Type"), err)
	}
	p := parsedDSN{raw: raw, header: h, params: params}
	mr := textproto.NewMultipartReader(br, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		var body bytes.Buffer
		if _, err := body.ReadFrom(part); err != nil {
			t.Fatalf("read part %d: %v", len(p.parts)+1, err)
		}
		p.parts = append(p.parts, dsnPart{header: part.Header, body: body.Bytes()})
	}
	if len(p.parts) != 3 {
		t.Fatalf("notification has %d parts, want 3:\n%s", len(p.parts), raw)
	}
	// The same bytes through go-message's high-level reader, as a mail
	// client built on it would read them.
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("go-message cannot read the notification: %v", err)
	}
	n := 0
	if err := e.Walk(func(path []int, e *message.Entity, err error) error { n++; return err }); err != nil {
		t.Fatalf("go-message cannot walk the notification: %v", err)
	}
	if n != 4 {
		t.Errorf("go-message walked %d entities, want 4 (the report and its 3 parts)", n)
	}
	return p
}

// contentType returns a part's media type.
func (p dsnPart) contentType(t *testing.T) string {
	t.Helper()
	mt, _, err := mime.ParseMediaType(p.header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("part Content-Type %q: %v", p.header.Get("Content-Type"), err)
	}
	return mt
}

// statusGroups splits a delivery-status body into its field groups (the
// per-message one first), each field's value unfolded by removing the
// CRLFs of its folds (RFC 5322 3.2.2) and nothing else, so values compare
// byte for byte.
func statusGroups(t *testing.T, body []byte) []map[string]string {
	t.Helper()
	var groups []map[string]string
	for _, block := range strings.Split(string(body), "\r\n\r\n") {
		if !strings.HasSuffix(block, "\r\n") {
			block += "\r\n"
		}
		h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(block + "\r\n")))
		if err != nil {
			t.Fatalf("go-message cannot read the delivery-status group %q: %v", block, err)
		}
		g := map[string]string{}
		fields := h.Fields()
		for fields.Next() {
			raw, err := fields.Raw()
			if err != nil {
				t.Fatal(err)
			}
			name, value, _ := strings.Cut(strings.ReplaceAll(strings.TrimSuffix(string(raw), "\r\n"), "\r\n", ""), ":")
			if _, dup := g[name]; dup {
				t.Errorf("field %s twice in a delivery-status group", name)
			}
			g[name] = strings.TrimPrefix(value, " ")
		}
		groups = append(groups, g)
	}
	return groups
}

// checkLines fails the test when a line of raw does not end in CRLF or is
// longer than 998 octets.
func checkLines(t *testing.T, raw []byte) {
	t.Helper()
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		t.Errorf("notification does not end in CRLF")
	}
	for i, line := range bytes.Split(bytes.TrimSuffix(raw, []byte("\r\n")), []byte("\r\n")) {
		if len(line) > 998 {
			t.Errorf("line %d is %d octets, over 998: %.80q...", i+1, len(line), line)
		}
		if bytes.ContainsAny(line, "\r\n") {
			t.Errorf("line %d has a bare CR or LF: %q", i+1, line)
		}
	}
}

// dsnTx is a transaction as the queue has it after a handoff: the body
// spooled to a file past 64 bytes, so the notification's spool does too.
func dsnTx(t *testing.T, sender string, rcpts []string, msg string) *transaction.Transaction {
	t.Helper()
	tx := newTx(t, sender, rcpts, msg, 64)
	tx.Started = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return tx
}

// refused is the downstream's 5xx outcome for rcpt.
func refused(rcpt string) queue.Outcome {
	return queue.Outcome{Rcpt: rcpt, Permanent: true, Code: 550, Enhanced: [3]int{5, 1, 1},
		Reply: "550 5.1.1 <" + rcpt + ">: Recipient address rejected: User unknown in local recipient table"}
}

func bounce(t *testing.T, tx *transaction.Transaction, r queue.Report) (*transaction.Transaction, []byte) {
	t.Helper()
	dsn, err := queue.Bounce(tx, r)
	if err != nil {
		t.Fatalf("Bounce: %v", err)
	}
	if dsn == nil {
		t.Fatal("Bounce returned no notification")
	}
	t.Cleanup(func() { dsn.Close() })
	return dsn, readDSN(t, dsn)
}

func TestBounceReportsFailedRecipients(t *testing.T) {
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test", "carol@example.test", "dave@example.test", "erin@example.test", "frank@example.test"}, testMessage)
	tx.Params.EnvID = "QQ314159 +x=y"
	tx.RcptParams = map[string]transaction.RcptParams{
		"carol@example.test": {Notify: []string{"SUCCESS"}},
		"dave@example.test":  {Notify: []string{"SUCCESS", "FAILURE"}, ORcptType: "rfc822", ORcpt: "Dave.Original@example.net"},
		"erin@example.test":  {Notify: []string{"NEVER"}},
	}
	dave := queue.Outcome{Rcpt: "dave@example.test", Permanent: true, Code: 554, Reply: "554 no thanks"}
	dsn, raw := bounce(t, tx, queue.Report{
		ReportingMTA: "mx.example.test",
		RemoteMTA:    "lmtp.example.test",
		Failed: []queue.Outcome{
			refused("bob@example.test"), refused("carol@example.test"), dave, refused("erin@example.test"),
			{Rcpt: "frank@example.test", Delivered: true, Code: 250, Reply: "250 2.0.0 Ok"},
		},
	})
	checkLines(t, raw)

	if dsn.Sender != "" || len(dsn.Recipients) != 1 || dsn.Recipients[0] != "alice@example.org" {
		t.Errorf("envelope: from <%s> to %q, want from <> to [alice@example.org]", dsn.Sender, dsn.Recipients)
	}
	if dsn.Params.UTF8 || dsn.Params.Body != "" {
		t.Errorf("params %+v: want neither SMTPUTF8 nor 8BITMIME for an ASCII notification", dsn.Params)
	}
	if dsn.Body.InMemory() {
		t.Errorf("the notification's body stayed in memory past the original's 64-byte spool threshold")
	}

	p := parseDSN(t, raw)
	h := mail.Header{Header: message.Header{Header: p.header}}
	for name, want := range map[string]string{
		"From":           `"Mail Delivery System" <MAILER-DAEMON@mx.example.test>`,
		"To":             "<alice@example.org>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if id := h.Get("Message-ID"); !regexp.MustCompile(`^<[^@<> ]+@mx\.example\.test>$`).MatchString(id) {
		t.Errorf("Message-ID %q, want <id@mx.example.test>", id)
	}
	if d, err := h.Date(); err != nil || time.Since(d) > time.Minute || time.Until(d) > time.Minute {
		t.Errorf("Date %q (%v): want now", h.Get("Date"), err)
	}
	if p.params["report-type"] != "delivery-status" || len(p.params["boundary"]) < 32 {
		t.Errorf("Content-Type parameters %q: want report-type=delivery-status and a long random boundary", p.params)
	}

	text := p.parts[0]
	if ct := text.contentType(t); ct != "text/plain" {
		t.Errorf("part 1 is %s, want text/plain", ct)
	}
	for _, want := range []string{"mx.example.test", "<bob@example.test>: lmtp.example.test refused it", refused("bob@example.test").Reply, "<dave@example.test>", "554 no thanks", "Your message is returned below"} {
		if !strings.Contains(strings.ReplaceAll(string(text.body), "\r\n    ", " "), want) {
			t.Errorf("the explanation lacks %q:\n%s", want, text.body)
		}
	}
	for _, unwanted := range []string{"carol", "erin", "frank"} {
		if strings.Contains(string(text.body), unwanted) {
			t.Errorf("the explanation names %s, who did not ask for a failure notice or was delivered:\n%s", unwanted, text.body)
		}
	}

	status := p.parts[1]
	if ct := status.contentType(t); ct != "message/delivery-status" {
		t.Errorf("part 2 is %s, want message/delivery-status", ct)
	}
	groups := statusGroups(t, status.body)
	want := []map[string]string{
		{
			"Reporting-MTA":        "dns; mx.example.test",
			"Original-Envelope-Id": "QQ314159+20+2Bx+3Dy",
			"Arrival-Date":         "Fri, 02 Jan 2026 03:04:05 +0000",
		},
		{
			"Final-Recipient": "rfc822; bob@example.test",
			"Action":          "failed",
			"Status":          "5.1.1",
			"Remote-MTA":      "dns; lmtp.example.test",
			"Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown in local recipient table",
		},
		{
			"Original-Recipient": "rfc822;Dave.Original@example.net",
			"Final-Recipient":    "rfc822; dave@example.test",
			"Action":             "failed",
			"Status":             "5.0.0",
			"Remote-MTA":         "dns; lmtp.example.test",
			"Diagnostic-Code":    "smtp; 554 no thanks",
		},
	}
	if len(groups) != len(want) {
		t.Fatalf("delivery-status has %d groups, want %d (per-message, bob, dave):\n%s", len(groups), len(want), status.body)
	}
	for i := range want {
		for name, v := range want[i] {
			if groups[i][name] != v {
				t.Errorf("group %d %s: %q, want %q", i, name, groups[i][name], v)
			}
		}
		if len(groups[i]) != len(want[i]) {
			t.Errorf("group %d has fields %q, want only %q", i, groups[i], want[i])
		}
	}
	// The short fields are on one line, exactly as programs grep them.
	for _, line := range []string{"Final-Recipient: rfc822; bob@example.test\r\n", "Action: failed\r\n", "Status: 5.1.1\r\n", "Original-Recipient: rfc822;Dave.Original@example.net\r\n", "Original-Envelope-Id: QQ314159+20+2Bx+3Dy\r\n"} {
		if !bytes.Contains(status.body, []byte(line)) {
			t.Errorf("delivery-status lacks the line %q:\n%s", line, status.body)
		}
	}

	orig := p.parts[2]
	if ct := orig.contentType(t); ct != "message/rfc822" {
		t.Errorf("part 3 is %s, want message/rfc822", ct)
	}
	if string(orig.body) != wantMessage(testMessage) {
		t.Errorf("returned message differs from the original:\n got %q\nwant %q", orig.body, wantMessage(testMessage))
	}
	checkWithPython(t, raw, pythonWant{
		ReportType: "delivery-status",
		Parts:      []string{"text/plain", "message/delivery-status", "message/rfc822"},
		Final:      []string{"rfc822; bob@example.test", "rfc822; dave@example.test"},
		Returned:   "hi\n\tfolded",
	})
}

func TestBounceRetHdrsReturnsTheHeaderOnly(t *testing.T) {
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test"}, testMessage)
	tx.Params.Ret = "HDRS"
	_, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("bob@example.test")}})
	p := parseDSN(t, raw)
	orig := p.parts[2]
	if ct := orig.contentType(t); ct != "text/rfc822-headers" {
		t.Errorf("part 3 is %s, want text/rfc822-headers", ct)
	}
	if string(orig.body) != string(tx.Header.Bytes()) {
		t.Errorf("returned header:\n got %q\nwant %q", orig.body, tx.Header.Bytes())
	}
	if bytes.Contains(raw, []byte("body line 1")) {
		t.Errorf("RET=HDRS notification holds the body")
	}
	if !bytes.Contains(p.parts[0].body, []byte("As you asked, only the header")) {
		t.Errorf("the explanation does not say only the header is returned:\n%s", p.parts[0].body)
	}
	if groups := statusGroups(t, p.parts[1].body); len(groups[1]) != 4 || groups[1]["Remote-MTA"] != "" {
		t.Errorf("recipient group %q: want no Remote-MTA when the report has none", groups[1])
	}
	checkWithPython(t, raw, pythonWant{
		ReportType: "delivery-status",
		Parts:      []string{"text/plain", "message/delivery-status", "text/rfc822-headers"},
		Final:      []string{"rfc822; bob@example.test"},
	})
}

func TestBounceOfALargeMessageReturnsItsHeader(t *testing.T) {
	msg := bigMessage(queue.DefaultReturnLimit + 4096)
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test"}, msg)
	dsn, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("bob@example.test")}})
	p := parseDSN(t, raw)
	if ct := p.parts[2].contentType(t); ct != "text/rfc822-headers" || string(p.parts[2].body) != string(tx.Header.Bytes()) {
		t.Errorf("part 3 is %s %q, want text/rfc822-headers with the original header", ct, p.parts[2].body)
	}
	if !strings.Contains(strings.ReplaceAll(string(p.parts[0].body), "\r\n", " "), "larger than 1048576 bytes") {
		t.Errorf("the explanation does not say why the body is missing:\n%s", p.parts[0].body)
	}
	if dsn.MessageSize() > 8<<10 {
		t.Errorf("notification of a too large message is %d bytes", dsn.MessageSize())
	}

	// Under a raised limit the same message comes back whole.
	_, raw = bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", ReturnLimit: 2 << 20, Failed: []queue.Outcome{refused("bob@example.test")}})
	p = parseDSN(t, raw)
	if string(p.parts[2].body) != wantMessage(msg) {
		t.Errorf("a %d-byte message under a 2 MiB limit did not come back byte for byte", len(msg))
	}
}

func TestBounceNotDue(t *testing.T) {
	report := queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("bob@example.test"), refused("carol@example.test")}}
	for _, c := range []struct {
		name   string
		sender string
		params map[string]transaction.RcptParams
		failed []queue.Outcome
	}{
		{name: "null sender", sender: ""},
		{name: "NOTIFY=NEVER and SUCCESS", sender: "alice@example.org", params: map[string]transaction.RcptParams{
			"bob@example.test":   {Notify: []string{"NEVER"}},
			"carol@example.test": {Notify: []string{"SUCCESS", "DELAY"}},
		}},
		{name: "no failures", sender: "alice@example.org", failed: []queue.Outcome{}},
		{name: "only deliveries", sender: "alice@example.org", failed: []queue.Outcome{{Rcpt: "bob@example.test", Delivered: true, Code: 250}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := dsnTx(t, c.sender, []string{"bob@example.test", "carol@example.test"}, testMessage)
			tx.RcptParams = c.params
			r := report
			if c.failed != nil {
				r.Failed = c.failed
			}
			dsn, err := queue.Bounce(tx, r)
			if dsn != nil || err != nil {
				t.Errorf("Bounce = %v, %v; want no notification and no error", dsn, err)
			}
		})
	}
}

func TestBounceRefusesBadHostNames(t *testing.T) {
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test"}, testMessage)
	for _, r := range []queue.Report{
		{Failed: []queue.Outcome{refused("bob@example.test")}},
		{ReportingMTA: "mx.example.test\r\nBcc: x@example.net", Failed: []queue.Outcome{refused("bob@example.test")}},
		{ReportingMTA: "mx.example.test", RemoteMTA: "lmtp example", Failed: []queue.Outcome{refused("bob@example.test")}},
	} {
		dsn, err := queue.Bounce(tx, r)
		if err == nil || dsn != nil || !strings.Contains(err.Error(), "MTA") {
			t.Errorf("Bounce(ReportingMTA %q, RemoteMTA %q) = %v, %v; want an error naming the setting", r.ReportingMTA, r.RemoteMTA, dsn, err)
		}
	}
}

func TestBounceOddReplyStaysWithinLineLimits(t *testing.T) {
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test", "carol@example.test", "dave@example.test"}, testMessage)
	long := "550 5.7.1 " + strings.Repeat("x", 2500) + " tail"
	odd := "550 5.7.1 bad\r\nInjected: yes\x00\x1b[1m ünïcode\t" + strings.Repeat("word ", 150)
	_, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", RemoteMTA: "lmtp.example.test", Failed: []queue.Outcome{
		{Rcpt: "bob@example.test", Permanent: true, Code: 550, Enhanced: [3]int{5, 7, 1}, Reply: long},
		{Rcpt: "carol@example.test", Permanent: true, Code: 550, Enhanced: [3]int{5, 7, 1}, Reply: odd},
		{Rcpt: "dave@example.test", Permanent: true},
	}})
	checkLines(t, raw)
	p := parseDSN(t, raw)
	groups := statusGroups(t, p.parts[1].body)
	if len(groups) != 4 {
		t.Fatalf("delivery-status has %d groups, want 4:\n%s", len(groups), p.parts[1].body)
	}
	if d := groups[1]["Diagnostic-Code"]; !strings.HasPrefix(d, "smtp; 550 5.7.1 xxx") || !strings.HasSuffix(d, " tail") || strings.Count(d, "x") < 2500 {
		t.Errorf("long reply's Diagnostic-Code: %.100q...: want it whole, folded", d)
	}
	wantOdd := "smtp; 550 5.7.1 bad??Injected: yes??[1m ?n?code?" + strings.TrimSpace(strings.Repeat("word ", 150))
	if d := groups[2]["Diagnostic-Code"]; d != wantOdd {
		t.Errorf("odd reply's Diagnostic-Code:\n got %q\nwant %q", d, wantOdd)
	}
	if _, injected := groups[2]["Injected"]; injected || bytes.Contains(raw, []byte("\r\nInjected:")) {
		t.Errorf("a CRLF in the reply started a field of its own")
	}
	if groups[3]["Status"] != "5.0.0" || groups[3]["Diagnostic-Code"] != "" {
		t.Errorf("recipient with no reply: %q, want Status 5.0.0 and no Diagnostic-Code", groups[3])
	}
	if !bytes.Contains(p.parts[0].body, []byte("<dave@example.test>: the receiving server gave no reply (status 5.0.0).")) {
		t.Errorf("the explanation for a recipient with no reply:\n%s", p.parts[0].body)
	}
	checkWithPython(t, raw, pythonWant{
		ReportType: "delivery-status",
		Parts:      []string{"text/plain", "message/delivery-status", "message/rfc822"},
		Final:      []string{"rfc822; bob@example.test", "rfc822; carol@example.test", "rfc822; dave@example.test"},
		Returned:   "hi\n\tfolded",
	})
}

func TestBounceSMTPUTF8(t *testing.T) {
	msg := "From: <jörg@bücher.example>\r\nSubject: grüße\r\n\r\nbody ÿ\r\n"
	tx := dsnTx(t, "jörg@bücher.example", []string{"ünï@example.test", "bob@example.test"}, msg)
	tx.Params.UTF8 = true
	tx.RcptParams = map[string]transaction.RcptParams{
		"ünï@example.test": {ORcptType: "utf-8", ORcpt: "Ünï@example.test"},
	}
	dsn, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("ünï@example.test"), refused("bob@example.test")}})
	checkLines(t, raw)
	if !dsn.Params.UTF8 || dsn.Params.Body != "8BITMIME" || dsn.Recipients[0] != "jörg@bücher.example" {
		t.Errorf("envelope to %q with %+v: want SMTPUTF8 and 8BITMIME to jörg@bücher.example", dsn.Recipients, dsn.Params)
	}
	p := parseDSN(t, raw)
	if p.params["report-type"] != "global-delivery-status" {
		t.Errorf("report-type %q, want global-delivery-status", p.params["report-type"])
	}
	if got := p.header.Get("To"); got != "<jörg@bücher.example>" {
		t.Errorf("To: %q", got)
	}
	if ct := p.parts[1].contentType(t); ct != "message/global-delivery-status" {
		t.Errorf("part 2 is %s, want message/global-delivery-status", ct)
	}
	if ct := p.parts[2].contentType(t); ct != "message/global" || p.parts[2].header.Get("Content-Transfer-Encoding") != "8bit" {
		t.Errorf("part 3 is %s (%q), want message/global in 8bit", ct, p.parts[2].header.Get("Content-Transfer-Encoding"))
	}
	if string(p.parts[2].body) != wantMessage(msg) {
		t.Errorf("returned message:\n got %q\nwant %q", p.parts[2].body, wantMessage(msg))
	}
	groups := statusGroups(t, p.parts[1].body)
	if g := groups[1]; g["Final-Recipient"] != "utf-8; ünï@example.test" || g["Original-Recipient"] != "utf-8;Ünï@example.test" {
		t.Errorf("UTF-8 recipient group %q", g)
	}
	if g := groups[2]; g["Final-Recipient"] != "rfc822; bob@example.test" {
		t.Errorf("ASCII recipient group %q", g)
	}
	checkWithPython(t, raw, pythonWant{
		ReportType: "global-delivery-status",
		Parts:      []string{"text/plain", "message/global-delivery-status", "message/global"},
	})
}

func TestBounceUTF8OriginalRecipientOutsideSMTPUTF8(t *testing.T) {
	// ORCPT=utf-8;\x{DC}ser@example.test is allowed without SMTPUTF8 (RFC
	// 6533); in an ASCII delivery-status it must go back escaped.
	tx := dsnTx(t, "alice@example.org", []string{"user@example.test"}, testMessage)
	tx.RcptParams = map[string]transaction.RcptParams{"user@example.test": {ORcptType: "utf-8", ORcpt: "Üser+x@example.test"}}
	_, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("user@example.test")}})
	p := parseDSN(t, raw)
	if ct := p.parts[1].contentType(t); ct != "message/delivery-status" {
		t.Errorf("part 2 is %s, want message/delivery-status", ct)
	}
	if got := statusGroups(t, p.parts[1].body)[1]["Original-Recipient"]; got != `utf-8;\x{DC}ser\x{2B}x@example.test` {
		t.Errorf("Original-Recipient %q, want utf-8-addr-xtext", got)
	}
	if bytes.IndexFunc(raw, func(r rune) bool { return r >= 0x80 }) >= 0 {
		t.Errorf("an ASCII notification holds bytes past ASCII")
	}
}

// pythonWant is what checkWithPython expects Python's email package to
// make of a notification.
type pythonWant struct {
	ReportType string
	Parts      []string // the media types of the report's parts
	Final      []string // Final-Recipient values ("" to skip: Python does not parse the global types)
	Returned   string   // the returned message's Subject ("" to skip)
}

// pythonCheck reads a message with Python's email package (a second,
// independent MIME parser) and prints what it found as JSON.
const pythonCheck = `
import email, json, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"))
out = {"type": m.get_content_type(), "report_type": m.get_param("report-type"),
       "defects": [type(d).__name__ for p in m.walk() for d in p.defects],
       "parts": [], "final": [], "returned": ""}
for part in m.get_payload():
    out["parts"].append(part.get_content_type())
    if part.get_content_type() == "message/delivery-status":
        for block in part.get_payload()[1:]:
            out["final"].append(block["Final-Recipient"])
    if part.get_content_type() == "message/rfc822":
        out["returned"] = part.get_payload()[0]["Subject"]
print(json.dumps(out))
`

// checkWithPython has Python's email package parse raw: a multipart/report
// with the parts of want, the message/delivery-status groups recognised
// as header blocks, no defects.
func checkWithPython(t *testing.T, raw []byte, want pythonWant) {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the notification is not checked with Python's email package")
	}
	file := filepath.Join(t.TempDir(), "dsn.eml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "-c", pythonCheck, file).Output()
	if err != nil {
		t.Fatalf("python3 could not parse the notification: %v\n%s", err, out)
	}
	var got struct {
		Type       string   `json:"type"`
		ReportType string   `json:"report_type"`
		Defects    []string `json:"defects"`
		Parts      []string `json:"parts"`
		Final      []string `json:"final"`
		Returned   string   `json:"returned"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("python3 output %q: %v", out, err)
	}
	if got.Type != "multipart/report" || got.ReportType != want.ReportType || len(got.Defects) > 0 {
		t.Errorf("Python reads %s report-type=%s with defects %q; want multipart/report report-type=%s and no defect", got.Type, got.ReportType, got.Defects, want.ReportType)
	}
	if strings.Join(got.Parts, " ") != strings.Join(want.Parts, " ") {
		t.Errorf("Python reads parts %q, want %q", got.Parts, want.Parts)
	}
	if want.Final != nil && strings.Join(got.Final, "|") != strings.Join(want.Final, "|") {
		t.Errorf("Python reads Final-Recipient %q, want %q", got.Final, want.Final)
	}
	if want.Returned != "" && got.Returned != want.Returned {
		t.Errorf("Python reads the returned message's Subject %q, want %q", got.Returned, want.Returned)
	}
}

func TestBounceReturnsAnUndeclared8bitMessageVerbatim(t *testing.T) {
	// 8-bit bytes without BODY=8BITMIME, and no CRLF at the end (BDAT
	// LAST allows that): the part must say 8bit, the notification must be
	// sent as 8BITMIME, and the bytes must come back unchanged.
	msg := "Subject: caf\xe9\r\n\r\nLatin-1 caf\xe9, no final line ending"
	tx := dsnTx(t, "alice@example.org", []string{"bob@example.test"}, msg)
	dsn, raw := bounce(t, tx, queue.Report{ReportingMTA: "mx.example.test", Failed: []queue.Outcome{refused("bob@example.test")}})
	if dsn.Params.Body != "8BITMIME" || dsn.Params.UTF8 {
		t.Errorf("params %+v: want 8BITMIME and no SMTPUTF8", dsn.Params)
	}
	p := parseDSN(t, raw)
	if cte := p.parts[2].header.Get("Content-Transfer-Encoding"); cte != "8bit" {
		t.Errorf("part 3 Content-Transfer-Encoding %q, want 8bit", cte)
	}
	if string(p.parts[2].body) != wantMessage(msg) {
		t.Errorf("returned message:\n got %q\nwant %q", p.parts[2].body, wantMessage(msg))
	}
	if p.parts[0].header.Get("Content-Transfer-Encoding") != "" || p.parts[1].header.Get("Content-Transfer-Encoding") != "" {
		t.Errorf("the ASCII parts are labelled with a transfer encoding")
	}
}
