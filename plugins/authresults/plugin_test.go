package authresults_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/authresults"
	"github.com/sluice-mta/sluice/plugins/dkim"
	"github.com/sluice-mta/sluice/plugins/dmarc"
	_ "github.com/sluice-mta/sluice/plugins/rcptok" // registers rcptok for Build
	"github.com/sluice-mta/sluice/plugins/spf"
	"github.com/sluice-mta/sluice/transaction"
)

// seed stands in for the spf, dkim and dmarc plugins, which are not part
// of this package: it sets their notes where they do (spf at mail, dkim
// and dmarc at data_post, before authresults). A nil field leaves the
// note absent, as when the plugin is not in the chain.
type seed struct {
	spf   *spf.Verdict
	dkim  []dkim.Signature
	dkimR bool // set the dkim note, even to an empty list
	dmarc *dmarc.Verdict
}

func (s seed) Mail(_ context.Context, _ *connection.Connection, tx *transaction.Transaction, _ string) hooks.Result {
	if s.spf != nil {
		spf.NoteResult.Set(&tx.Notes, *s.spf)
	}
	return hooks.Result{}
}

func (s seed) DataPost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) hooks.Result {
	if s.dkimR {
		dkim.NoteResults.Set(&tx.Notes, s.dkim)
	}
	if s.dmarc != nil {
		dmarc.NoteResult.Set(&tx.Notes, *s.dmarc)
	}
	return hooks.Result{}
}

// harness builds the chain seed, authresults, rcptok, queue recorder.
func harness(t *testing.T, sd seed, settings string) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("seed", sd),
		hookstest.Plugin("authresults", hookstest.Build(t, "authresults", settings)),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
}

const body = "From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"

// send sends msg from alice@example.org (or sender) to bob@example.test
// and returns the message as queued.
func send(t *testing.T, h *hookstest.Harness, sender, msg string) hookstest.Message {
	t.Helper()
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("mta.example.org"), 250)
	hookstest.Expect(t, s.Send(sender, []string{"bob@example.test"}, msg), 250, "queued as")
	q := h.Queued()
	if len(q) != 1 {
		t.Fatalf("queued %d messages, want 1", len(q))
	}
	return q[0]
}

// fields returns the header fields of a message, each with its folded
// lines and its CRLF.
func fields(t *testing.T, data []byte) []string {
	t.Helper()
	head, _, ok := strings.Cut(string(data), "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of header in %q", data)
	}
	var fs []string
	for _, line := range strings.SplitAfter(head+"\r\n", "\r\n") {
		switch {
		case line == "":
		case line[0] == ' ' || line[0] == '\t':
			fs[len(fs)-1] += line
		default:
			fs = append(fs, line)
		}
	}
	return fs
}

// expectHeader fails unless the queued message starts with want (the
// whole Authentication-Results field, or "" for none), then the server's
// Received field, then the fields of sent, unchanged but for the ones in
// removed.
func expectHeader(t *testing.T, m hookstest.Message, want, sent string, removed ...string) {
	t.Helper()
	got := fields(t, m.Data)
	if want != "" {
		if got[0] != want {
			t.Fatalf("first field:\n%q\nwant\n%q", got[0], want)
		}
		got = got[1:]
	}
	if !strings.HasPrefix(got[0], "Received: from mta.example.org") {
		t.Fatalf("the field after Authentication-Results is %q, want the server's Received", got[0])
	}
	var rest []string
	for _, f := range fields(t, []byte(sent)) {
		if !slices.Contains(removed, f) {
			rest = append(rest, f)
		}
	}
	if !slices.Equal(got[1:], rest) {
		t.Fatalf("fields after Received:\n%q\nwant\n%q", got[1:], rest)
	}
	if strings.Count(string(m.Data), "Authentication-Results: mx.example.test;") > 1 {
		t.Fatalf("more than one field of ours:\n%s", m.Data)
	}
}

