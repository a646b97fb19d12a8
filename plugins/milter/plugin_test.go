package milter_test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	dmilter "github.com/d--j/go-milter"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/milter"
	"github.com/sluice-mta/sluice/scanner/scannertest"
)

// testMilter is a milter written for the tests with
// github.com/d--j/go-milter's server (it speaks milter protocol 6, as
// libmilter does; the client is another library, emersion/go-milter): each
// callback does what the test set, and what it saw is recorded.
type testMilter struct {
	dmilter.NoOpMilter
	t *script
}

// script is what the test milter does, shared by its sessions.
type script struct {
	mu       sync.Mutex
	mail     func(from string) *dmilter.Response
	rcpt     func(rcpt string) *dmilter.Response
	body     func(m dmilter.Modifier) *dmilter.Response
	hang     bool
	seenHelo string
	seenFrom string
	seenHdr  []string
	seenBody string
	seenAuth string
}

func (m *testMilter) Connect(host, family string, port uint16, addr string, mod dmilter.Modifier) (*dmilter.Response, error) {
	if m.t.hang {
		time.Sleep(3 * time.Second)
	}
	return dmilter.RespContinue, nil
}

func (m *testMilter) Helo(name string, mod dmilter.Modifier) (*dmilter.Response, error) {
	m.t.mu.Lock()
	m.t.seenHelo = name
	m.t.mu.Unlock()
	return dmilter.RespContinue, nil
}

func (m *testMilter) MailFrom(from, args string, mod dmilter.Modifier) (*dmilter.Response, error) {
	m.t.mu.Lock()
	m.t.seenFrom = from
	m.t.seenAuth = mod.Get(dmilter.MacroAuthAuthen)
	m.t.mu.Unlock()
	if m.t.mail != nil {
		return m.t.mail(from), nil
	}
	return dmilter.RespContinue, nil
}

func (m *testMilter) RcptTo(rcpt, args string, mod dmilter.Modifier) (*dmilter.Response, error) {
	if m.t.rcpt != nil {
		return m.t.rcpt(rcpt), nil
	}
	return dmilter.RespContinue, nil
}

func (m *testMilter) Header(name, value string, mod dmilter.Modifier) (*dmilter.Response, error) {
	m.t.mu.Lock()
	m.t.seenHdr = append(m.t.seenHdr, name+": "+value)
	m.t.mu.Unlock()
	return dmilter.RespContinue, nil
}

func (m *testMilter) BodyChunk(chunk []byte, mod dmilter.Modifier) (*dmilter.Response, error) {
	m.t.mu.Lock()
	m.t.seenBody += string(chunk)
	m.t.mu.Unlock()
	return dmilter.RespContinue, nil
}

func (m *testMilter) EndOfMessage(mod dmilter.Modifier) (*dmilter.Response, error) {
	if m.t.body != nil {
		return m.t.body(mod), nil
	}
	return dmilter.RespAccept, nil
}

func reply(code uint16, text string) *dmilter.Response {
	r, err := dmilter.RejectWithCodeAndReason(code, text)
	if err != nil {
		panic(err)
	}
	return r
}

// serve runs the test milter on loopback and returns its address.
func serve(t *testing.T, sc *script) string {
	t.Helper()
	return serveB(t, sc)
}

func serveB(t testing.TB, sc *script) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := dmilter.NewServer(
		dmilter.WithMilter(func() dmilter.Milter { return &testMilter{t: sc} }),
		dmilter.WithActions(dmilter.OptAddHeader|dmilter.OptChangeHeader|dmilter.OptAddRcpt|dmilter.OptRemoveRcpt|
			dmilter.OptChangeBody|dmilter.OptChangeFrom|dmilter.OptQuarantine),
	)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "inet:" + ln.Addr().String()
}

func harness(t *testing.T, settings string) *hookstest.Harness {
	t.Helper()
	return scannertest.Harness(t, "milter", settings)
}

const msg = "From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\nX-Remove: me\r\n\r\nold body\r\n"

