package smtpforward_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/smtpforward"
	"github.com/sluice-mta/sluice/queue/queuetest"
)

// withRoutes builds smtpforward with settings and, when routes is set,
// fallback_queue and dsn_queue pointing at two recorders, as the config
// builder wires them (hooks.Router).
func withRoutes(t *testing.T, settings string, routes bool) (*hookstest.Harness, *hookstest.QueueRecorder, *hookstest.QueueRecorder, *hookstest.LogBuffer) {
	t.Helper()
	fallback, dsn := &hookstest.QueueRecorder{}, &hookstest.QueueRecorder{}
	if routes {
		settings += "\nfallback_queue = \"retry\"\ndsn_queue = \"bounces\""
	}
	p := hookstest.BuildAs[*smtpforward.Plugin](t, "smtpforward", settings)
	if routes {
		if err := p.SetRoutes(map[string]hooks.Queue{"retry": fallback, "bounces": dsn}); err != nil {
			t.Fatal(err)
		}
	}
	h := hookstest.New(t, hookstest.Plugin("accept", acceptAll{}), hookstest.Plugin("smtpforward", p))
	logs := &hookstest.LogBuffer{}
	h.Logger = logs.Logger()
	return h, fallback, dsn, logs
}

var (
	userUnknown = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	mailboxFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}
)

// TestSomeRecipientsRefusedAtRcpt: SMTP refuses one recipient for good and
// one for now at RCPT, and accepts the third. With routes the client gets
// 250, the downstream gets the message once for the good recipient, the
// fallback queue gets it for the one refused for now. Without routes
// nothing is sent and the client is told to retry.
func TestSomeRecipientsRefusedAtRcpt(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{RcptErr: map[string]*smtp.SMTPError{
		"nobody@example.test": userUnknown, "full@example.test": mailboxFull,
	}})
	to := []string{"alice@example.test", "nobody@example.test", "full@example.test"}

	h, _, _, _ := withRoutes(t, `host = "`+d.Addr+`"`, false)
	rep := h.Connect("192.0.2.1").Send("a@example.org", to, body)
	hookstest.ExpectReply(t, rep, "451 4.3.0 Downstream server refused <nobody@example.test>: 550 5.1.1 User unknown (and 1 more); 1 of 3 recipients accepted; try again later")
	if n := len(d.Messages()); n != 0 {
		t.Fatalf("without routes the downstream got %d messages; want none (the retry would duplicate them)", n)
	}

	h, fallback, bounces, logs := withRoutes(t, `host = "`+d.Addr+`"`, true)
	rep = h.Connect("192.0.2.1").Send("a@example.org", to, body)
	hookstest.Expect(t, rep, 250, "queued as")
	got := d.Messages()
	if len(got) != 1 || strings.Join(got[0].To, " ") != "alice@example.test" {
		t.Fatalf("downstream got %+v; want one message to alice", got)
	}
	fb := fallback.Messages()
	if len(fb) != 1 || strings.Join(fb[0].Recipients, " ") != "full@example.test" || fb[0].Sender != "a@example.org" {
		t.Fatalf("fallback queue got %+v; want one message from a@example.org to full@example.test", fb)
	}
	if string(fb[0].Data) != string(got[0].Data) {
		t.Errorf("the fallback copy differs from the delivered one:\n%q\n%q", fb[0].Data, got[0].Data)
	}
	dsn := bounces.Messages()
	if len(dsn) != 1 || dsn[0].Sender != "" || strings.Join(dsn[0].Recipients, " ") != "a@example.org" {
		t.Fatalf("dsn queue got %+v; want one notification from <> to a@example.org", dsn)
	}
	for _, want := range []string{
		"\r\nFinal-Recipient: rfc822; nobody@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n",
		"\r\nReporting-MTA: dns; mx.example.test\r\n",
		"\r\nContent-Type: message/rfc822\r\n",
	} {
		if !strings.Contains(string(dsn[0].Data), want) {
			t.Errorf("the notification lacks %q:\n%s", want, dsn[0].Data)
		}
	}
	if strings.Contains(string(dsn[0].Data), "full@example.test") {
		t.Errorf("the notification names the recipient refused for now, which the fallback retries:\n%s", dsn[0].Data)
	}
	if !strings.Contains(logs.String(), `detail="delivered to 1 of 3 recipients; 1 refused for now handed to \"retry\"; 1 refused for good: notification to <a@example.org> handed to \"bounces\"; refused: <full@example.test> 452 4.2.2 Mailbox full, <nobody@example.test> 550 5.1.1 User unknown"`) {
		t.Errorf("log lacks the settlement:\n%s", logs)
	}
}

