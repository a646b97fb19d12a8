package spf_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/plugins/spf"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

const msg = "Subject: hi\r\n\r\nhi\r\n"

// zone is the DNS the tests see: one domain per SPF result.
var zone = []string{
	`example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"`,
	`example.org. 300 IN TXT "an unrelated TXT record"`,
	`soft.example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ~all"`,
	`neutral.example.org. 300 IN TXT "v=spf1 ?all"`,
	`nospf.example.org. 300 IN A 192.0.2.99`,
	`two.example.org. 300 IN TXT "v=spf1 -all"`,
	`two.example.org. 300 IN TXT "v=spf1 +all"`,
	`bad.example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 frobnicate -all"`,
	`client.example.net. 300 IN TXT "v=spf1 a -all"`,
	`client.example.net. 300 IN A 198.51.100.7`,
	`mech.example.org. 300 IN TXT "v=spf1 include:_spf.example.net a:web.example.org mx -all"`,
	`_spf.example.net. 300 IN TXT "v=spf1 ip4:203.0.113.1 -all"`,
	`web.example.org. 300 IN A 203.0.113.2`,
	`mech.example.org. 300 IN MX 10 mx1.mech.example.org.`,
	`mx1.mech.example.org. 300 IN A 203.0.113.3`,
	`xn--bcher-kva.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
}

// start returns the DNS server with zone, broken.example.org answering
// SERVFAIL and slow.example.org never answering.
func start(t testing.TB) *dnstest.Server {
	srv := dnstest.Start(t, zone...)
	srv.ServFail("broken.example.org.")
	srv.Hang("slow.example.org.")
	return srv
}

// harness is spf (with settings and the test DNS), rcptok and a queue.
func harness(t *testing.T, srv *dnstest.Server, settings string) *hookstest.Harness {
	t.Helper()
	return hookstest.New(t,
		hookstest.Plugin("spf", hookstest.Build(t, "spf", settings+"\n"+srv.TOML())),
		hookstest.Plugin("rcptok", hookstest.Build(t, "rcptok", `domains = ["example.test"]`)),
		hookstest.Queue(),
	)
}

// deliver sends one message from ip, saying helo, and returns what was
// queued.
func deliver(t *testing.T, h *hookstest.Harness, ip, helo, from string) hookstest.Message {
	t.Helper()
	s := h.Connect(ip)
	hookstest.Expect(t, s.Helo(helo), 250)
	n := len(h.Queued())
	hookstest.Expect(t, s.Send(from, []string{"bob@example.test"}, msg), 250, "queued as")
	q := h.Queued()
	if len(q) != n+1 {
		t.Fatalf("%d messages queued, want %d", len(q), n+1)
	}
	return q[n]
}

// verdict returns the message's spf.NoteResult, failing when absent.
func verdict(t *testing.T, m hookstest.Message) spf.Verdict {
	t.Helper()
	v, ok := m.Notes["spf.result"].(spf.Verdict)
	if !ok {
		t.Fatalf("no spf.result note: %v", m.Notes)
	}
	return v
}

// receivedSPF returns the message's first field, unfolded lines kept,
// which must be Received-SPF.
func receivedSPF(t *testing.T, m hookstest.Message) string {
	t.Helper()
	data := string(m.Data)
	i := strings.Index(data, "\r\nReceived: ")
	if !strings.HasPrefix(data, "Received-SPF: ") || i < 0 {
		t.Fatalf("message does not start with Received-SPF then Received:\n%s", data)
	}
	return data[:i+2]
}

func TestResults(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, ``)
	for _, tc := range []struct {
		name, ip, helo, from string
		want                 spf.Verdict
		header               string // the whole field as queued
	}{
		{"pass", "192.0.2.1", "client.example.org", "alice@example.org",
			spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org", Reason: "matched ip"},
			"Received-SPF: pass (mx.example.test: domain of alice@example.org designates 192.0.2.1 as permitted sender)\r\n" +
				"\tclient-ip=192.0.2.1; envelope-from=\"alice@example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"pass, domain in capitals", "192.0.2.1", "client.example.org", "alice@EXAMPLE.Org",
			spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org", Reason: "matched ip"},
			"Received-SPF: pass (mx.example.test: domain of alice@example.org designates 192.0.2.1 as permitted sender)\r\n" +
				"\tclient-ip=192.0.2.1; envelope-from=\"alice@EXAMPLE.Org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"fail", "198.51.100.1", "client.example.org", "alice@example.org",
			spf.Verdict{Result: authres.ResultFail, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org", Reason: "matched all"},
			"Received-SPF: fail (mx.example.test: domain of alice@example.org does not designate 198.51.100.1 as permitted sender)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"softfail", "198.51.100.1", "client.example.org", "alice@soft.example.org",
			spf.Verdict{Result: authres.ResultSoftFail, Identity: "mailfrom", Domain: "soft.example.org", Sender: "alice@soft.example.org", Reason: "matched all"},
			"Received-SPF: softfail (mx.example.test: transitioning domain of alice@soft.example.org does not designate 198.51.100.1 as permitted sender)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@soft.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"neutral", "198.51.100.1", "client.example.org", "alice@neutral.example.org",
			spf.Verdict{Result: authres.ResultNeutral, Identity: "mailfrom", Domain: "neutral.example.org", Sender: "alice@neutral.example.org", Reason: "matched all"},
			"Received-SPF: neutral (mx.example.test: 198.51.100.1 is neither permitted nor denied by domain of alice@neutral.example.org)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@neutral.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"none: no SPF record", "198.51.100.1", "client.example.org", "alice@nospf.example.org",
			spf.Verdict{Result: authres.ResultNone, Identity: "mailfrom", Domain: "nospf.example.org", Sender: "alice@nospf.example.org", Reason: "no SPF record"},
			"Received-SPF: none (mx.example.test: domain of alice@nospf.example.org does not designate permitted sender hosts)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@nospf.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"none: no such domain", "198.51.100.1", "client.example.org", "alice@nowhere.example.org",
			spf.Verdict{Result: authres.ResultNone, Identity: "mailfrom", Domain: "nowhere.example.org", Sender: "alice@nowhere.example.org", Reason: "no SPF record"},
			"Received-SPF: none (mx.example.test: domain of alice@nowhere.example.org does not designate permitted sender hosts)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@nowhere.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"permerror: two records", "198.51.100.1", "client.example.org", "alice@two.example.org",
			spf.Verdict{Result: authres.ResultPermError, Identity: "mailfrom", Domain: "two.example.org", Sender: "alice@two.example.org", Reason: "multiple matching DNS records"},
			"Received-SPF: permerror (mx.example.test: permanent error in the SPF record of domain of alice@two.example.org: multiple matching DNS records)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@two.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom; problem=\"multiple matching DNS records\"\r\n"},
		{"permerror: bad syntax", "198.51.100.1", "client.example.org", "alice@bad.example.org",
			spf.Verdict{Result: authres.ResultPermError, Identity: "mailfrom", Domain: "bad.example.org", Sender: "alice@bad.example.org", Reason: "unknown field"},
			"Received-SPF: permerror (mx.example.test: permanent error in the SPF record of domain of alice@bad.example.org: unknown field)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@bad.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom; problem=\"unknown field\"\r\n"},
		{"temperror: SERVFAIL", "198.51.100.1", "client.example.org", "alice@broken.example.org",
			spf.Verdict{Result: authres.ResultTempError, Identity: "mailfrom", Domain: "broken.example.org", Sender: "alice@broken.example.org", Reason: "DNS lookup of broken.example.org failed temporarily"},
			"Received-SPF: temperror (mx.example.test: temporary error checking domain of alice@broken.example.org: DNS lookup of broken.example.org failed temporarily)\r\n" +
				"\tclient-ip=198.51.100.1; envelope-from=\"alice@broken.example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"internationalized domain", "192.0.2.1", "client.example.org", "alice@bücher.example",
			spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "xn--bcher-kva.example", Sender: "alice@xn--bcher-kva.example", Reason: "matched ip"},
			"Received-SPF: pass (mx.example.test: domain of alice@xn--bcher-kva.example designates 192.0.2.1 as permitted sender)\r\n" +
				"\tclient-ip=192.0.2.1; envelope-from=\"alice@bücher.example\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"quoted local part: escaped in the comment and the value", "192.0.2.1", "client.example.org", `"a(b)\"c"@example.org`,
			spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: `"a(b)\"c"@example.org`, Reason: "matched ip"},
			`Received-SPF: pass (mx.example.test: domain of "a\(b\)\\"c"@example.org designates 192.0.2.1 as permitted sender)` + "\r\n" +
				"\t" + `client-ip=192.0.2.1; envelope-from="\"a(b)\\\"c\"@example.org"; helo=client.example.org;` + "\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"IPv6 pass", "2001:db8::25", "client.example.org", "alice@example.org",
			spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org", Reason: "matched ip"},
			"Received-SPF: pass (mx.example.test: domain of alice@example.org designates 2001:db8::25 as permitted sender)\r\n" +
				"\tclient-ip=\"2001:db8::25\"; envelope-from=\"alice@example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"IPv6 fail", "2001:db9::25", "client.example.org", "alice@example.org",
			spf.Verdict{Result: authres.ResultFail, Identity: "mailfrom", Domain: "example.org", Sender: "alice@example.org", Reason: "matched all"},
			"Received-SPF: fail (mx.example.test: domain of alice@example.org does not designate 2001:db9::25 as permitted sender)\r\n" +
				"\tclient-ip=\"2001:db9::25\"; envelope-from=\"alice@example.org\"; helo=client.example.org;\r\n" +
				"\treceiver=mx.example.test; identity=mailfrom\r\n"},
		{"null sender: the HELO identity", "198.51.100.7", "client.example.net", "",
			spf.Verdict{Result: authres.ResultPass, Identity: "helo", Domain: "client.example.net", Sender: "postmaster@client.example.net", Reason: "matched a"},
			"Received-SPF: pass (mx.example.test: domain of postmaster@client.example.net designates 198.51.100.7 as permitted sender)\r\n" +
				"\tclient-ip=198.51.100.7; envelope-from=\"\"; helo=client.example.net;\r\n" +
				"\treceiver=mx.example.test; identity=helo\r\n"},
		{"null sender, HELO fails", "198.51.100.8", "client.example.net", "",
			spf.Verdict{Result: authres.ResultFail, Identity: "helo", Domain: "client.example.net", Sender: "postmaster@client.example.net", Reason: "matched all"},
			"Received-SPF: fail (mx.example.test: domain of postmaster@client.example.net does not designate 198.51.100.8 as permitted sender)\r\n" +
				"\tclient-ip=198.51.100.8; envelope-from=\"\"; helo=client.example.net;\r\n" +
				"\treceiver=mx.example.test; identity=helo\r\n"},
		{"null sender, HELO an address literal", "198.51.100.7", "[198.51.100.7]", "",
			spf.Verdict{Result: authres.ResultNone, Identity: "helo", Domain: "[198.51.100.7]", Sender: "postmaster@[198.51.100.7]", Reason: "no valid domain to check"},
			"Received-SPF: none (mx.example.test: domain of postmaster@[198.51.100.7] does not designate permitted sender hosts)\r\n" +
				"\tclient-ip=198.51.100.7; envelope-from=\"\"; helo=\"[198.51.100.7]\";\r\n" +
				"\treceiver=mx.example.test; identity=helo\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := deliver(t, h, tc.ip, tc.helo, tc.from)
			if got := verdict(t, m); got != tc.want {
				t.Errorf("note = %+v\nwant   %+v", got, tc.want)
			}
			if got := receivedSPF(t, m); got != tc.header {
				t.Errorf("header =\n%s\nwant\n%s", got, tc.header)
			}
		})
	}
}

