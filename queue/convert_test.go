package queue_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-message"
	"github.com/sluice-mta/sluice/queue"
)

func TestNeedsUTF8(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from     string
		to       []string
		msg      string
		flagUTF8 bool
		want     bool
	}{
		{"all ASCII, flagged SMTPUTF8", "a@example.org", []string{"b@example.test"}, testMessage, true, false},
		{"all ASCII", "a@example.org", []string{"b@example.test"}, testMessage, false, false},
		{"UTF-8 in Subject", "a@example.org", []string{"b@example.test"}, "Subject: Grüße\r\n\r\nhi\r\n", false, true},
		{"UTF-8 in a folded line", "a@example.org", []string{"b@example.test"}, "To: a@example.test,\r\n Jürgen <j@example.test>\r\n\r\nhi\r\n", false, true},
		{"UTF-8 sender", "jürgen@example.org", []string{"b@example.test"}, testMessage, true, true},
		{"UTF-8 second recipient", "a@example.org", []string{"b@example.test", "ünsal@example.test"}, testMessage, true, true},
		{"UTF-8 in the body only", "a@example.org", []string{"b@example.test"}, "Subject: hi\r\n\r\nGrüße\r\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx := newTx(t, tc.from, tc.to, tc.msg, 64<<10)
			tx.Params.UTF8 = tc.flagUTF8
			if got := queue.NeedsUTF8(tx); got != tc.want {
				t.Errorf("NeedsUTF8 = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNeedsUTF8SeesUnparsedHeader(t *testing.T) {
	// A header past the index (100 KiB by default) is in no Field: the
	// UTF-8 field at its end must still count.
	msg := "Subject: long\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("a", 70)+"\r\n", 2000) + "X-Name: Jürgen\r\n\r\nhi\r\n"
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, msg, 64<<10)
	if tx.Header.Unparsed() == 0 {
		t.Fatal("test header was parsed whole; make it longer")
	}
	if !queue.NeedsUTF8(tx) {
		t.Error("NeedsUTF8 = false for a UTF-8 field in the unparsed part of the header")
	}
}

func TestHas8Bit(t *testing.T) {
	big := bigMessage(3 << 20)
	for _, tc := range []struct {
		name string
		msg  string
		want bool
	}{
		{"ASCII", testMessage, false},
		{"8-bit body", "Subject: hi\r\n\r\nGrüße\r\n", true},
		{"8-bit header", "Subject: Grüße\r\n\r\nhi\r\n", true},
		{"large ASCII body in a file spool", big, false},
		{"8-bit byte at the end of a large body", big + "\xff\r\n", true},
		{"no body", "Subject: hi\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx := newTx(t, "a@example.org", []string{"b@example.test"}, tc.msg, 64<<10)
			got, err := queue.Has8Bit(tx)
			if err != nil || got != tc.want {
				t.Errorf("Has8Bit = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// convert runs Write7Bit on msg as the core hands it over (Received
// prepended) and checks what every conversion must give: the reported
// count, 7-bit bytes only, lines within SMTP's limit.
func convert(t *testing.T, msg string) (string, error) {
	t.Helper()
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, msg, 64<<10)
	var b bytes.Buffer
	n, err := queue.Write7Bit(&b, tx)
	if n != int64(b.Len()) {
		t.Errorf("Write7Bit reported %d bytes, wrote %d", n, b.Len())
	}
	if err != nil {
		return b.String(), err
	}
	out := b.String()
	if i := strings.IndexFunc(out, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Errorf("8-bit byte in the output at %d: %q", i, out[max(0, i-20):min(len(out), i+20)])
	}
	for i, line := range strings.Split(out, "\n") {
		if len(line) > 998 {
			t.Errorf("output line %d is %d bytes long", i+1, len(line))
		}
	}
	return out, nil
}

// bodyLines returns the lines of out after its first empty line.
func bodyLines(out string) []string {
	_, body, _ := strings.Cut(out, "\r\n\r\n")
	return strings.Split(body, "\n")
}

func qpDecode(t *testing.T, s string) string {
	t.Helper()
	b, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(s)))
	if err != nil {
		t.Fatalf("decode quoted-printable: %v\n%s", err, s)
	}
	return string(b)
}

// A Thunderbird message: single part, text/plain, 8bit.
const thunderbirdHead = "From: =?UTF-8?Q?J=c3=bcrgen_M=c3=bcller?= <j@example.org>\r\n" +
	"To: b@example.test\r\n" +
	"Subject: =?UTF-8?Q?Gr=c3=bc=c3=9fe?=\r\n" +
	"Message-ID: <3f1c0e2a-1d2b@example.org>\r\n" +
	"Date: Fri, 2 Jan 2026 10:00:00 +0100\r\n" +
	"MIME-Version: 1.0\r\n" +
	"User-Agent: Mozilla Thunderbird\r\n" +
	"Content-Language: de-DE\r\n" +
	"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"

const thunderbirdBody = "Grüße aus Köln, \r\n" +
	"a = sign, a\ttab and trailing white space\t\r\n" +
	".a leading dot\r\n" +
	"From the start\r\n" +
	"-- \r\n" +
	"Jürgen\r\n"

func TestWrite7BitSinglePart(t *testing.T) {
	msg := thunderbirdHead + "Content-Transfer-Encoding: 8bit\r\n\r\n" + thunderbirdBody
	out, err := convert(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	wantHead := received + thunderbirdHead + "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || head+"\r\n\r\n" != wantHead {
		t.Fatalf("header changed beyond Content-Transfer-Encoding:\n got %q\nwant %q", head, wantHead)
	}
	if got := qpDecode(t, body); got != thunderbirdBody {
		t.Errorf("decoded body:\n got %q\nwant %q", got, thunderbirdBody)
	}
	if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
		t.Error("a line of the body lost its CR")
	}
	if !strings.Contains(body, "Gr=C3=BC=C3=9Fe aus K=C3=B6ln,=20\r\n") {
		t.Errorf("first line not encoded as expected:\n%s", body)
	}
	if !strings.Contains(body, "\r\n=2D-=20\r\n") {
		t.Errorf("signature separator not protected:\n%s", body)
	}
}

func TestWrite7BitKeeps7BitMessage(t *testing.T) {
	for _, msg := range []string{testMessage, bigMessage(200 << 10), alternative("text/plain; charset=us-ascii", "7bit", "plain ASCII\r\n")} {
		out, err := convert(t, msg)
		if err != nil {
			t.Fatal(err)
		}
		if out != wantMessage(msg) {
			t.Errorf("7-bit message changed at byte %d", firstDiff(out, wantMessage(msg)))
		}
	}
}

// alternative returns a multipart/alternative message as Apple Mail
// writes it, with a preamble and an epilogue: a text part of the given
// type, encoding and content, then a quoted-printable HTML part.
func alternative(textType, textCTE, text string) string {
	return altHead + altPreamble + "--Apple-Mail=_B1A2\r\n" + altTextHeader(textType, textCTE) + text + "\r\n" + altRest
}

func altTextHeader(textType, textCTE string) string {
	return "Content-Transfer-Encoding: " + textCTE + "\r\nContent-Type: " + textType + "\r\n\r\n"
}

const (
	altHead = "From: Anna <anna@example.org>\r\n" +
		"Content-Type: multipart/alternative;\r\n\tboundary=\"Apple-Mail=_B1A2\"\r\n" +
		"Mime-Version: 1.0 (Mac OS X Mail 16.0)\r\n" +
		"Subject: Caf\r\n" +
		"Message-Id: <A1@example.org>\r\n" +
		"Date: Fri, 2 Jan 2026 10:00:00 +0100\r\n\r\n"
	altPreamble = "This is a multi-part message in MIME format.\r\n\r\n"
	altRest     = "--Apple-Mail=_B1A2  \r\n" + // transport padding
		"Content-Transfer-Encoding: quoted-printable\r\n" +
		"Content-Type: text/html;\r\n\tcharset=utf-8\r\n\r\n" +
		"<html><body>Caf=C3=A9 au lait</body></html>=\r\n\r\n" +
		"--Apple-Mail=_B1A2--\r\n" +
		"epilogue line\r\n"
)

func TestWrite7BitMultipartChangesOnlyThe8BitPart(t *testing.T) {
	text := "Café au lait,\r\nsans sucre.\r\n"
	msg := alternative("text/plain;\r\n\tcharset=utf-8", "8bit", text)
	out, err := convert(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	prefix := received + altHead + altPreamble + "--Apple-Mail=_B1A2\r\n" + altTextHeader("text/plain;\r\n\tcharset=utf-8", "quoted-printable")
	if !strings.HasPrefix(out, prefix) {
		t.Fatalf("output differs from the input before the 8-bit part's content at byte %d:\n%s", firstDiff(out, prefix), out)
	}
	suffix := "\r\n" + altRest
	if !strings.HasSuffix(out, suffix) {
		t.Fatalf("the 7-bit part, the delimiters or the epilogue changed:\n%s", out)
	}
	encoded := strings.TrimSuffix(strings.TrimPrefix(out, prefix), suffix)
	if got := qpDecode(t, encoded); got != text {
		t.Errorf("decoded part: got %q, want %q", got, text)
	}
}

// mixed is a multipart/mixed message with everything at once: a nested
// multipart/alternative with an 8-bit text part (holding lines that a
// careless encoder turns into the inner delimiter: "--inner" then é,
// which encodes to "=C3=A9", at the start of a line or where a long line
// gets cut), a base64 attachment, an attached message with an 8-bit body,
// and an 8-bit text part with a long line, trailing white space and a
// bare CR.
func mixed() (msg string, leaves []string) {
	attachedBody := "Ätsch, weitergeleitet.\r\n"
	long := strings.Repeat("Größe ", 60) + "end"
	leaves = []string{
		"Grüße, see the attachments.\r\n--inner\xc3\xa9\r\n" + strings.Repeat("x", 75) + "--inner\xc3\xa9--\r\n",
		"<p>Gr&uuml;&szlig;e</p>\r\n",
		"%PDF-1.4 fake",
		attachedBody,
		long + "\r\n\r\ntrailing tab\t\r\nbare\rCR\r\n",
	}
	msg = "From: a@example.org\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		"preamble with Umlaut: ä\r\n" +
		"--outer\r\n" +
		"Content-Type: multipart/alternative; boundary=\"inner=C3=A9\"\r\n\r\n" +
		"--inner=C3=A9\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		leaves[0] + "\r\n" +
		"--inner=C3=A9\r\n" +
		"Content-Type: text/html; charset=us-ascii\r\n\r\n" +
		leaves[1] + "\r\n" +
		"--inner=C3=A9--\r\n" +
		"--outer\r\n" +
		"Content-Type: application/pdf; name=\"a.pdf\"\r\n" +
		"Content-Disposition: attachment; filename=\"a.pdf\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" +
		"JVBERi0xLjQgZmFrZQ==\r\n" +
		"--outer\r\n" +
		"Content-Type: message/rfc822\r\n\r\n" +
		"From: c@example.org\r\n" +
		"Subject: fwd\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n" +
		attachedBody + "\r\n" +
		"--outer\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n" +
		leaves[4] + "\r\n" +
		"--outer--\r\n"
	return msg, leaves
}

func TestWrite7BitNested(t *testing.T) {
	msg, leaves := mixed()
	out, err := convert(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
		"preamble with Umlaut: ??\r\n--outer\r\n",
		"Content-Type: text/html; charset=us-ascii\r\n\r\n" + leaves[1] + "\r\n--inner=C3=A9--\r\n",
		"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgZmFrZQ==\r\n--outer\r\n",
		"Content-Type: message/rfc822\r\n\r\nFrom: c@example.org\r\nSubject: fwd\r\nContent-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
	} {
		if !strings.Contains(out, keep) {
			t.Errorf("output lacks %q:\n%s", keep, out)
		}
	}
	for _, line := range bodyLines(out) {
		if len(strings.TrimSuffix(line, "\r")) > 76 {
			t.Errorf("line longer than 76: %q", line)
		}
	}
	if got := goMessageLeaves(t, out); !equalStrings(got, leaves) {
		t.Errorf("go-message decodes the leaves as\n%q\nwant\n%q", got, leaves)
	}
}

func TestWrite7BitNonMIME(t *testing.T) {
	body := "Grüße\r\nöäü\r\n"
	msg := "From: a@example.org\r\nSubject: old style\r\n\r\n" + body
	out, err := convert(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	want := received + "From: a@example.org\r\nSubject: old style\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Gr=C3=BC=C3=9Fe\r\n=C3=B6=C3=A4=C3=BC\r\n"
	if out != want {
		t.Errorf("got\n%q\nwant\n%q", out, want)
	}
}

func TestWrite7BitLineEndings(t *testing.T) {
	// LF-only stays LF-only; a long line is cut at 76 with soft breaks of
	// the same ending; a part with 8-bit bytes but labelled 7bit counts as
	// 8 bit; a quoted-printable part with raw 8-bit bytes gets them escaped.
	long := strings.Repeat("é", 100)
	msg := "Subject: lf\n" +
		"Content-Type: multipart/mixed; boundary=b\n\n" +
		"--b\n" +
		"Content-Type: text/plain; charset=ISO-8859-1\n" +
		"Content-Transfer-Encoding: 7bit\n\n" +
		"caf\xe9\n" + long + "\n" +
		"--b\n" +
		"Content-Type: text/plain; charset=utf-8\n" +
		"Content-Transfer-Encoding: quoted-printable\n\n" +
		"d=C3=A9j\xc3\xa0 vu\n" +
		"--b--\n"
	out, err := convert(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, after, _ := strings.Cut(out, "Subject:"); strings.Contains(after, "\r") {
		t.Errorf("a CR appeared in an LF-only message:\n%q", out)
	}
	if !strings.Contains(out, "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: quoted-printable\n\ncaf=E9\n") {
		t.Errorf("7bit-labelled 8-bit part not converted, or charset changed:\n%s", out)
	}
	_, part, _ := strings.Cut(out, "Subject: lf\n")
	for _, line := range strings.Split(part, "\n") {
		if len(line) > 76 {
			t.Errorf("line longer than 76: %q", line)
		}
	}
	if !strings.Contains(out, "\nd=C3=A9j=C3=A0 vu\n--b--\n") {
		t.Errorf("raw 8-bit bytes in a quoted-printable part not escaped:\n%s", out)
	}
	want := []string{"caf\xe9\n" + long, "déjà vu"}
	if got := goMessageLeaves(t, out); !equalStrings(got, want) {
		t.Errorf("go-message decodes the leaves as\n%q\nwant\n%q", got, want)
	}
}

func TestWrite7BitRefuses8BitHeaders(t *testing.T) {
	for _, tc := range []struct {
		name     string
		msg      string
		enhanced [3]int
	}{
		{"message header", "Subject: Grüße\r\n\r\nGrüße\r\n", [3]int{5, 6, 9}},
		{"part header", "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
			"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Bücher.pdf\"\r\n\r\nJVBE\r\n--b--\r\n", [3]int{5, 6, 9}},
		{"attached message header", "Content-Type: message/rfc822\r\n\r\nSubject: Grüße\r\n\r\nhi\r\n", [3]int{5, 6, 9}},
		{"nesting too deep", strings.Repeat("Content-Type: message/rfc822\r\n\r\n", 60) + "\r\nGrüße\r\n", [3]int{5, 6, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := convert(t, tc.msg)
			if !errors.Is(err, queue.ErrCannotConvert) {
				t.Fatalf("err = %v, want ErrCannotConvert", err)
			}
			var qe *queue.Error
			if !errors.As(err, &qe) || !qe.Permanent || qe.Enhanced != tc.enhanced || qe.Msg == "" {
				t.Errorf("err = %#v, want a permanent *queue.Error with %v", err, tc.enhanced)
			}
			if out != "" {
				t.Errorf("wrote %d bytes before refusing", len(out))
			}
		})
	}
}

func TestWrite7BitLargeMessage(t *testing.T) {
	var b strings.Builder
	b.WriteString("Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	head := b.Len()
	for i := 0; b.Len() < 6<<20; i++ {
		fmt.Fprintf(&b, "Zeile %07d: Falsches Üben von Xylophonmusik quält jeden größeren Zwerg \r\n", i)
	}
	msg := b.String()
	tx := newTx(t, "a@example.org", []string{"b@example.test"}, msg, 64<<10)
	if tx.Body.InMemory() {
		t.Fatal("the body should be spooled to a file")
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	// Stream into a pipe and decode on the other side: the output is
	// never held whole either.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := queue.Write7Bit(pw, tx)
		pw.CloseWithError(err)
		done <- err
	}()
	br := bufio.NewReader(pr)
	for {
		line, err := br.ReadString('\n')
		if line == "\r\n" || err != nil {
			break
		}
	}
	h := sha256.New()
	n, err := io.Copy(h, quotedprintable.NewReader(br))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&ms1)
	want := sha256.Sum256([]byte(msg[head:]))
	if !bytes.Equal(h.Sum(nil), want[:]) || n != int64(len(msg)-head) {
		t.Errorf("decoded body (%d bytes) differs from the original (%d bytes)", n, len(msg)-head)
	}
	// Allocations of the whole test side included (pipe, decoder, hash):
	// far below the 6 MiB message.
	alloc := ms1.TotalAlloc - ms0.TotalAlloc
	t.Logf("converting %d bytes allocated %d bytes", len(msg), alloc)
	if alloc > 1<<20 {
		t.Errorf("converting a 6 MiB message allocated %d bytes", alloc)
	}
}

// goMessageLeaves parses a message with go-message and returns the
// decoded content of its leaf parts, walking into attached messages.
func goMessageLeaves(t *testing.T, msg string) []string {
	t.Helper()
	var leaves []string
	var entity func(e *message.Entity)
	entity = func(e *message.Entity) {
		if mr := e.MultipartReader(); mr != nil {
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil && !message.IsUnknownCharset(err) {
					t.Fatalf("go-message: next part: %v", err)
				}
				entity(p)
			}
		}
		if typ, _, _ := e.Header.ContentType(); typ == "message/rfc822" {
			inner, err := message.Read(e.Body)
			if err != nil && !message.IsUnknownCharset(err) {
				t.Fatalf("go-message: attached message: %v", err)
			}
			entity(inner)
			return
		}
		b, err := io.ReadAll(e.Body)
		if err != nil {
			t.Fatalf("go-message: read body: %v", err)
		}
		leaves = append(leaves, string(b))
	}
	e, err := message.Read(strings.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		t.Fatalf("go-message: %v", err)
	}
	entity(e)
	return leaves
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00|") == strings.Join(b, "\x00|") && len(a) == len(b)
}

// pyLeaves is a Python program that parses each file named on its
// command line with the email package and prints, per file, the decoded
// payloads of its leaf parts (hex) as JSON.
const pyLeaves = `
import email, email.policy, json, sys
out = []
for name in sys.argv[1:]:
    # message_from_bytes, not message_from_binary_file: the latter reads
    # through a text wrapper that turns CRLF into LF.
    with open(name, 'rb') as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    out.append([p.get_payload(decode=True).hex() for p in msg.walk() if not p.is_multipart()])
print(json.dumps(out))
`

func TestWrite7BitPythonDecodes(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: the check against Python's email package needs it")
	}
	mixedMsg, mixedLeaves := mixed()
	cases := []struct {
		msg    string
		leaves []string
	}{
		{thunderbirdHead + "Content-Transfer-Encoding: 8bit\r\n\r\n" + thunderbirdBody, []string{thunderbirdBody}},
		{alternative("text/plain; charset=utf-8", "8bit", "Café\r\n"), []string{"Café\r\n", "<html><body>Café au lait</body></html>"}},
		{mixedMsg, mixedLeaves},
		{"Subject: x\r\n\r\nGrüße \r\n\tbare\rCR " + strings.Repeat("ü", 200) + "\r\n", []string{"Grüße \r\n\tbare\rCR " + strings.Repeat("ü", 200) + "\r\n"}},
	}
	dir := t.TempDir()
	var files []string
	for i, tc := range cases {
		out, err := convert(t, tc.msg)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(dir, fmt.Sprintf("m%d.eml", i))
		if err := os.WriteFile(name, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	cmd := exec.Command(python, append([]string{"-c", pyLeaves}, files...)...)
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var got [][]string
	if err := json.Unmarshal(stdout, &got); err != nil || len(got) != len(cases) {
		t.Fatalf("python3 printed %q: %v", stdout, err)
	}
	for i, tc := range cases {
		var want []string
		for _, l := range tc.leaves {
			want = append(want, hex.EncodeToString([]byte(l)))
		}
		if !equalStrings(got[i], want) {
			t.Errorf("message %d: Python decodes the leaves as\n%q\nwant\n%q", i, got[i], want)
		}
	}
}

// FuzzWrite7Bit feeds arbitrary messages to Write7Bit: it must not panic
// or hang; a 7-bit message must come out as it went in; and walking a
// converted message's output again (the converting walk, without Write7Bit's shortcut for
// 7-bit messages) must change nothing, which catches a converted part or
// relabelled header the walk reads differently the second time.
func FuzzWrite7Bit(f *testing.F) {
	mixedMsg, _ := mixed()
	for _, seed := range []string{
		testMessage,
		thunderbirdHead + "Content-Transfer-Encoding: 8bit\r\n\r\n" + thunderbirdBody,
		alternative("text/plain; charset=utf-8", "8bit", "Café\r\n"),
		mixedMsg,
		"Subject: x\n\nGr\xfc\xdfe\n",
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\xff\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\r\n\xfe",
		// A 7-bit multipart labelled 8bit, its header unended: as it came.
		"Content-Type:multipart/d;boundary=\"r\"\nContent-Transfer-Encoding:8bit",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		tx := newTx(t, "a@example.org", []string{"b@example.test"}, msg, 64<<10)
		var out bytes.Buffer
		if _, err := queue.Write7Bit(&out, tx); err != nil {
			if !errors.Is(err, queue.ErrCannotConvert) {
				t.Fatalf("Write7Bit: %v", err)
			}
			return
		}
		var in bytes.Buffer
		tx.WriteTo(&in)
		if eight, _ := queue.Has8Bit(tx); !eight {
			if out.String() != in.String() {
				t.Fatalf("7-bit message changed:\n in %q\nout %q", in.String(), out.String())
			}
			return
		}
		tx2 := newTx(t, "a@example.org", []string{"b@example.test"}, out.String(), 64<<10)
		var again, want bytes.Buffer
		tx2.WriteTo(&want)
		if _, err := queue.Convert7BitWalk(&again, tx2); err != nil || again.String() != want.String() {
			t.Fatalf("converting the output again changed it (%v):\nfirst  %q\nsecond %q", err, want.String(), again.String())
		}
	})
}