// Every end-of-message action, applied to what the queue gets.
func TestModifications(t *testing.T) {
	sc := &script{body: func(m dmilter.Modifier) *dmilter.Response {
		for _, err := range []error{
			m.AddHeader("X-Milter", "seen"),
			m.InsertHeader(0, "X-First", "on top"),
			m.ChangeHeader(1, "Subject", "changed"),
			m.ChangeHeader(1, "X-Remove", ""),
			m.AddRecipient("<added@example.test>", ""),
			m.DeleteRecipient("<c@example.test>"),
			m.ChangeFrom("<new@example.org>", ""),
			m.ReplaceBody(strings.NewReader("new body\nsecond line\n")),
			m.Quarantine("looks odd"),
		} {
			if err != nil {
				panic(err)
			}
		}
		return dmilter.RespAccept
	}}
	h := harness(t, `address = "`+serve(t, sc)+`"`)
	rep := h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test", "c@example.test"}, msg)
	hookstest.Expect(t, rep, 250)
	q := h.Queued()[0]
	want := "From: a@example.org\r\nTo: b@example.test\r\nSubject: changed\r\nX-Milter: seen\r\nX-Quarantine: looks odd (milter milter)\r\n\r\nnew body\r\nsecond line\r\n"
	if got := string(q.Data); !strings.HasPrefix(got, "X-First: on top\r\nReceived: ") || q.WithoutReceived() != "X-First: on top\r\n"+want {
		t.Errorf("queued:\n%q\nwant X-First, Received, then\n%q", got, want)
	}
	if q.Sender != "new@example.org" || strings.Join(q.Recipients, ",") != "b@example.test,added@example.test" {
		t.Errorf("envelope: %q %v", q.Sender, q.Recipients)
	}
	if q.Notes["milter.quarantine"] != "looks odd" {
		t.Errorf("notes: %v", q.Notes)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.seenHelo != "client.example.test" || sc.seenFrom != "<a@example.org>" || sc.seenBody != "old body\r\n" {
		t.Errorf("milter saw helo %q, from %q, body %q", sc.seenHelo, sc.seenFrom, sc.seenBody)
	}
	if len(sc.seenHdr) < 4 || sc.seenHdr[len(sc.seenHdr)-2] != "Subject: hello" {
		t.Errorf("milter saw headers %q", sc.seenHdr)
	}
}

// A refusal at RCPT refuses that recipient only; the message goes to the
// others.
func TestRcptReject(t *testing.T) {
	sc := &script{rcpt: func(r string) *dmilter.Response {
		if strings.Contains(r, "bad") {
			return dmilter.RespReject
		}
		return dmilter.RespContinue
	}}
	h := harness(t, `address = "`+serve(t, sc)+`"`)
	tr := h.Connect("192.0.2.1:40000").SendAll("a@example.org", []string{"bad@example.test", "b@example.test"}, msg)
	if len(tr.Rcpt) != 2 {
		t.Fatalf("MAIL: %q", tr.Mail.String())
	}
	hookstest.ExpectReply(t, tr.Rcpt[0], "550 5.7.1 Command rejected")
	hookstest.Expect(t, tr.Rcpt[1], 250)
	hookstest.Expect(t, tr.Data, 250)
	if q := h.Queued(); len(q) != 1 || strings.Join(q[0].Recipients, ",") != "b@example.test" {
		t.Errorf("queued %+v", q)
	}
}

func TestReplyCodes(t *testing.T) {
	sc := &script{mail: func(from string) *dmilter.Response {
		if strings.Contains(from, "grey") {
			return reply(451, "4.7.1 Greylisted by the milter")
		}
		if strings.Contains(from, "temp") {
			return dmilter.RespTempFail
		}
		return dmilter.RespContinue
	}}
	h := harness(t, `address = "`+serve(t, sc)+`"`)
	s := h.Connect("192.0.2.1:40000")
	hookstest.ExpectReply(t, s.Send("grey@example.org", []string{"b@example.test"}, msg), "451 4.7.1 Greylisted by the milter")
	hookstest.ExpectReply(t, s.Send("temp@example.org", []string{"b@example.test"}, msg), "451 4.7.1 Service unavailable - try again later")
	hookstest.Expect(t, s.Send("ok@example.org", []string{"b@example.test"}, msg), 250)
	if n := len(h.Queued()); n != 1 {
		t.Errorf("%d queued, want 1", n)
	}
}

func TestEndOfMessageVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resp   *dmilter.Response
		reply  string
		queued int
	}{
		{"reject", dmilter.RespReject, "550 5.7.1 Command rejected", 0},
		{"tempfail", dmilter.RespTempFail, "451 4.7.1 Service unavailable - try again later", 0},
		{"replycode", reply(554, "5.7.0 Virus found"), "554 5.7.0 Virus found", 0},
		{"discard", dmilter.RespDiscard, "250 ", 0},
		{"continue", dmilter.RespContinue, "250 ", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := &script{body: func(dmilter.Modifier) *dmilter.Response { return tc.resp }}
			h := harness(t, `address = "`+serve(t, sc)+`"`)
			s := h.Connect("192.0.2.1:40000")
			rep := s.Send("a@example.org", []string{"b@example.test"}, msg).String()
			if tc.reply == "250 " && !strings.HasPrefix(rep, "250 ") || tc.reply != "250 " && rep != tc.reply {
				t.Errorf("reply %q, want %q", rep, tc.reply)
			}
			// The session goes on: a second message on the connection.
			sc.body = nil
			if rep := s.Send("a@example.org", []string{"b@example.test"}, msg).String(); !strings.HasPrefix(rep, "250 ") {
				t.Errorf("second message: %q", rep)
			}
			if n := len(h.Queued()); n != tc.queued+1 {
				t.Errorf("%d queued, want %d", n, tc.queued+1)
			}
		})
	}
}

func TestMilterDown(t *testing.T) {
	dead := "inet:" + scannertest.Closed(t)
	h := harness(t, `address = "`+dead+`"`)
	s := h.Connect("192.0.2.1:40000")
	if g := s.Greeting(); g.Code/100 != 4 {
		t.Errorf("greeting %q, want a temporary refusal", g.String())
	}

	h = harness(t, `address = "`+dead+`"`+"\ndefault_action = \"accept\"")
	hookstest.Expect(t, h.Connect("192.0.2.1:40000").Send("a@example.org", []string{"b@example.test"}, msg), 250)
}

func TestMilterHangs(t *testing.T) {
	sc := &script{hang: true}
	h := harness(t, `address = "`+serve(t, sc)+`"`+"\ncommand_timeout = \"300ms\"")
	start := time.Now()
	s := h.Connect("192.0.2.1:40000")
	if g := s.Greeting(); g.Code/100 != 4 {
		t.Errorf("greeting %q, want a temporary refusal", g.String())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s with command_timeout 300ms", d)
	}
}

func TestSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "milter", ``, `address is required`)
	hookstest.ExpectBuildError(t, "milter", `address = "inet:8891@127.0.0.1"`+"\ndefault_action = \"reject\"", `default_action = "reject"`)
	_ = milter.NoteQuarantine
}