// A literal or single-label HELO is not looked up (RFC 7208 4.3).
func TestNoLookupForNonDomains(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, ``)
	deliver(t, h, "198.51.100.7", "[198.51.100.7]", "")
	deliver(t, h, "198.51.100.7", "localhost", "")
	if q := srv.Queries(); len(q) != 0 {
		t.Errorf("queries = %q, want none", q)
	}
}

func TestMechanismsQueryTheServer(t *testing.T) {
	for _, tc := range []struct {
		ip, reason string
		queries    []string
	}{
		{"203.0.113.1", "matched ip", []string{"TXT mech.example.org.", "TXT _spf.example.net."}},
		{"203.0.113.2", "matched a", []string{"TXT mech.example.org.", "TXT _spf.example.net.", "A web.example.org."}},
		{"203.0.113.3", "matched mx", []string{"TXT mech.example.org.", "TXT _spf.example.net.", "A web.example.org.", "MX mech.example.org.", "A mx1.mech.example.org."}},
	} {
		t.Run(tc.ip, func(t *testing.T) {
			srv := start(t)
			h := harness(t, srv, ``)
			m := deliver(t, h, tc.ip, "client.example.org", "alice@mech.example.org")
			want := spf.Verdict{Result: authres.ResultPass, Identity: "mailfrom", Domain: "mech.example.org", Sender: "alice@mech.example.org", Reason: tc.reason}
			if got := verdict(t, m); got != want {
				t.Errorf("note = %+v, want %+v", got, want)
			}
			q := srv.Queries()
			for _, w := range tc.queries {
				if !slices.Contains(q, w) {
					t.Errorf("queries = %q, want %q among them", q, w)
				}
			}
		})
	}
}