func TestHeaderText(t *testing.T) {
	for _, tc := range []struct {
		name string
		null bool // MAIL FROM:<>
		seed seed
		want string
	}{{
		name: "spf pass for the MAIL FROM address",
		seed: seed{spf: &spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org"}},
		want: "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=alice@example.org\r\n",
	}, {
		name: "spf of the HELO name for the null sender, with a reason",
		null: true,
		seed: seed{spf: &spf.Verdict{Result: authres.ResultSoftFail, Identity: "helo", Domain: "mta.example.org", Sender: "postmaster@mta.example.org", Reason: "matched ~all"}},
		want: "Authentication-Results: mx.example.test;\r\n\tspf=softfail reason=\"matched ~all\" smtp.helo=mta.example.org\r\n",
	}, {
		name: "two dkim signatures, one failing with a reason",
		seed: seed{dkimR: true, dkim: []dkim.Signature{
			{Domain: "example.org", Selector: "sel1", Identifier: "@example.org", Result: authres.ResultPass},
			{Domain: "lists.example.net", Selector: "s2024", Result: authres.ResultFail, Reason: "body hash did not verify"},
		}},
		want: "Authentication-Results: mx.example.test;\r\n" +
			"\tdkim=pass header.d=example.org header.i=@example.org header.s=sel1;\r\n" +
			"\tdkim=fail reason=\"body hash did not verify\" header.d=lists.example.net header.s=s2024\r\n",
	}, {
		name: "an unsigned message: dkim=none",
		seed: seed{dkimR: true},
		want: "Authentication-Results: mx.example.test;\r\n\tdkim=none\r\n",
	}, {
		name: "dmarc fail",
		seed: seed{dmarc: &dmarc.Verdict{Result: authres.ResultFail, From: "example.org", Policy: "reject", Disposition: "quarantine", Reason: "neither SPF nor DKIM aligned"}},
		want: "Authentication-Results: mx.example.test;\r\n\tdmarc=fail reason=\"neither SPF nor DKIM aligned\" header.from=example.org\r\n",
	}, {
		name: "all three, in the order spf, dkim, dmarc",
		seed: seed{
			spf:   &spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org"},
			dkimR: true,
			dkim:  []dkim.Signature{{Domain: "example.org", Selector: "sel1", Result: authres.ResultPass}},
			dmarc: &dmarc.Verdict{Result: authres.ResultPass, From: "example.org", Policy: "reject", SPFAligned: true, DKIMAligned: true},
		},
		want: "Authentication-Results: mx.example.test;\r\n" +
			"\tspf=pass smtp.mailfrom=alice@example.org;\r\n" +
			"\tdkim=pass header.d=example.org header.s=sel1;\r\n" +
			"\tdmarc=pass header.from=example.org\r\n",
	}, {
		name: "a result that is no keyword is written as temperror",
		seed: seed{dmarc: &dmarc.Verdict{Result: "", From: "example.org"}},
		want: "Authentication-Results: mx.example.test;\r\n\tdmarc=temperror header.from=example.org\r\n",
	}, {
		// The signature's s= and the reason come from the message: a
		// backslash could end authres's quoted string early and a
		// line break start a field of its own.
		name: "values from the message cannot add results",
		seed: seed{dkimR: true, dkim: []dkim.Signature{
			{Domain: "evil.example", Selector: `x\" ; dmarc=pass header.from=bank.example`, Result: authres.ResultPermError, Reason: "bad\r\nX-Injected: yes\\"},
		}},
		want: "Authentication-Results: mx.example.test;\r\n" +
			"\tdkim=permerror reason=\"bad  X-Injected: yes/\" header.d=evil.example header.s=\"x/\\\" ; dmarc=pass header.from=bank.example\"\r\n",
	}, {
		name: "nothing ran: no field",
		seed: seed{},
		want: "",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			sender := "alice@example.org"
			if tc.null {
				sender = ""
			}
			m := send(t, harness(t, tc.seed, ``), sender, body)
			expectHeader(t, m, tc.want, body)
			if tc.want == "" && strings.Contains(string(m.Data), "Authentication-Results") {
				t.Fatalf("a field was written:\n%s", m.Data)
			}
		})
	}
}

