package proxy_test

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server/proxy"
)

// readHeader sends what the proxy sent over a pipe and reads the header.
func readHeader(t *testing.T, sent string, timeout time.Duration) (got string, remote, local netip.AddrPort, err error) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	go func() {
		client.Write([]byte(sent))
		client.Close()
	}()
	nc, remote, local, err := proxy.ReadHeader(server, timeout)
	if err != nil {
		return "", remote, local, err
	}
	b, _ := io.ReadAll(nc)
	return string(b), remote, local, nil
}

func TestReadHeaderV1GivesTheClientAndThePipelinedBytes(t *testing.T) {
	got, remote, local, err := readHeader(t, "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\nEHLO client.example\r\n", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if remote.String() != "192.0.2.1:56324" || local.String() != "198.51.100.7:25" {
		t.Fatalf("remote %v local %v; want 192.0.2.1:56324 198.51.100.7:25", remote, local)
	}
	if got != "EHLO client.example\r\n" {
		t.Fatalf("after the header: %q, want the EHLO line", got)
	}
}

func TestReadHeaderV1UnknownLeavesTheAddressesZero(t *testing.T) {
	_, remote, local, err := readHeader(t, "PROXY UNKNOWN\r\n", time.Second)
	if err != nil || remote.IsValid() || local.IsValid() {
		t.Fatalf("err=%v remote=%v local=%v; want nil and zero addresses", err, remote, local)
	}
}

func TestReadHeaderRefusesSMTPWithoutAHeader(t *testing.T) {
	_, _, _, err := readHeader(t, "EHLO client.example\r\n", time.Second)
	if err == nil || !strings.Contains(err.Error(), "no valid PROXY v1 or v2 header") {
		t.Fatalf("err = %v, want no valid PROXY header", err)
	}
}

func TestReadHeaderGivesUpAtTheTimeout(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	start := time.Now()
	_, _, _, err := proxy.ReadHeader(server, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "within 50ms") {
		t.Fatalf("err = %v, want a timeout naming 50ms", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}
