// Package spamassassin scores every message with SpamAssassin's spamd, as
// qpsmtpd's and Haraka's spamassassin plugins do. At data_post it streams
// the message from the spool to spamd (the SPAMC protocol's SYMBOLS or
// REPORT command), writes X-Spam-Status and X-Spam-Flag, and refuses or
// defers a message whose score is over the configured thresholds.
package spamassassin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/scanner"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("spamassassin", New) }

// Settings are the keys of a [plugins.spamassassin] table.
type Settings struct {
	// Address is spamd's socket: "127.0.0.1:783" (the default), or
	// "unix:/path" or an absolute path for a unix socket.
	Address string `toml:"address"`
	// User is sent as spamd's User header: whose preferences spamd uses.
	// Default "": spamd's own default.
	User string `toml:"user"`
	// ConnectTimeout bounds connecting to spamd. Default "5s".
	ConnectTimeout config.Duration `toml:"connect_timeout"`
	// Timeout bounds the whole scan. Default "60s".
	Timeout config.Duration `toml:"timeout"`
	// RejectScore refuses a message whose score is at least this
	// (550 5.7.1). Default 10; 0 never refuses.
	RejectScore *float64 `toml:"reject_score"`
	// DeferScore defers a message whose score is at least this and under
	// reject_score (451 4.7.1). Default 0: off.
	DeferScore float64 `toml:"defer_score"`
	// MaxSize is the largest message scanned (spamc's default, 500KB);
	// a larger one goes on with "X-Spam-Status: Unknown, not scanned".
	MaxSize config.Bytes `toml:"max_size"`
	// Report adds spamd's report as X-Spam-Report to messages it calls
	// spam. Default false.
	Report bool `toml:"report"`
	// ScanAuthenticated and ScanRelay scan mail from authenticated users
	// and relay clients, which are skipped by default.
	ScanAuthenticated bool `toml:"scan_authenticated"`
	ScanRelay         bool `toml:"scan_relay"`
	// Failure is what a spamd failure does: "defer" (the default) or
	// "accept" (deliver with "X-Spam-Status: Unknown, scan failed").
	Failure string `toml:"failure"`
}

// Verdict is what spamd said about a message, in NoteResult.
type Verdict struct {
	Spam            bool
	Score, Required float64
	// Tests are the names of the rules that hit.
	Tests []string
}

// NoteResult (transaction) is spamd's verdict, absent when the message
// was not scanned.
var NoteResult = notes.NewKey[Verdict]("spamassassin.result")

// Plugin is a spamassassin instance. It is read-only after New and safe
// for concurrent use.
type Plugin struct {
	network, address        string
	user                    string
	connectTimeout, timeout time.Duration
	rejectScore, deferScore float64
	maxSize                 int64
	report                  bool
	scanAuth, scanRelay     bool
	failure                 scanner.Failure
}

var _ hooks.DataPost = (*Plugin)(nil)

// New builds a spamassassin instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Address: "127.0.0.1:783", ConnectTimeout: config.Duration{Duration: 5 * time.Second},
		Timeout: config.Duration{Duration: time.Minute}, MaxSize: 500 << 10}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{user: s.User, connectTimeout: s.ConnectTimeout.Duration, timeout: s.Timeout.Duration,
		rejectScore: 10, deferScore: s.DeferScore, maxSize: int64(s.MaxSize), report: s.Report,
		scanAuth: s.ScanAuthenticated, scanRelay: s.ScanRelay}
	if s.RejectScore != nil {
		p.rejectScore = *s.RejectScore
	}
	var err error
	if p.network, p.address, err = scanner.ParseAddress(s.Address); err != nil {
		return nil, err
	}
	if p.failure, err = scanner.ParseFailure("failure", s.Failure); err != nil {
		return nil, err
	}
	if err := scanner.CheckLimits(p.connectTimeout, p.timeout, p.maxSize, "60s", "500KB"); err != nil {
		return nil, err
	}
	switch {
	case p.rejectScore < 0 || p.deferScore < 0:
		return nil, fmt.Errorf("reject_score and defer_score: want 0 (off) or a positive score")
	case p.deferScore > 0 && p.rejectScore > 0 && p.deferScore >= p.rejectScore:
		return nil, fmt.Errorf("defer_score = %g is not under reject_score = %g: a message at either would be refused, never deferred", p.deferScore, p.rejectScore)
	case strings.ContainsAny(s.User, "\r\n"):
		return nil, fmt.Errorf("user = %q: no line breaks", s.User)
	}
	return p, nil
}

// The header fields the plugin writes; the sender's own are removed.
const (
	fieldStatus = "X-Spam-Status"
	fieldFlag   = "X-Spam-Flag"
	fieldReport = "X-Spam-Report"
)

