// Package headers checks a message's header section once it is read:
// the fields RFC 5322 requires (From and Date), at most one of each field
// it allows once (From, Date, Subject, Message-ID, To, Cc, Sender,
// Reply-To), the number of fields and the length of their lines, and a
// Date neither too far in the future nor in the past. It is qpsmtpd's
// headers plugin.
package headers

import (
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/notes"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("headers", New) }

// Settings are the keys of a [plugins.headers] table.
type Settings struct {
	// Required are the fields a message must have. Default From and Date
	// (RFC 5322 3.6).
	Required []string `toml:"required"`
	// RequiredSubmission replaces Required for an authenticated user or a
	// relay client, whose mail user agent may leave Date and Message-ID to
	// the server. Default From.
	RequiredSubmission []string `toml:"required_submission"`
	// Singular are the fields a message may have at most once. Default
	// From, Date, Subject, Message-ID, To, Cc, Sender, Reply-To.
	Singular []string `toml:"singular"`
	// MaxFields is the most header fields a message may have. Default
	// 1000; 0: no limit.
	MaxFields int `toml:"max_fields"`
	// MaxLineLength is the most octets a line of a header field may have,
	// without its line end. Default 998 (RFC 5322 2.1.1); 0: no limit.
	MaxLineLength int `toml:"max_line_length"`
	// Action is what a missing or repeated field, too many fields or a
	// too long line do: "deny" (default), "defer" or "note".
	Action string `toml:"action"`
	// Future is how far ahead of the server's clock Date may be. Default
	// "48h"; "0s": no limit.
	Future string `toml:"future"`
	// Past is how far behind the server's clock Date may be. Default
	// "360h" (15 days); "0s": no limit.
	Past string `toml:"past"`
	// DateAction is what a Date outside the window, or one that is no
	// date, does: "deny" (default), "defer", "note" or "off".
	DateAction string `toml:"date_action"`
}

// NoteProblems (transaction) lists what the checks found, in order:
// "missing:NAME", "singular:NAME", "fields", "line_length", then one of
// "date_invalid", "date_future" and "date_past". Absent when the header
// passed.
var NoteProblems = notes.NewKey[[]string]("headers.problems")

// Plugin is a headers instance. It is read-only after New and safe for
// concurrent use.
type Plugin struct {
	required, requiredSubmission, singular []string
	maxFields, maxLine                     int
	action, dateAction                     string
	future, past                           time.Duration
	now                                    func() time.Time
}

var _ hooks.DataHeadersEnd = (*Plugin)(nil)

// New builds a headers instance from its settings.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{
		Required:           []string{"From", "Date"},
		RequiredSubmission: []string{"From"},
		Singular:           []string{"From", "Date", "Subject", "Message-ID", "To", "Cc", "Sender", "Reply-To"},
		MaxFields:          1000,
		MaxLineLength:      998,
		Action:             "deny",
		Future:             "48h",
		Past:               "360h",
		DateAction:         "deny",
	}
	if err := decode(&s); err != nil {
		return nil, err
	}
	for key, names := range map[string][]string{"required": s.Required, "required_submission": s.RequiredSubmission, "singular": s.Singular} {
		for _, n := range names {
			if !transaction.ValidFieldName(n) {
				return nil, fmt.Errorf("%s: %q is not a header field name", key, n)
			}
		}
	}
	if s.MaxFields < 0 {
		return nil, fmt.Errorf("max_fields = %d: want 0 (no limit) or more", s.MaxFields)
	}
	if s.MaxLineLength < 0 || s.MaxLineLength > 0 && s.MaxLineLength < 78 {
		return nil, fmt.Errorf("max_line_length = %d: want 0 (no limit) or at least 78 (RFC 5322 lines may be 998 octets)", s.MaxLineLength)
	}
	switch s.Action {
	case "deny", "defer", "note":
	default:
		return nil, fmt.Errorf("action = %q: want \"deny\", \"defer\" or \"note\"", s.Action)
	}
	switch s.DateAction {
	case "deny", "defer", "note", "off":
	default:
		return nil, fmt.Errorf("date_action = %q: want \"deny\", \"defer\", \"note\" or \"off\"", s.DateAction)
	}
	p := &Plugin{
		required: s.Required, requiredSubmission: s.RequiredSubmission, singular: s.Singular,
		maxFields: s.MaxFields, maxLine: s.MaxLineLength, action: s.Action, dateAction: s.DateAction,
		now: time.Now,
	}
	var err error
	if p.future, err = window("future", s.Future); err != nil {
		return nil, err
	}
	if p.past, err = window("past", s.Past); err != nil {
		return nil, err
	}
	return p, nil
}