// A server that never answers gives temperror once the resolver's
// timeout (1s in dnstest's settings) is up.
func TestTimeoutIsTempError(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, `temperror = "defer"`)
	s := h.Connect("198.51.100.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	start := time.Now()
	hookstest.ExpectReply(t, s.Mail("alice@slow.example.org"),
		"451 4.7.24 SPF temperror: temporary error checking the SPF policy of slow.example.org for 198.51.100.1; try again later")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the check took %v; the resolver's timeout is 1s", d)
	}

	h = harness(t, srv, ``)
	m := deliver(t, h, "198.51.100.1", "client.example.org", "alice@slow.example.org")
	want := spf.Verdict{Result: authres.ResultTempError, Identity: "mailfrom", Domain: "slow.example.org", Sender: "alice@slow.example.org", Reason: "DNS lookup of slow.example.org timed out"}
	if got := verdict(t, m); got != want {
		t.Errorf("note = %+v, want %+v", got, want)
	}
}

// The hook's deadline bounds the whole check, even when the resolver's
// own timeout is longer: the chain then fails closed.
func TestHookDeadlineBoundsTheCheck(t *testing.T) {
	srv := start(t)
	p := hookstest.Build(t, "spf", "[dns]\nservers = [\""+srv.Addr+"\"]\ntimeout = \"10s\"\n")
	h := hookstest.NewWithOptions(t, hookstest.Options{Timeout: 300 * time.Millisecond}, hookstest.Plugin("spf", p), hookstest.Queue())
	s := h.Connect("198.51.100.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	start := time.Now()
	hookstest.ExpectReply(t, s.Mail("alice@slow.example.org"), "451 4.3.0 Local error in processing; try again later")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the check took %v; the hook's deadline is 300ms", d)
	}

	// Called directly, a check cut short by its context is a temperror.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("198.51.100.1:4000"))
	c.Helo = "client.example.org"
	v := p.(*spf.Plugin).Check(ctx, c, "alice@slow.example.org")
	if v.Result != authres.ResultTempError {
		t.Errorf("verdict = %+v, want temperror", v)
	}
}

