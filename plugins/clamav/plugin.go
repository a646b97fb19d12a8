// Package clamav scans every message for viruses with ClamAV's clamd, as
// qpsmtpd's virus/clamdscan and Haraka's clamd plugins do. At data_post it
// streams the message from the spool to clamd with the INSTREAM command
// (in chunks: the message is never held whole in memory a second time)
// and refuses an infected message, naming the virus.
package clamav

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/scanner"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("clamav", New) }

// Settings are the keys of a [plugins.clamav] table.
type Settings struct {
	// Address is clamd's socket: "unix:/run/clamav/clamd.ctl" (Debian's
	// LocalSocket, the default), an absolute path, or "127.0.0.1:3310"
	// (TCPSocket).
	Address string `toml:"address"`
	// ConnectTimeout bounds connecting to clamd. Default "5s".
	ConnectTimeout config.Duration `toml:"connect_timeout"`
	// Timeout bounds the whole scan, from the first byte sent to the
	// verdict. Default "60s".
	Timeout config.Duration `toml:"timeout"`
	// MaxSize is the largest message sent to clamd; keep it at or under
	// clamd's StreamMaxLength (Debian's default 25M). A larger message is
	// not scanned: it goes on with the skipped header. Default "25MB".
	MaxSize config.Bytes `toml:"max_size"`
	// Failure is what a clamd failure does: "defer" (the default) or
	// "accept" (deliver with "X-Virus-Scanned: no (scan failed)").
	Failure string `toml:"failure"`
	// Header is the header field that records the scan, "" for none.
	// Default "X-Virus-Scanned".
	Header *string `toml:"header"`
	// SkipAuthenticated skips the scan for authenticated users. Default
	// false: viruses come from compromised accounts too.
	SkipAuthenticated bool `toml:"skip_authenticated"`
}

// Verdict is what clamd said about a message, in NoteResult.
type Verdict struct {
	// Clean is true when clamd found nothing.
	Clean bool
	// Virus is the signature name clamd found ("Win.Test.EICAR_HDB-1").
	Virus string
	// Skipped says why the message was not scanned ("too large",
	// "scan failed"); "" when it was.
	Skipped string
}

// NoteResult (transaction) is clamd's verdict on the message.
var NoteResult = notes.NewKey[Verdict]("clamav.result")

// Plugin is a clamav instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	network, address string
	connectTimeout   time.Duration
	timeout          time.Duration
	maxSize          int64
	failure          scanner.Failure
	header           string
	skipAuth         bool
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds a clamav instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Address: "unix:/run/clamav/clamd.ctl", ConnectTimeout: config.Duration{Duration: 5 * time.Second},
		Timeout: config.Duration{Duration: time.Minute}, MaxSize: 25 << 20}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{header: "X-Virus-Scanned", skipAuth: s.SkipAuthenticated}
	var err error
	if p.network, p.address, err = scanner.ParseAddress(s.Address); err != nil {
		return nil, err
	}
	p.connectTimeout, p.timeout, p.maxSize = s.ConnectTimeout.Duration, s.Timeout.Duration, int64(s.MaxSize)
	if err := scanner.CheckLimits(p.connectTimeout, p.timeout, p.maxSize, "60s", "25MB"); err != nil {
		return nil, err
	}
	if p.failure, err = scanner.ParseFailure("failure", s.Failure); err != nil {
		return nil, err
	}
	if s.Header != nil {
		p.header = *s.Header
	}
	return p, nil
}

// DataPost scans the message and refuses it when clamd finds a virus.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if p.skipAuth && c.AuthUser != "" {
		return hooks.Result{}
	}
	if size := tx.MessageSize(); size > p.maxSize {
		NoteResult.Set(&tx.Notes, Verdict{Skipped: "too large"})
		p.mark(tx, fmt.Sprintf("no (message of %d bytes over max_size)", size))
		return hooks.Result{}
	}
	v, err := p.scan(ctx, tx)
	if err != nil {
		NoteResult.Set(&tx.Notes, Verdict{Skipped: "scan failed"})
		if p.header != "" {
			tx.Header.Del(p.header)
		}
		return p.failure.Result(tx, "clamav", p.header, "no (scan failed)", err)
	}
	NoteResult.Set(&tx.Notes, v)
	if !v.Clean {
		return hooks.Result{Code: hooks.Deny, ReplyCode: 554, Msg: "Message contains a virus: " + v.Virus, Enhanced: [3]int{5, 7, 1},
			Detail: "clamd found " + v.Virus}
	}
	p.mark(tx, "clean (ClamAV)")
	return hooks.Result{}
}

// mark writes the header field, removing any of that name the sender
// wrote (a forged "clean").
func (p *Plugin) mark(tx *transaction.Transaction, value string) {
	if p.header != "" {
		tx.Header.Del(p.header)
		tx.Header.Add(p.header, value)
	}
}

// chunk is the size of the INSTREAM chunks.
const chunk = 64 << 10

// scan sends the message to clamd with INSTREAM and reads the verdict.
func (p *Plugin) scan(ctx context.Context, tx *transaction.Transaction) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	conn, err := scanner.Dial(ctx, p.network, p.address, p.connectTimeout)
	if err != nil {
		return Verdict{}, scanner.Describe("connect to clamd at "+p.address, err, p.connectTimeout)
	}
	defer conn.Close()

	if err := stream(conn, tx.Message(), tx.MessageSize()); err != nil {
		// clamd answers and closes when the stream passes its
		// StreamMaxLength: read its reason before calling it a write error.
		if reply, rerr := readReply(conn); rerr == nil && reply != "" {
			return Verdict{}, fmt.Errorf("clamd at %s refused the stream: %s", p.address, reply)
		}
		return Verdict{}, scanner.Describe("send the message to clamd at "+p.address, err, p.timeout)
	}
	reply, err := readReply(conn)
	if err != nil {
		return Verdict{}, scanner.Describe("read clamd's verdict from "+p.address, err, p.timeout)
	}
	return parseReply(reply)
}

// stream writes the INSTREAM command and the message of size bytes as
// length-prefixed chunks, then the zero-length chunk that ends it. Each
// chunk goes out in one write, its length in front.
func stream(w io.Writer, msg io.Reader, size int64) error {
	if _, err := io.WriteString(w, "zINSTREAM\x00"); err != nil {
		return err
	}
	buf := make([]byte, 4+min(chunk, max(size, 1)))
	for {
		n, err := io.ReadFull(msg, buf[4:])
		if n > 0 {
			binary.BigEndian.PutUint32(buf, uint32(n))
			if _, werr := w.Write(buf[:4+n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read the spooled message: %w", err)
		}
	}
	_, err := w.Write([]byte{0, 0, 0, 0})
	return err
}

// readReply reads clamd's NUL-terminated answer.
func readReply(conn io.Reader) (string, error) {
	var buf [512]byte
	n := 0
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return strings.TrimRight(string(buf[:i]), "\n"), nil
		}
		if err == io.EOF && n > 0 {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return strings.TrimRight(string(buf[:n]), "\x00\n"), nil
}

// parseReply reads "stream: OK", "stream: NAME FOUND" or an error.
func parseReply(reply string) (Verdict, error) {
	rest, ok := strings.CutPrefix(reply, "stream: ")
	switch {
	case ok && rest == "OK":
		return Verdict{Clean: true}, nil
	case ok && strings.HasSuffix(rest, " FOUND"):
		return Verdict{Virus: strings.TrimSuffix(rest, " FOUND")}, nil
	}
	return Verdict{}, fmt.Errorf("clamd answered %q", reply)
}
