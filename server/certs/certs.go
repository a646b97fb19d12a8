// Package certs holds a TLS listener's certificates: read from PEM files,
// the one served picked by the client's SNI name, read again on demand
// (SIGHUP) without a restart; or a throwaway self-signed certificate made
// in memory, for local testing. TLSConfig turns them into the
// *tls.Config of a listener.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync/atomic"
	"time"
)

// Pair names a certificate chain file and its private key file (PEM).
type Pair struct {
	Cert string
	Key  string
}

// Set holds a listener's certificates, picked by SNI, and reloads them
// from disk on demand (SIGHUP) without a restart.
type Set struct {
	pairs []Pair
	certs atomic.Pointer[[]tls.Certificate]
}

// Load reads every pair. The first pair is the default when no SNI name
// matches.
func Load(pairs []Pair) (*Set, error) {
	if len(pairs) == 0 {
		return nil, errors.New("no certificate: give at least one cert/key pair")
	}
	c := &Set{pairs: pairs}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// SelfSigned returns a throwaway self-signed certificate for hostname, made
// in memory at start: for local testing only, clients cannot verify it.
func SelfSigned(hostname string) (*Set, error) {
	certPEM, keyPEM, err := SelfSignedPEM(hostname, 365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	c := &Set{}
	certs := []tls.Certificate{cert}
	c.certs.Store(&certs)
	return c, nil
}

// SelfSignedPEM makes a self-signed server certificate for hostname, valid
// from an hour ago for validFor, and returns it and its key as PEM: what
// SelfSigned serves, and what a test writes to files for Load.
func SelfSignedPEM(hostname string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"Sluice self-signed, for testing only"}},
		DNSNames:     []string{hostname},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// Reload reads the files again. On error the certificates in use stay. A
// self-signed Set has no files and keeps its certificate.
func (c *Set) Reload() error {
	if len(c.pairs) == 0 {
		return nil
	}
	var certs []tls.Certificate
	for _, p := range c.pairs {
		cert, err := tls.LoadX509KeyPair(p.Cert, p.Key)
		if err != nil {
			return fmt.Errorf("load certificate %s with key %s: %w", p.Cert, p.Key, err)
		}
		certs = append(certs, cert)
	}
	c.certs.Store(&certs)
	return nil
}

// get picks the certificate for the client's SNI name.
func (c *Set) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	certs := *c.certs.Load()
	if hello.ServerName != "" {
		for i := range certs {
			if certs[i].Leaf != nil && certs[i].Leaf.VerifyHostname(hello.ServerName) == nil {
				return &certs[i], nil
			}
		}
	}
	return &certs[0], nil
}

// TLSConfig returns a server configuration using these certificates with
// the given minimum version ("1.2" or "1.3"; "" means 1.2).
func (c *Set) TLSConfig(minVersion string) (*tls.Config, error) {
	v := uint16(tls.VersionTLS12)
	switch strings.TrimPrefix(minVersion, "TLS") {
	case "", "1.2":
	case "1.3":
		v = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("tls_min_version %q: want \"1.2\" or \"1.3\"", minVersion)
	}
	return &tls.Config{GetCertificate: c.get, MinVersion: v}, nil
}