func TestPolicyReplies(t *testing.T) {
	srv := start(t)
	for _, tc := range []struct {
		settings, ip, from, want string
	}{
		{`fail = "reject"`, "198.51.100.1", "alice@example.org",
			"550 5.7.23 SPF fail: example.org does not designate 198.51.100.1 as a permitted sender"},
		{`fail = "defer"`, "198.51.100.1", "alice@example.org",
			"450 4.7.23 SPF fail: example.org does not designate 198.51.100.1 as a permitted sender"},
		{`fail = "reject"`, "2001:db9::25", "alice@example.org",
			"550 5.7.23 SPF fail: example.org does not designate 2001:db9::25 as a permitted sender"},
		{`softfail = "reject"`, "198.51.100.1", "alice@soft.example.org",
			"550 5.7.23 SPF softfail: soft.example.org does not designate 198.51.100.1 as a permitted sender"},
		{`softfail = "defer"`, "198.51.100.1", "alice@soft.example.org",
			"450 4.7.23 SPF softfail: soft.example.org does not designate 198.51.100.1 as a permitted sender"},
		{`temperror = "defer"`, "198.51.100.1", "alice@broken.example.org",
			"451 4.7.24 SPF temperror: temporary error checking the SPF policy of broken.example.org for 198.51.100.1; try again later"},
		{`permerror = "reject"`, "198.51.100.1", "alice@two.example.org",
			"550 5.7.24 SPF permerror: the SPF record of two.example.org is invalid; cannot check 198.51.100.1"},
		{`permerror = "reject"`, "198.51.100.1", "alice@bad.example.org",
			"550 5.7.24 SPF permerror: the SPF record of bad.example.org is invalid; cannot check 198.51.100.1"},
		// Each setting touches its own result only.
		{`fail = "reject"`, "198.51.100.1", "alice@soft.example.org", "250 2.1.0 Sender OK"},
		{`fail = "reject"`, "198.51.100.1", "alice@neutral.example.org", "250 2.1.0 Sender OK"},
		{`fail = "reject"`, "198.51.100.1", "alice@nospf.example.org", "250 2.1.0 Sender OK"},
		{`fail = "reject"`, "192.0.2.1", "alice@example.org", "250 2.1.0 Sender OK"},
		{`softfail = "reject"`, "198.51.100.1", "alice@example.org", "250 2.1.0 Sender OK"},
		// The defaults only note.
		{``, "198.51.100.1", "alice@example.org", "250 2.1.0 Sender OK"},
		{``, "198.51.100.1", "alice@broken.example.org", "250 2.1.0 Sender OK"},
		{``, "198.51.100.1", "alice@two.example.org", "250 2.1.0 Sender OK"},
	} {
		t.Run(tc.settings+" "+tc.from, func(t *testing.T) {
			h := harness(t, srv, tc.settings)
			s := h.Connect(tc.ip)
			hookstest.Expect(t, s.Helo("client.example.org"), 250)
			hookstest.ExpectReply(t, s.Mail(tc.from), tc.want)
		})
	}
}

