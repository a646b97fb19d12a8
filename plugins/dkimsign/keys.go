package dkimsign

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinRSABits is the smallest RSA key the plugin signs with: RFC 8301
// forbids smaller ones. 2048 is the size to use (and keygen's default).
const MinRSABits = 1024

// LoadKey reads a PEM private key for signing: PKCS#8 ("PRIVATE KEY", what
// GenerateKey, `smtpd dkim-keygen`, OpenSSL 3 and opendkim-genkey write)
// holding an RSA or Ed25519 key, or PKCS#1 ("RSA PRIVATE KEY"). The error
// names the file and says what is wrong.
func LoadKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	key, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}

// ParseKey parses the first PEM private key block in b (see LoadKey).
func ParseKey(b []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no PEM private key in the file (want a \"PRIVATE KEY\" or \"RSA PRIVATE KEY\" block; `smtpd dkim-keygen` writes one)")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue // a certificate or parameters next to the key
		}
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			if n := k.N.BitLen(); n < MinRSABits {
				return nil, fmt.Errorf("RSA key of %d bits: DKIM wants at least %d (RFC 8301), and 2048 is the size to use", n, MinRSABits)
			}
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		default:
			return nil, fmt.Errorf("a %T key: DKIM signs with RSA or Ed25519 keys", key)
		}
	}
}

// GenerateKey makes a new signing key: algorithm "rsa" (of bits bits) or
// "ed25519" (bits is ignored).
func GenerateKey(algorithm string, bits int) (crypto.Signer, error) {
	switch algorithm {
	case "rsa":
		if bits < MinRSABits {
			return nil, fmt.Errorf("an RSA key of %d bits: want at least %d (2048 is the size to use)", bits, MinRSABits)
		}
		if bits > 8192 {
			return nil, fmt.Errorf("an RSA key of %d bits: want at most 8192 (a DNS TXT record of a larger key is unwieldy and verifiers may refuse it)", bits)
		}
		return rsa.GenerateKey(rand.Reader, bits)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("algorithm %q: want \"rsa\" or \"ed25519\"", algorithm)
}

// MarshalKey returns key as a PKCS#8 PEM block, the form LoadKey reads.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// KeyRecord returns the DKIM key record of pub, the value of the TXT
// record to publish at SELECTOR._domainkey.DOMAIN: "v=DKIM1; k=rsa;
// p=..." with the SubjectPublicKeyInfo of an RSA key, or "v=DKIM1;
// k=ed25519; p=..." with the 32 bytes of an Ed25519 key (RFC 8463).
func KeyRecord(pub crypto.PublicKey) (string, error) {
	var k string
	var p []byte
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pk)
		if err != nil {
			return "", err
		}
		k, p = "rsa", der
	case ed25519.PublicKey:
		k, p = "ed25519", pk
	default:
		return "", fmt.Errorf("a %T key: DKIM signs with RSA or Ed25519 keys", pub)
	}
	return "v=DKIM1; k=" + k + "; p=" + base64.StdEncoding.EncodeToString(p), nil
}

// TXTRecord returns the zone-file line that publishes pub for selector and
// domain:
//
//	SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkq..." "..."
//
// with the record split into strings of at most 255 bytes, as DNS wants
// (a 2048-bit RSA key does not fit in one); resolvers and verifiers join
// them again.
func TXTRecord(selector, domain string, pub crypto.PublicKey) (string, error) {
	rec, err := KeyRecord(pub)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(selector + "._domainkey." + strings.TrimSuffix(domain, ".") + ". IN TXT")
	for len(rec) > 0 {
		n := min(len(rec), 255)
		b.WriteString(` "` + rec[:n] + `"`) // base64, ';', '=' and spaces: nothing to escape
		rec = rec[n:]
	}
	return b.String(), nil
}
