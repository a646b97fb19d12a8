package lmtp_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/lmtp"
	"github.com/sluice-mta/sluice/queue/queuetest"
	"github.com/sluice-mta/sluice/transaction"
)

type acceptAll struct{}

func (acceptAll) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Accept("")
}

// remoteIDs records the lmtp.remote_id note at queue_post.
type remoteIDs struct {
	mu  sync.Mutex
	ids []string
}

func (r *remoteIDs) QueuePost(_ context.Context, _ *connection.Connection, tx *transaction.Transaction) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, lmtp.NoteRemoteID.Get(&tx.Notes))
}

const body = "Subject: hi\r\n\r\nbody\r\n.dot line\r\n"

// send delivers one message through a chain of acceptAll and lmtp built
// from settings.
func send(t *testing.T, settings string, to ...string) hooks.Reply {
	t.Helper()
	p := hookstest.Build(t, "lmtp", settings)
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("lmtp", p))
	rep := h.Connect("192.0.2.1").Send("a@example.org", to, body)
	t.Logf("reply: %s", rep)
	return rep
}

// TestDeliversOverLMTPByDefault: without lmtp = true in the table, the
// plugin speaks LMTP to a real go-smtp LMTP server, over TCP and a unix
// socket, and the message arrives exactly.
func TestDeliversOverLMTPByDefault(t *testing.T) {
	for _, unix := range []bool{false, true} {
		d := queuetest.StartDownstream(t, queuetest.Options{LMTP: true, Unix: unix, QueuedAs: "4dZ3Kx0Qm9z7"})
		p := hookstest.Build(t, "lmtp", `host = "`+d.Addr+`"`+"\nhelo = \"mx.example.test\"")
		ids := &remoteIDs{}
		h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("lmtp", p), hookstest.Plugin("ids", ids))
		rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"b@example.test", "c@example.test"}, body)
		hookstest.Expect(t, rep, 250, "queued as")
		got := d.Messages()
		if len(got) != 1 {
			t.Fatalf("unix %v: the LMTP server got %d messages; want 1", unix, len(got))
		}
		m := got[0]
		if m.Helo != "mx.example.test" || m.From != "a@example.org" || strings.Join(m.To, " ") != "b@example.test c@example.test" {
			t.Errorf("unix %v: envelope: helo %q from %q to %v", unix, m.Helo, m.From, m.To)
		}
		if data := string(m.Data); !strings.HasPrefix(data, "Received: ") || !strings.HasSuffix(data, "\r\n"+body) {
			t.Errorf("unix %v: the LMTP server got %q", unix, data)
		}
		if len(ids.ids) != 1 || ids.ids[0] != "4dZ3Kx0Qm9z7" {
			t.Errorf("unix %v: note %s = %v; want [4dZ3Kx0Qm9z7]", unix, lmtp.NoteRemoteID, ids.ids)
		}
	}
}

// TestPerRecipientReplies: LMTP's replies after the message decide, one
// per recipient.
func TestPerRecipientReplies(t *testing.T) {
	unknown := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	quota := &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Over quota"}
	for _, tc := range []struct {
		name string
		errs map[string]*smtp.SMTPError
		to   []string
		code int
		text string
	}{
		{"every recipient refused", map[string]*smtp.SMTPError{"b@example.test": unknown}, []string{"b@example.test"}, 550, "5.1.1 Downstream server refused <b@example.test>: 550 5.1.1 <b@example.test> No such user"},
		{"one over quota", map[string]*smtp.SMTPError{"c@example.test": quota}, []string{"b@example.test", "c@example.test"}, 451, "4.3.0 Downstream server refused <c@example.test>: 452 4.2.2 <c@example.test> Over quota; 1 of 2 recipients accepted; try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := queuetest.StartDownstream(t, queuetest.Options{LMTP: true, DataErr: tc.errs})
			hookstest.Expect(t, send(t, `host = "`+d.Addr+`"`, tc.to...), tc.code, tc.text)
		})
	}
}

// TestPostfixSMTPSinkLMTP runs against Postfix's smtp-sink in LMTP mode.
func TestPostfixSMTPSinkLMTP(t *testing.T) {
	addr := queuetest.SMTPSink(t, "-L")
	hookstest.Expect(t, send(t, `host = "`+addr+`"`, "b@example.test"), 250, "queued as")
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, wantErr string }{
		{`lmtp = false`, "lmtp = false: this plugin speaks LMTP; use the smtpforward plugin"},
		{`lmtp = "yes"`, "lmtp"},
		{`host = "127.0.0.1"`, "host"},
		{`host = "unix:relative.sock"`, "host"},
		{"host = \"unix:/run/lmtp.sock\"\nstarttls = \"required\"", "starttls"},
		{`helo = "two words"`, "helo"},
		{`data_timeout = "0s"`, "data_timeout"},
		{`hots = "x:1"`, `unknown key "hots"`},
	} {
		hookstest.ExpectBuildError(t, "lmtp", tc.settings, tc.wantErr)
	}
	for _, ok := range []string{"", "lmtp = true", `host = "unix:/var/run/dovecot/lmtp"`} {
		hookstest.Build(t, "lmtp", ok)
	}
}

// TestDefaultHost: with no table at all the plugin delivers to port 24 on
// loopback, the LMTP port.
func TestDefaultHost(t *testing.T) {
	if lmtp.DefaultHost != "127.0.0.1:24" {
		t.Errorf("DefaultHost = %q; want 127.0.0.1:24", lmtp.DefaultHost)
	}
	readme := hookstest.ReadmeExamples(t, "README.md")[0]
	if !strings.Contains(readme, "[plugins.lmtp]") {
		t.Errorf("the README example has no [plugins.lmtp] table:\n%s", readme)
	}
}

func TestReadmeExample(t *testing.T) {
	hookstest.BuildFromReadme(t, "lmtp", "README.md")
}