func TestRejectAtRcpt(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, "fail = \"reject\"\ntemperror = \"defer\"\nreject_at = \"rcpt\"")
	s := h.Connect("198.51.100.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.ExpectReply(t, s.Mail("alice@example.org"), "250 2.1.0 Sender OK")
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "550 5.7.23 SPF fail: example.org does not designate 198.51.100.1 as a permitted sender")
	hookstest.ExpectReply(t, s.Rcpt("carol@example.test"), "550 5.7.23 SPF fail: example.org does not designate 198.51.100.1 as a permitted sender")
	s.Reset()
	hookstest.ExpectReply(t, s.Mail("alice@broken.example.org"), "250 2.1.0 Sender OK")
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "451 4.7.24 SPF temperror: temporary error checking the SPF policy of broken.example.org for 198.51.100.1; try again later")
	s.Reset()
	hookstest.ExpectReply(t, s.Mail("alice@soft.example.org"), "250 2.1.0 Sender OK")
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
}

func TestRelayAndAuthSkipped(t *testing.T) {
	srv := start(t)
	for _, tc := range []struct {
		name, settings string
		relay          bool
		user           string
		checked        bool
	}{
		{"relay client", `fail = "reject"`, true, "", false},
		{"authenticated user", `fail = "reject"`, true, "alice@example.org", false},
		{"relay client, check_relay", "fail = \"reject\"\ncheck_relay = true", true, "", true},
		{"authenticated user, check_relay only", "fail = \"reject\"\ncheck_relay = true", true, "alice@example.org", false},
		{"authenticated user, check_auth", "fail = \"reject\"\ncheck_auth = true", true, "alice@example.org", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := harness(t, srv, tc.settings)
			s := h.Connect("198.51.100.1")
			s.Conn().Relay, s.Conn().AuthUser = tc.relay, tc.user
			hookstest.Expect(t, s.Helo("client.example.org"), 250)
			n := len(srv.Queries())
			rep := s.Send("alice@example.org", []string{"bob@example.test"}, msg)
			if tc.checked {
				hookstest.ExpectReply(t, rep, "550 5.7.23 SPF fail: example.org does not designate 198.51.100.1 as a permitted sender")
				return
			}
			hookstest.Expect(t, rep, 250, "queued as")
			m := h.Queued()[0]
			if _, ok := m.Notes["spf.result"]; ok {
				t.Errorf("skipped client has a note: %v", m.Notes)
			}
			if strings.Contains(string(m.Data), "Received-SPF") {
				t.Errorf("skipped client's message has Received-SPF:\n%s", m.Data)
			}
			if q := srv.Queries(); len(q) != n {
				t.Errorf("skipped client: queries %q", q[n:])
			}
		})
	}
}

