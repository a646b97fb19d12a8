package dnsbl

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/resolver/dnstest"
	"github.com/sluice-mta/sluice/transaction"
)

func TestReverseIP(t *testing.T) {
	for ip, want := range map[string]string{
		"192.0.2.1":        "1.2.0.192",
		"::ffff:192.0.2.1": "1.2.0.192",
		"2001:db8::1":      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2",
	} {
		if got := ReverseIP(netip.MustParseAddr(ip)); got != want {
			t.Errorf("ReverseIP(%s) = %q; want %q", ip, got, want)
		}
	}
}

func TestReason(t *testing.T) {
	rr, err := dns.NewRR(`x.example. 300 IN TXT "a \"quoted\"\009tab" "and\\ more\013\010"`)
	if err != nil {
		t.Fatal(err)
	}
	if got := reason([]dns.RR{rr}); got != `a "quoted" taband\ more` {
		t.Errorf("reason = %q", got)
	}
}

// The strings of one record are joined as they are (as for SPF), records
// with "; ".

// TestDisconnectCancels: a lookup still waiting for a DNS server that
// never answers ends when the connection does, not at its timeout.
func TestDisconnectCancels(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Hang("1.2.0.192.bl.example.test.")
	p := hookstest.BuildAs[*Plugin](t, "dnsbl", "[[zones]]\nzone = \"bl.example.test\"\n[dns]\nservers = [\""+srv.Addr+"\"]\ntimeout = \"30s\"\n")
	c := connection.New("test", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:40000"))
	p.Connect(context.Background(), c)
	st := p.state.Get(&c.Notes)
	// Disconnect once the query is out and waiting for its answer: a
	// cancel before it is sent proves nothing.
	for i := 0; !slices.Contains(srv.Queries(), "A 1.2.0.192.bl.example.test."); i++ {
		if i == 500 {
			t.Fatalf("the DNS server got no query in 5s: %v", srv.Queries())
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	p.Disconnect(context.Background(), c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, ok := st.pending.Wait(ctx); !ok {
		t.Fatal("the lookup still runs 5s after the disconnect")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the lookup ended %v after the disconnect", d)
	}
}

// BenchmarkConnection is one connection's cost (connect, one recipient,
// disconnect) with the answer in the cache: a listed client, a client
// listed nowhere, and, with the cache off, a miss asked of a loopback DNS
// server.
func BenchmarkConnection(b *testing.B) {
	srv := dnstest.Start(b, `1.2.0.192.zen.example.test. 300 IN A 127.0.0.2`)
	zones := "[[zones]]\nzone = \"zen.example.test\"\ncodes = { \"127.0.0.2\" = \"SBL\", \"127.0.0.4-127.0.0.7\" = \"XBL\" }\n[dns]\nservers = [\"" + srv.Addr + "\"]\ntimeout = \"1s\"\n"
	for _, bb := range []struct {
		name, settings, ip string
		code               int
	}{
		{"listed-cached", zones, "192.0.2.1", 554},
		{"miss-cached", zones, "192.0.2.9", 0},
		{"miss-uncached", "cache_ttl = \"0s\"\n" + zones, "192.0.2.9", 0},
	} {
		b.Run(bb.name, func(b *testing.B) {
			p := hookstest.BuildAs[*Plugin](b, "dnsbl", bb.settings)
			remote := netip.MustParseAddrPort(bb.ip + ":40000")
			local := netip.MustParseAddrPort("127.0.0.1:25")
			ctx := context.Background()
			tx := transaction.New(b.TempDir(), 0)
			b.ReportAllocs()
			for b.Loop() {
				c := connection.New("mx", "mx.example.test", local, remote)
				p.Connect(ctx, c)
				r := p.Rcpt(ctx, c, tx, "bob@example.test")
				if r.ReplyCode != bb.code {
					b.Fatalf("reply %d %q; want %d", r.ReplyCode, r.Msg, bb.code)
				}
				p.Disconnect(ctx, c)
			}
		})
	}
}

// TestTimeoutIsTheConfiguredOne: a lookup waits for its answer as long as
// [dns] timeout says, also past miekg/dns's own 2s read timeout (a slow
// list answering in 2.3s must not be given up on at 2s).
func TestTimeoutIsTheConfiguredOne(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Hang("1.2.0.192.bl.example.test.")
	p := hookstest.BuildAs[*Plugin](t, "dnsbl", "[[zones]]\nzone = \"bl.example.test\"\n[dns]\nservers = [\""+srv.Addr+"\"]\ntimeout = \"2500ms\"\n")
	c := connection.New("test", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:25"), netip.MustParseAddrPort("192.0.2.1:40000"))
	start := time.Now()
	p.Connect(context.Background(), c)
	defer p.Disconnect(context.Background(), c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, ok := p.state.Get(&c.Notes).pending.Wait(ctx); !ok {
		t.Fatal("the lookup still runs 10s after it began")
	}
	if d := time.Since(start); d < 2400*time.Millisecond || d > 5*time.Second {
		t.Errorf("the lookup gave up after %v, want the configured 2.5s", d)
	}
}