// TestLMTPPerRecipientRepliesAfterData: LMTP delivers to one recipient and
// refuses another after the message. Without routes the client is told to
// retry and the log warns of the duplicate; with a fallback the recipient
// refused for now goes there alone and the client gets 250.
func TestLMTPPerRecipientRepliesAfterData(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{LMTP: true, DataErr: map[string]*smtp.SMTPError{"full@example.test": mailboxFull}})
	to := []string{"alice@example.test", "full@example.test"}

	h, _, _, logs := withRoutes(t, "lmtp = true\nhost = \""+d.Addr+`"`, false)
	rep := h.Connect("192.0.2.1").Send("a@example.org", to, body)
	hookstest.Expect(t, rep, 451, "1 of 2 recipients accepted")
	if !strings.Contains(logs.String(), "no fallback_queue for the recipients refused for now, so the client is told to retry and <alice@example.test> will get the message again (possible duplicate)") {
		t.Errorf("log does not warn of the duplicate:\n%s", logs)
	}

	h, fallback, _, _ := withRoutes(t, "lmtp = true\nhost = \""+d.Addr+`"`, true)
	rep = h.Connect("192.0.2.1").Send("a@example.org", to, body)
	hookstest.Expect(t, rep, 250, "queued as")
	fb := fallback.Messages()
	if len(fb) != 1 || strings.Join(fb[0].Recipients, " ") != "full@example.test" {
		t.Fatalf("fallback queue got %+v; want one message to full@example.test", fb)
	}
}

// TestNoRecipientDelivered: when the downstream took the message for no
// one, the routes are not used: the whole message is refused or deferred.
func TestNoRecipientDelivered(t *testing.T) {
	d := queuetest.StartDownstream(t, queuetest.Options{RcptErr: map[string]*smtp.SMTPError{
		"nobody@example.test": userUnknown, "full@example.test": mailboxFull,
	}})
	h, fallback, dsn, _ := withRoutes(t, `host = "`+d.Addr+`"`, true)
	rep := h.Connect("192.0.2.1").Send("a@example.org", []string{"nobody@example.test"}, body)
	hookstest.ExpectReply(t, rep, "550 5.1.1 Downstream server refused <nobody@example.test>: 550 5.1.1 User unknown")
	rep = h.Connect("192.0.2.1").Send("a@example.org", []string{"nobody@example.test", "full@example.test"}, body)
	hookstest.Expect(t, rep, 451, "try again later")
	if len(fallback.Messages())+len(dsn.Messages())+len(d.Messages()) != 0 {
		t.Fatalf("something was handed on: fallback %d, dsn %d, downstream %d", len(fallback.Messages()), len(dsn.Messages()), len(d.Messages()))
	}
}

// TestDSNOfferedOnlyWithADSNQueue: the listener offers DSN when the plugin
// can send the notifications itself.
func TestDSNOfferedOnlyWithADSNQueue(t *testing.T) {
	for _, tc := range []struct {
		settings string
		want     bool
	}{
		{``, false},
		{`fallback_queue = "retry"`, true}, // dsn_queue defaults to fallback_queue
		{`dsn_queue = "bounces"`, true},
	} {
		p := hookstest.BuildAs[*smtpforward.Plugin](t, "smtpforward", tc.settings)
		if got := p.CarriesDSN(); got != tc.want {
			t.Errorf("%q: CarriesDSN() = %v; want %v", tc.settings, got, tc.want)
		}
	}
}
