package wire_test

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/policyd/wire"
)

func TestReadRequestSeveralOnOneConnection(t *testing.T) {
	in := "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=a@example.test\nccert_subject=CN=x=y\n\n" +
		"request=smtpd_access_policy\r\nrecipient=b@example.test\r\nrecipient=c@example.test\r\n\r\n"
	r := bufio.NewReader(strings.NewReader(in))
	req, err := wire.ReadRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if req["recipient"] != "a@example.test" || req["protocol_state"] != "RCPT" || req["ccert_subject"] != "CN=x=y" {
		t.Errorf("first request = %v", req)
	}
	if v, ok := req["sender"]; !ok || v != "" {
		t.Errorf("an empty value must be kept as empty: %q, %v", v, ok)
	}
	req, err = wire.ReadRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if req["recipient"] != "c@example.test" {
		t.Errorf("second request (CRLF, a name twice: the last wins) = %v", req)
	}
	if _, err := wire.ReadRequest(r); err != io.EOF {
		t.Errorf("after the last request: %v, want io.EOF", err)
	}
}

func TestReadRequestRefusesWhatIsNotTheProtocol(t *testing.T) {
	for name, in := range map[string]string{
		"no equals sign":     "request=smtpd_access_policy\nGET / HTTP/1.0\n\n",
		"empty name":         "=value\n\n",
		"empty request":      "\n",
		"cut off":            "request=smtpd_access_policy\nrecipient=a@example.test\n",
		"cut in a line":      "request=smtpd_access_policy\nrecip",
		"line too long":      "recipient=" + strings.Repeat("a", wire.MaxLineBytes) + "\n\n",
		"too many attribute": strings.Repeat("a=b\n", wire.MaxAttributes+1) + "\n",
	} {
		_, err := wire.ReadRequest(bufio.NewReader(strings.NewReader(in)))
		if !errors.Is(err, wire.ErrProtocol) {
			t.Errorf("%s: err = %v, want a protocol error", name, err)
		}
	}
}

func TestWriteActionAndRequest(t *testing.T) {
	var b strings.Builder
	if err := wire.WriteAction(&b, "550 5.7.1 two\nlines"); err != nil {
		t.Fatal(err)
	}
	if b.String() != "action=550 5.7.1 two lines\n\n" {
		t.Errorf("WriteAction wrote %q", b.String())
	}
	b.Reset()
	req := wire.Request{"recipient": "a@example.test", "request": "smtpd_access_policy", "client_address": "192.0.2.1"}
	if _, err := req.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	want := "request=smtpd_access_policy\nclient_address=192.0.2.1\nrecipient=a@example.test\n\n"
	if b.String() != want {
		t.Errorf("WriteTo wrote %q, want %q", b.String(), want)
	}
	if _, err := (wire.Request{"sender": "a\nb"}).WriteTo(&b); err == nil {
		t.Error("a value with a newline was written")
	}
	action, err := wire.ReadAction(bufio.NewReader(strings.NewReader("action=DEFER_IF_PERMIT greylisted\n\n")))
	if err != nil || action != "DEFER_IF_PERMIT greylisted" {
		t.Errorf("ReadAction = %q, %v", action, err)
	}
	if _, err := wire.ReadAction(bufio.NewReader(strings.NewReader("foo=bar\n\n"))); err == nil {
		t.Error("an answer without action was read")
	}
}

func TestRefusal(t *testing.T) {
	for action, want := range map[string]bool{
		"DUNNO": false, "OK": false, "dunno": false, "PREPEND X-Test: 1": false, "WARN hm": false, "HOLD": false,
		"REJECT": true, "reject no": true, "DEFER_IF_PERMIT greylisted": true, "DEFER": true,
		"550 5.7.1 relaying denied": true, "451 4.7.1 later": true, "450": true, "250 fine": false, "55 x": false,
	} {
		if got := wire.Refusal(action); got != want {
			t.Errorf("Refusal(%q) = %v, want %v", action, got, want)
		}
	}
}

// ReadAction reads a line longer than the reader's buffer up to its limit,
// takes the first action, and tells a closed connection (io.EOF) from a
// garbled answer.
func TestReadActionLimitsAndErrors(t *testing.T) {
	long := "REJECT " + strings.Repeat("x", 2000)
	r := bufio.NewReaderSize(strings.NewReader("action="+long+"\naction=DUNNO\n\n"), 16)
	if action, err := wire.ReadAction(r); err != nil || action != long {
		t.Errorf("ReadAction of a 2000-byte line = %.20q, %v", action, err)
	}
	if _, err := wire.ReadAction(bufio.NewReader(strings.NewReader(""))); err != io.EOF {
		t.Errorf("ReadAction at the end: %v, want io.EOF", err)
	}
	for name, in := range map[string]string{
		"line too long": "action=" + strings.Repeat("x", 4096) + "\n\n",
		"cut off":       "action=DUNNO\n",
		"empty answer":  "\n",
		"no equals":     "Hello there\n\n",
	} {
		_, err := wire.ReadAction(bufio.NewReader(strings.NewReader(in)))
		var pe *wire.ProtocolError
		if !errors.As(err, &pe) || !errors.Is(err, wire.ErrProtocol) {
			t.Errorf("%s: err = %v, want a *ProtocolError", name, err)
		}
	}
}
