package cli

import (
	"net"
	"net/netip"
	"testing"

	"github.com/sluice-mta/sluice/server"
)

func TestSameAddress(t *testing.T) {
	for _, tc := range []struct {
		configured, socket string
		want               bool
	}{
		{":25", "[::]:25", true},
		{":25", "0.0.0.0:25", true},
		{"0.0.0.0:25", "[::]:25", true},
		{"[::]:25", "0.0.0.0:25", true},
		{":smtp", "[::]:25", true},
		{"127.0.0.1:2525", "127.0.0.1:2525", true},
		{"127.0.0.1:2525", "[::ffff:127.0.0.1]:2525", true},
		{":25", "[::]:587", false},
		{":25", "127.0.0.1:25", false},
		{"127.0.0.1:25", "[::]:25", false},
		{"mx.example.test:25", "[::]:25", false},
		{"no port", "[::]:25", false},
	} {
		if got := sameAddress(tc.configured, netip.MustParseAddrPort(tc.socket)); got != tc.want {
			t.Errorf("sameAddress(%q, %s) = %v, want %v", tc.configured, tc.socket, got, tc.want)
		}
	}
}

func TestListenerForPrefersTheName(t *testing.T) {
	ls := []server.ListenerConfig{{Name: "mx", Address: ":25"}, {Name: "submission", Address: ":587"}}
	addr := &net.TCPAddr{IP: net.IPv6unspecified, Port: 25}
	if got := listenerFor(ls, "submission", addr); got != 1 {
		t.Errorf("named submission on [::]:25: listener %d, want 1 (the name wins)", got)
	}
	if got := listenerFor(ls, "sluice.socket", addr); got != 0 {
		t.Errorf("unnamed on [::]:25: listener %d, want 0 (by address)", got)
	}
	if got := listenerFor(ls, "sluice.socket", &net.TCPAddr{IP: net.IPv6unspecified, Port: 465}); got != -1 {
		t.Errorf("unnamed on [::]:465: listener %d, want -1", got)
	}
}
