package bwl_test

import (
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	_ "github.com/sluice-mta/sluice/plugins/bwl"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	"github.com/sluice-mta/sluice/transaction"
)

const settings = `
allow_clients = ["192.0.2.0/24"]
block_clients = ["203.0.113.0/24"]
allow_senders = ["friend@example.org", ".partner.example"]
block_senders = ["spam.example", "Bad@Example.NET"]
block_recipients = ["noreply@example.test"]
allow_recipients = ["abuse@example.test"]

[domains."example.test"]
block_senders = ["ads.example"]
allow_senders = ["news@lists.example"]

[accounts."ceo@example.test"]
block_clients = ["198.51.100.0/24"]
`

func chain(t *testing.T) *hookstest.Harness {
	bwl := hookstest.Build(t, "bwl", settings)
	rcptok := hookstest.Build(t, "rcptok", `domains = ["example.test"]`)
	return hookstest.New(t, hookstest.Plugin("bwl", bwl), hookstest.Plugin("rcptok", rcptok), hookstest.Queue())
}

func TestReplies(t *testing.T) {
	h := chain(t)
	s := h.Connect("203.0.113.9")
	hookstest.ExpectReply(t, s.Greeting(), s.Greeting().String()) // connect passes: client lists answer at RCPT
	hookstest.Expect(t, s.Helo("c.example"), 250)
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "550 5.7.1 client 203.0.113.9 is blacklisted (203.0.113.0/24)")

	s = h.Connect("198.51.100.1")
	hookstest.Expect(t, s.Helo("c.example"), 250)
	hookstest.ExpectReply(t, s.Mail("x@Spam.Example"), "550 5.7.1 sender <x@Spam.Example> is blacklisted (spam.example)")
	hookstest.ExpectReply(t, s.Mail("bad@example.net"), "550 5.7.1 sender <bad@example.net> is blacklisted (bad@example.net)")
	hookstest.Expect(t, s.Mail("a@example.org"), 250)
	hookstest.ExpectReply(t, s.Rcpt("noreply@example.test"), "550 5.7.1 recipient <noreply@example.test> is blacklisted (noreply@example.test)")
	hookstest.ExpectReply(t, s.Rcpt("ceo@example.test"), "550 5.7.1 client 198.51.100.1 is blacklisted by ceo@example.test (198.51.100.0/24)")
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	s.Cmd("RSET")
	hookstest.Expect(t, s.Mail("promo@ads.example"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "550 5.7.1 sender <promo@ads.example> is blacklisted by example.test (ads.example)")
	hookstest.ExpectReply(t, s.Rcpt("bob@other.test"), "550 5.7.1 relaying denied")
}

func TestWhitelistNotes(t *testing.T) {
	h := chain(t)
	s := h.Connect("192.0.2.7")
	if got := connection.NoteWhitelisted.Get(&s.Conn().Notes); got != "client 192.0.2.0/24" {
		t.Fatalf("connection note %q, want %q", got, "client 192.0.2.0/24")
	}
	hookstest.Expect(t, s.Helo("c.example"), 250)
	hookstest.Expect(t, s.Mail("x@a.partner.example"), 250)
	if got := transaction.NoteWhitelisted.Get(&s.Transaction().Notes); got != "sender .partner.example" {
		t.Fatalf("transaction note %q", got)
	}
	s.Cmd("RSET")
	hookstest.Expect(t, s.Mail("news@lists.example"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@example.test"), "250 2.1.5 Recipient OK")
	if got := transaction.NoteWhitelisted.Get(&s.Transaction().Notes); got != "sender news@lists.example by example.test" {
		t.Fatalf("transaction note %q", got)
	}
}

// TestNoOpenRelay: a whitelisted client with a whitelisted sender still
// gets "relaying denied" for a domain that is not ours.
func TestNoOpenRelay(t *testing.T) {
	h := chain(t)
	s := h.Connect("192.0.2.7")
	hookstest.Expect(t, s.Helo("c.example"), 250)
	hookstest.Expect(t, s.Mail("friend@example.org"), 250)
	hookstest.ExpectReply(t, s.Rcpt("victim@elsewhere.test"), "550 5.7.1 relaying denied")
	if s.Conn().Relay {
		t.Fatal("a whitelisted client became a relay client")
	}
}

func TestBadSettings(t *testing.T) {
	hookstest.ExpectBuildError(t, "bwl", `block_clients = ["spam.example"]`, `block_clients: list: "spam.example" is not an IP address or CIDR prefix`)
	hookstest.ExpectBuildError(t, "bwl", `[accounts."bob"]`, `accounts."bob": not an address`)
	hookstest.ExpectBuildError(t, "bwl", `[domains."a b"]`, `domains."a b": not a domain`)
	hookstest.ExpectBuildError(t, "bwl", `block_senders = { file = "/nonexistent" }`, "cannot read the table file")
}

func TestReadme(t *testing.T) { hookstest.BuildFromReadme(t, "bwl", "README.md") }