// DataPost scores the message and acts on the score.
func (p *Plugin) DataPost(ctx context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if (c.AuthUser != "" && !p.scanAuth) || (c.Relay && !p.scanRelay) {
		return hooks.Result{}
	}
	// What a sender wrote under our field names must not pass for our
	// verdict (spamd removes them too, in the copy it returns).
	tx.Header.DelFunc(func(f transaction.Field) bool {
		return len(f.Name) > 7 && strings.EqualFold(f.Name[:7], "X-Spam-")
	})
	if size := tx.MessageSize(); size > p.maxSize {
		tx.Header.Add(fieldStatus, fmt.Sprintf("Unknown, not scanned (message of %d bytes over max_size)", size))
		return hooks.Result{}
	}
	v, report, err := p.check(ctx, tx)
	if err != nil {
		return p.failure.Result(tx, "spamassassin", fieldStatus, "Unknown, scan failed", err)
	}
	NoteResult.Set(&tx.Notes, v)
	yes := "No"
	if v.Spam {
		yes = "Yes"
	}
	tx.Header.Add(fieldStatus, fmt.Sprintf("%s, score=%.1f required=%.1f tests=%s", yes, v.Score, v.Required, strings.Join(v.Tests, ",")))
	if v.Spam {
		tx.Header.Add(fieldFlag, "YES")
		if p.report && report != "" {
			tx.Header.Add(fieldReport, report)
		}
	}
	switch {
	case p.rejectScore > 0 && v.Score >= p.rejectScore:
		return hooks.Result{Code: hooks.Deny, ReplyCode: 550, Enhanced: [3]int{5, 7, 1},
			Msg: fmt.Sprintf("Message refused as spam (score %.1f, limit %.1f)", v.Score, p.rejectScore)}
	case p.deferScore > 0 && v.Score >= p.deferScore:
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1},
			Msg: fmt.Sprintf("Message looks like spam (score %.1f); try again later", v.Score)}
	}
	return hooks.Result{}
}

// check sends the message to spamd and reads its verdict: SYMBOLS, or
// REPORT when the report is wanted.
func (p *Plugin) check(ctx context.Context, tx *transaction.Transaction) (Verdict, string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	conn, err := scanner.Dial(ctx, p.network, p.address, p.connectTimeout)
	if err != nil {
		return Verdict{}, "", scanner.Describe("connect to spamd at "+p.address, err, p.connectTimeout)
	}
	defer conn.Close()

	cmd := "SYMBOLS"
	if p.report {
		cmd = "REPORT"
	}
	head := fmt.Sprintf("%s SPAMC/1.5\r\nContent-length: %d\r\n", cmd, tx.MessageSize())
	if p.user != "" {
		head += "User: " + p.user + "\r\n"
	}
	w := bufio.NewWriterSize(conn, int(min(32<<10, tx.MessageSize()+int64(len(head))+2)))
	w.WriteString(head + "\r\n")
	if _, err := tx.WriteTo(w); err != nil {
		return Verdict{}, "", scanner.Describe("send the message to spamd at "+p.address, err, p.timeout)
	}
	if err := w.Flush(); err != nil {
		return Verdict{}, "", scanner.Describe("send the message to spamd at "+p.address, err, p.timeout)
	}
	v, body, err := readResponse(bufio.NewReader(io.LimitReader(conn, 256<<10)))
	if err != nil {
		return Verdict{}, "", scanner.Describe("read spamd's answer from "+p.address, err, p.timeout)
	}
	if cmd == "SYMBOLS" {
		for _, t := range strings.Split(strings.TrimSpace(body), ",") {
			if t != "" {
				v.Tests = append(v.Tests, t)
			}
		}
		return v, "", nil
	}
	v.Tests = reportTests(body)
	return v, foldReport(body), nil
}

// reportTests reads the rule names from a report's table, whose lines
// are " 1000 GTUBE  BODY: Generic Test for Unsolicited Bulk Email".
func reportTests(report string) []string {
	var tests []string
	for _, l := range strings.Split(report, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err == nil && strings.ToUpper(f[1]) == f[1] {
			tests = append(tests, f[1])
		}
	}
	return tests
}

// readResponse reads "SPAMD/1.1 0 EX_OK", the headers (Spam: True ; 6.2 /
// 5.0), and the body.
func readResponse(r *bufio.Reader) (Verdict, string, error) {
	status, err := r.ReadString('\n')
	if err != nil {
		return Verdict{}, "", err
	}
	f := strings.Fields(status)
	if len(f) < 3 || !strings.HasPrefix(f[0], "SPAMD/") {
		return Verdict{}, "", fmt.Errorf("spamd answered %q", strings.TrimSpace(status))
	}
	if f[1] != "0" {
		return Verdict{}, "", fmt.Errorf("spamd refused the request: %s", strings.TrimSpace(status))
	}
	var v Verdict
	seen := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return Verdict{}, "", fmt.Errorf("spamd's answer ended in its headers: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		name, value, _ := strings.Cut(line, ":")
		if !strings.EqualFold(name, "Spam") {
			continue
		}
		// "True ; 1003.7 / 5.0"
		flag, scores, ok := strings.Cut(value, ";")
		score, required, ok2 := strings.Cut(scores, "/")
		var e1, e2 error
		v.Score, e1 = strconv.ParseFloat(strings.TrimSpace(score), 64)
		v.Required, e2 = strconv.ParseFloat(strings.TrimSpace(required), 64)
		if !ok || !ok2 || e1 != nil || e2 != nil {
			return Verdict{}, "", fmt.Errorf("spamd's Spam header %q is not \"True ; score / required\"", value)
		}
		v.Spam = strings.EqualFold(strings.TrimSpace(flag), "True") || strings.EqualFold(strings.TrimSpace(flag), "Yes")
		seen = true
	}
	if !seen {
		return Verdict{}, "", fmt.Errorf("spamd's answer has no Spam header")
	}
	body, err := io.ReadAll(r)
	if err != nil {
		return Verdict{}, "", err
	}
	return v, string(body), nil
}

// foldReport makes spamd's multi-line report a folded header value.
func foldReport(report string) string {
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(report, "\r\n", "\n"), "\n") {
		if l = strings.TrimRight(l, " \t"); strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\r\n\t")
}
