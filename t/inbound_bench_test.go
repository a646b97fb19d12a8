package t_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/bwl"
	_ "github.com/sluice-mta/sluice/plugins/discard"
	_ "github.com/sluice-mta/sluice/plugins/dnsbl"
	_ "github.com/sluice-mta/sluice/plugins/earlytalker"
	_ "github.com/sluice-mta/sluice/plugins/greylist"
	_ "github.com/sluice-mta/sluice/plugins/headers"
	_ "github.com/sluice-mta/sluice/plugins/helo"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

// BenchmarkInboundChain is the per-message cost of the MX policy chain of
// docs/inbound-mx.md, in process: one connection and one message each,
// through the server's Session, with the discard queue so that only the
// plugins differ. "rcptok" is the baseline (rcptok alone); "policy" adds
// earlytalker, helo, bwl, dnsbl (a loopback DNS server, every name
// NXDOMAIN, cached after the first lookup as for a returning client),
// greylist (bbolt, the triplet already passed) and headers. The
// difference is what the policy costs a known sender's message.
//
//	go test -run '^$' -bench InboundChain -benchmem ./t/
func BenchmarkInboundChain(b *testing.B) {
	dns := dnstest.Start(b)
	build := func(name, settings string) hooks.Instance {
		return hookstest.Plugin(name, hookstest.Build(b, name, settings))
	}
	rcptok := func() hooks.Instance { return build("rcptok", `domains = ["example.test"]`) }
	discard := func() hooks.Instance { return build("discard", "i_know_this_drops_mail = true") }
	chains := []struct {
		name    string
		plugins func() []hooks.Instance
	}{
		{"rcptok", func() []hooks.Instance { return []hooks.Instance{rcptok(), discard()} }},
		{"policy", func() []hooks.Instance {
			return []hooks.Instance{
				build("earlytalker", `hook = "mail"`),
				build("helo", `reject_at = "mail"`),
				build("bwl", `allow_clients = ["192.0.2.0/24"]
block_senders = ["spam.example"]
allow_recipients = ["postmaster@example.test", "abuse@example.test"]`),
				build("dnsbl", "reject_at = \"rcpt\"\n"+dns.TOML()+"\n[[zones]]\nzone = \"zen.spamhaus.org\"\n"),
				rcptok(),
				build("greylist", fmt.Sprintf("defer_at = \"data\"\ndelay = \"1s\"\n[state]\npath = %q\n", filepath.Join(b.TempDir(), "state.db"))),
				build("headers", ""),
				discard(),
			}
		}},
	}
	const msg = "From: <alice@example.org>\r\nTo: <bob@example.test>\r\nDate: Sun, 6 Dec 2026 01:00:00 +0000\r\nSubject: bench\r\n\r\nhello\r\n"
	for _, chain := range chains {
		b.Run(chain.name, func(b *testing.B) {
			h := hookstest.New(b, chain.plugins()...)
			h.Logger = slog.New(slog.DiscardHandler) // the decisions, logged at INFO, are not what is measured
			send := func() hooks.Reply {
				return h.Connect("198.51.100.7").Send("alice@example.org", []string{"bob@example.test"}, msg)
			}
			if rep := send(); !rep.Positive() && chain.name == "policy" {
				time.Sleep(1100 * time.Millisecond) // the greylisting delay: the retry passes
			}
			if rep := send(); !rep.Positive() {
				b.Fatalf("the message was not accepted: %s", rep)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				send()
			}
		})
	}
}
