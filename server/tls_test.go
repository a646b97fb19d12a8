package server_test

import (
	"crypto/tls"
	"testing"

	"github.com/sluice-mta/sluice/server/certs"
)

// testTLSConfig returns a server TLS config with a throwaway self-signed
// certificate for mx.example.test, made as a listener without a
// certificate of its own gets one.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	set, err := certs.SelfSigned("mx.example.test")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := set.TLSConfig("")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
