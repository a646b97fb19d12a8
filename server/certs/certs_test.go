package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server/certs"
)

// selfSignedPEM returns a PEM certificate and key for host.
func selfSignedPEM(t *testing.T, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func TestSetBySNIAndReload(t *testing.T) {
	dir := t.TempDir()
	writePair := func(name, host string) certs.Pair {
		cert, key := selfSignedPEM(t, host)
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
