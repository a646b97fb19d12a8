package server_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/server"
)

func xclientFrom(hosts ...string) func(*server.ListenerConfig) {
	return func(lc *server.ListenerConfig) {
		for _, h := range hosts {
			lc.XClientHosts = append(lc.XClientHosts, netip.MustParsePrefix(h))
		}
	}
}

func TestXClientTrusted(t *testing.T) {
	seen := &connectSeen{}
	srv := start(t, xclientFrom("127.0.0.1/32"), hooks.Instance{Name: "seen", Plugin: seen})
	c := dial(t, srv.addr)
	c.reply()
	c.send("EHLO rig.example.org\r\n")
	if r := c.reply(); !strings.Contains(r, "\n250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN\n") && !strings.HasSuffix(r, "\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN") {
		t.Fatalf("EHLO does not offer XCLIENT: %q", r)
	}
	c.send("MAIL FROM:<a@example.org>\r\n")
	c.reply()
	c.send("XCLIENT ADDR=192.0.2.9\r\n")
	if r := c.reply(); !strings.HasPrefix(r, "503 5.5.1") {
		t.Fatalf("XCLIENT in a transaction: %q, want 503", r)
	}
	c.send("RSET\r\nXCLIENT ADDR=192.0.2.1 BOGUS=1\r\n")
	c.reply()
	if r := c.reply(); !strings.HasPrefix(r, "501 5.5.4") {
		t.Fatalf("unknown attribute: %q, want 501", r)
	}
	c.send("XCLIENT ADDR=IPV6:2001:db8::5 PORT=4711 NAME=mail+2Eexample.net HELO=[UNAVAILABLE]\r\n")
	if r := c.reply(); !strings.HasPrefix(r, "220 mx.example.test") {
		t.Fatalf("XCLIENT: %q, want a new 220 greeting", r)
	}
	c.send("MAIL FROM:<a@example.org>\r\n")
	if r := c.reply(); !strings.HasPrefix(r, "503 5.5.1") {
		t.Fatalf("MAIL right after XCLIENT: %q, want 503 (EHLO again)", r)
	}
	if r := c.sendMessage(); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("message: %q", r)
	}
	if got := seen.seen(); len(got) != 2 || got[1] != "[2001:db8::5]:4711 mail.example.net" {
		t.Errorf("connect hooks saw %q, want the XCLIENT client second", got)
	}
	msgs := srv.queue.Messages()
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "from client.example.org (mail.example.net [2001:db8::5])") {
		t.Errorf("Received header does not name the XCLIENT client: %q", msgs)
	}
}

func TestXClientLogin(t *testing.T) {
	srv := start(t, xclientFrom("127.0.0.0/8"))
	c := dial(t, srv.addr)
	c.reply()
	c.send("EHLO rig.example.org\r\nXCLIENT ADDR=192.0.2.1 LOGIN=alice HELO=laptop.example.org PROTO=ESMTP\r\n")
	c.reply()
	if r := c.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("XCLIENT: %q", r)
	}
	// HELO= given: MAIL may follow at once.
	c.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, want := range []string{"250 ", "250 ", "354 "} {
		if r := c.reply(); !strings.HasPrefix(r, want) {
			t.Fatalf("got %q, want %s", r, want)
		}
	}
	c.send("hi\r\n.\r\n")
	c.reply()
	msgs := srv.queue.Messages()
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "from laptop.example.org ([192.0.2.1])\r\n\t(authenticated)\r\n\tby mx.example.test (Sluice) with ESMTPA") {
		t.Errorf("Received header: %q", msgs)
	}
}

func TestXClientUntrusted(t *testing.T) {
	for name, mutate := range map[string]func(*server.ListenerConfig){
		"no xclient_hosts":    nil,
		"other xclient_hosts": xclientFrom("192.0.2.0/24"),
	} {
		t.Run(name, func(t *testing.T) {
			seen := &connectSeen{}
			srv := start(t, mutate, hooks.Instance{Name: "seen", Plugin: seen})
			c := dial(t, srv.addr)
			c.reply()
			c.send("EHLO rig.example.org\r\n")
			if r := c.reply(); strings.Contains(r, "XCLIENT") {
				t.Fatalf("EHLO offers XCLIENT to an untrusted client: %q", r)
			}
			c.send("XCLIENT ADDR=192.0.2.9 LOGIN=alice\r\n")
			if r := c.reply(); r != "550 5.7.0 Error: insufficient authorization" {
				t.Fatalf("XCLIENT: %q", r)
			}
			if got := seen.seen(); len(got) != 1 || !strings.HasPrefix(got[0], "127.0.0.1:") {
				t.Errorf("connect hooks saw %q", got)
			}
		})
	}
}