func TestHeaderOff(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, `header = false`)
	m := deliver(t, h, "192.0.2.1", "client.example.org", "alice@example.org")
	if !strings.HasPrefix(string(m.Data), "Received: ") {
		t.Errorf("header = false, message:\n%s", m.Data)
	}
	if v := verdict(t, m); v.Result != authres.ResultPass {
		t.Errorf("note = %+v, want pass", v)
	}
}

// Each transaction is checked anew, and a second message on the
// connection gets its own header.
func TestTwoTransactions(t *testing.T) {
	srv := start(t)
	h := harness(t, srv, ``)
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example.org"), 250)
	hookstest.Expect(t, s.Send("alice@example.org", []string{"bob@example.test"}, msg), 250)
	hookstest.Expect(t, s.Send("alice@soft.example.org", []string{"bob@example.test"}, msg), 250)
	q := h.Queued()
	if len(q) != 2 || verdict(t, q[0]).Result != authres.ResultPass || verdict(t, q[1]).Result != authres.ResultPass {
		t.Fatalf("queued %d, want two passes", len(q))
	}
	if n := strings.Count(string(q[1].Data), "Received-SPF:"); n != 1 {
		t.Errorf("second message has %d Received-SPF fields", n)
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct{ settings, want string }{
		{`fail = "drop"`, `fail = "drop": want "note" or "reject" or "defer"`},
		{`softfail = "Reject"`, `softfail = "Reject": want "note" or "reject" or "defer"`},
		{`temperror = "reject"`, `temperror = "reject": want "note" or "defer"`},
		{`permerror = "defer"`, `permerror = "defer": want "note" or "reject"`},
		{`reject_at = "data"`, `reject_at = "data": want "mail" or "rcpt"`},
		{"[dns]\nservers = [\"ns.example.net\"]", `"ns.example.net" is not an IP address`},
		{`failure = "reject"`, `failure`},
	} {
		hookstest.ExpectBuildError(t, "spf", tc.settings, tc.want)
	}
}

func TestReadmeExample(t *testing.T) {
	p := hookstest.BuildFromReadme(t, "spf", "README.md")
	if _, ok := p.(*spf.Plugin); !ok {
		t.Fatalf("README builds %T", p)
	}
	var _ hooks.Mail = p.(*spf.Plugin)
}

// BenchmarkCheck measures one check (one TXT lookup, ip4 match) against
// the loopback DNS server.
func BenchmarkCheck(b *testing.B) {
	srv := start(b)
	p := hookstest.BuildAs[*spf.Plugin](b, "spf", srv.TOML())
	c := connection.New("mx", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:4000"))
	c.Helo = "client.example.org"
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if v := p.Check(ctx, c, "alice@example.org"); v.Result != authres.ResultPass {
			b.Fatalf("verdict %+v", v)
		}
	}
}