func window(key, v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s = %q: want a duration such as \"48h\" (hours are the largest unit), or \"0s\" for no limit", key, v)
	}
	return d, nil
}

// finding is one problem with its reply.
type finding struct {
	note string
	code int // the permanent reply code
	enh  [3]int
	text string
	date bool // governed by date_action
}

// DataHeadersEnd checks the header and refuses the message on the first
// problem whose action refuses.
func (p *Plugin) DataHeadersEnd(_ context.Context, c *connection.Connection, tx *transaction.Transaction) hooks.Result {
	found := p.check(c, &tx.Header)
	if len(found) == 0 {
		return hooks.Result{}
	}
	list := make([]string, len(found))
	for i, f := range found {
		list[i] = f.note
	}
	NoteProblems.Set(&tx.Notes, list)
	for _, f := range found {
		a := p.action
		if f.date {
			a = p.dateAction
		}
		switch a {
		case "deny":
			return hooks.Result{Code: hooks.Deny, ReplyCode: f.code, Enhanced: f.enh, Msg: f.text, Err: fmt.Errorf("header check: %s", f.note)}
		case "defer":
			return hooks.Result{Code: hooks.DenySoft, Enhanced: [3]int{4, f.enh[1], f.enh[2]}, Msg: f.text, Err: fmt.Errorf("header check: %s", f.note)}
		}
	}
	return hooks.Result{}
}

func (p *Plugin) check(c *connection.Connection, h *transaction.Header) []finding {
	var found []finding
	fault := func(note, text string) {
		found = append(found, finding{note: note, code: 554, enh: [3]int{5, 6, 0}, text: text})
	}
	// A field past the index may be the one that seems missing: a header
	// that long is not judged missing anything.
	if h.Unparsed() == 0 {
		required := p.required
		if c.AuthUser != "" || c.Relay {
			required = p.requiredSubmission
		}
		for _, name := range required {
			if h.Count(name) == 0 {
				fault("missing:"+name, "Message is missing required header "+name)
			}
		}
	}
	for _, name := range p.singular {
		if h.Count(name) > 1 {
			fault("singular:"+name, "Too many "+name+" headers")
		}
	}
	fields := h.Fields()
	if p.maxFields > 0 && (len(fields) > p.maxFields || len(fields) == p.maxFields && h.Unparsed() > 0) {
		found = append(found, finding{note: "fields", code: 552, enh: [3]int{5, 3, 4}, text: "Too many header fields"})
	}
	if p.maxLine > 0 {
	lines:
		for _, f := range fields {
			for line := range bytes.Lines(f.Raw) {
				if len(bytes.TrimRight(line, "\r\n")) > p.maxLine {
					fault("line_length", "Header line too long")
					break lines
				}
			}
		}
	}
	if p.dateAction != "off" && h.Count("Date") > 0 {
		if f, ok := p.checkDate(h.Get("Date")); !ok {
			found = append(found, f)
		}
	}
	return found
}

// commonDates are the forms nearly every Date field takes (RFC 5322's
// date-time with and without the day of the week), tried before
// mail.ParseDate, which tries its dozens of layouts in turn and
// allocates an error for each that fails (some 70 allocations for an
// ordinary date).
var commonDates = []string{"Mon, 2 Jan 2006 15:04:05 -0700", "2 Jan 2006 15:04:05 -0700"}

// parseDate parses a Date field's value as mail.ParseDate does, the
// common forms first.
func parseDate(v string) (time.Time, error) {
	t := strings.TrimSpace(v)
	for _, layout := range commonDates {
		if d, err := time.Parse(layout, t); err == nil {
			return d, nil
		}
	}
	return mail.ParseDate(v)
}

// checkDate checks the first Date field's value against the window.
func (p *Plugin) checkDate(v string) (finding, bool) {
	f := finding{code: 554, enh: [3]int{5, 6, 0}, date: true}
	d, err := parseDate(v)
	now := p.now()
	switch {
	case err != nil:
		f.note, f.text = "date_invalid", "The Date header is not a valid date"
	case p.future > 0 && d.After(now.Add(p.future)):
		f.note, f.text = "date_future", "The Date header is too far in the future"
	case p.past > 0 && d.Before(now.Add(-p.past)):
		f.note, f.text = "date_past", "The Date header is too far in the past"
	default:
		return f, true
	}
	return f, false
}