func TestForgedFieldsAreRemovedOthersKept(t *testing.T) {
	forged := []string{
		"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=ceo@bank.example\r\n",
		"Authentication-Results: MX.Example.TEST.;\r\n\tdkim=pass header.d=bank.example\r\n",          // case and a trailing dot
		"Authentication-Results: (trust me) mx.example.test; dmarc=pass header.from=bank.example\r\n", // a comment first
		"Authentication-Results: mx.example.test 2; dmarc=pass\r\n",                                   // authres.Parse refuses version 2
		"Authentication-Results: \"mx.example.test\"; none\r\n",                                       // a quoted id
		"authentication-results: mx.example.test; arc=pass\r\n",                                       // the name in lower case
	}
	kept := []string{
		"Authentication-Results: other.example.net; dkim=pass header.d=example.org\r\n",
		"Authentication-Results: mx.example.test.evil.example; spf=pass smtp.mailfrom=ceo@bank.example\r\n",
		"X-Note: mx.example.test; spf=pass\r\n",
	}
	sent := kept[0] + forged[0] + forged[1] + kept[1] + forged[2] + forged[3] + forged[4] + kept[2] + forged[5] + body
	for _, tc := range []struct {
		name string
		seed seed
		want string
	}{
		{"with results", seed{spf: &spf.Verdict{Result: authres.ResultFail, Identity: "mailfrom", Domain: "bank.example", Sender: "ceo@bank.example"}},
			"Authentication-Results: mx.example.test;\r\n\tspf=fail smtp.mailfrom=ceo@bank.example\r\n"},
		{"with nothing to report", seed{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := send(t, harness(t, tc.seed, ``), "ceo@bank.example", sent)
			expectHeader(t, m, tc.want, sent, forged...)
			if got := m.Notes[authresults.NoteRemoved.Name()]; got != len(forged) {
				t.Fatalf("note %s = %v, want %d", authresults.NoteRemoved, got, len(forged))
			}
		})
	}
}

func TestNoForgedFieldNoNote(t *testing.T) {
	m := send(t, harness(t, seed{dkimR: true}, ``), "alice@example.org", body)
	if _, ok := m.Notes[authresults.NoteRemoved.Name()]; ok {
		t.Fatalf("note %s set on a message without forged fields: %v", authresults.NoteRemoved, m.Notes)
	}
}

func TestAuthservIDSetting(t *testing.T) {
	// The configured id is written in its canonical form, and it is the id
	// whose fields are removed: the listener's hostname is then foreign.
	sent := "Authentication-Results: mx.example.test; spf=pass\r\n" +
		"Authentication-Results: bücher.example; spf=pass\r\n" + body
	h := harness(t, seed{dkimR: true}, `authserv_id = "Bücher.Example."`)
	m := send(t, h, "alice@example.org", sent)
	want := "Authentication-Results: xn--bcher-kva.example;\r\n\tdkim=none\r\n"
	expectHeader(t, m, want, sent, "Authentication-Results: bücher.example; spf=pass\r\n")
}

func TestBadAuthservIDIsRefused(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{`authserv_id = "mx example.org"`, `authserv_id = "mx example.org": want a domain name`},
		{`authserv_id = "[192.0.2.1]"`, `authserv_id = "[192.0.2.1]": want a domain name`},
		{`authserv_id = "mx;example.org"`, `want a domain name naming this server`},
		{`authserv_id = "\u212aernel.example"`, `want a domain name`}, // the Kelvin sign
		{`authserv_id = 1`, `authserv_id`},
		{`authservid = "mx.example.org"`, `unknown key`},
	} {
		hookstest.ExpectBuildError(t, "authresults", tc.settings, tc.want)
	}
}

func TestHostnameThatIsNoDomainDefers(t *testing.T) {
	h := harness(t, seed{dkimR: true}, ``)
	h.Hostname = "mail server"
	s := h.Connect("192.0.2.1")
	hookstest.ExpectReply(t, s.Send("alice@example.org", []string{"bob@example.test"}, body), "451 4.3.0 Local error in processing; try again later")
	if n := len(h.Queued()); n != 0 {
		t.Fatalf("queued %d messages without the header, want none", n)
	}
}

func TestReadmeExample(t *testing.T) {
	p := hookstest.BuildAs[*authresults.Plugin](t, "authresults", ``)
	if p == nil {
		t.Fatal("no plugin")
	}
	hookstest.BuildFromReadme(t, "authresults", "README.md")
}
