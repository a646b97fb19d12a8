package certs_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server/certs"
)

func TestSetBySNIAndReload(t *testing.T) {
	dir := t.TempDir()
	writePair := func(name, host string) certs.Pair {
		cert, key, err := certs.SelfSignedPEM(host, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		p := certs.Pair{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key")}
		os.WriteFile(p.Cert, cert, 0o600)
		os.WriteFile(p.Key, key, 0o600)
		return p
	}
	a, b := writePair("a", "mx.a.example"), writePair("b", "mx.b.example")
	set, err := certs.Load([]certs.Pair{a, b})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := set.TLSConfig("1.2")
	if err != nil {
		t.Fatal(err)
	}
	served := func(sni string) string {
		t.Helper()
		cs, ss := net.Pipe()
		defer cs.Close()
		go tls.Server(ss, cfg).Handshake()
		tc := tls.Client(cs, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		return tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served("mx.b.example"); got != "mx.b.example" {
		t.Fatalf("SNI mx.b.example got %s", got)
	}
	if got := served("other.example"); got != "mx.a.example" {
		t.Fatalf("unknown SNI got %s, want the first pair", got)
	}
	writePair("a", "renewed.a.example")
	if err := set.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served("other.example"); got != "renewed.a.example" {
		t.Fatalf("after reload got %s", got)
	}
	os.WriteFile(a.Cert, []byte("garbage"), 0o600)
	if err := set.Reload(); err == nil {
		t.Fatal("a broken certificate file reloaded without error")
	}
	if got := served("other.example"); got != "renewed.a.example" {
		t.Fatalf("a failed reload replaced the certificate: %s", got)
	}
}
