package policy

import (
	"crypto/sha256"
	"crypto/tls"
	"github.com/sluice-mta/sluice/policyd/wire"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// request builds the attribute lines of one request, in the order
// SMTPD_POLICY_README lists them, ended by the empty line. Every attribute
// Postfix sends is sent, empty when Sluice has no value, as Postfix does.
func (p *Plugin) request(c *connection.Connection, tx *transaction.Transaction, st stage, rcpt string) []byte {
	b := make([]byte, 0, 768)
	attr := func(name, value string) { b = wire.AppendAttribute(b, name, sanitize(value)) }
	protocol := "SMTP"
	if c.ESMTP {
		protocol = "ESMTP"
	}
	count := 0
	size := tx.Params.Size
	if st != stageRcpt {
		// Postfix: the recipient only when there is one, and the count of
		// accepted recipients after RCPT.
		count = len(tx.Recipients)
		if count == 1 {
			rcpt = tx.Recipients[0]
		}
	}
	if st == stageEnd {
		size = tx.Size
	}
	clientName := c.RemoteHost
	if clientName == "" {
		clientName = "unknown" // Postfix's value for a client without a name
	}
	var saslMethod string
	if c.AuthUser != "" {
		saslMethod = connection.NoteAuthMech.Get(&c.Notes)
	}

	attr("request", "smtpd_access_policy")
	attr("protocol_state", stageNames[st].state)
	attr("protocol_name", protocol)
	attr("helo_name", c.Helo)
	attr("queue_id", tx.ID)
	attr("sender", tx.Sender)
	attr("recipient", rcpt)
	attr("recipient_count", strconv.Itoa(count))
	attr("client_address", c.RemoteIP().String())
	attr("client_name", clientName)
	attr("reverse_client_name", clientName)
	attr("instance", tx.ID)
	attr("sasl_method", saslMethod)
	attr("sasl_username", c.AuthUser)
	attr("sasl_sender", tx.Params.Auth)
	attr("size", strconv.FormatInt(size, 10))
	t := tlsAttrs(c.TLS)
	attr("ccert_subject", t.subject)
	attr("ccert_issuer", t.issuer)
	attr("ccert_fingerprint", t.fingerprint)
	attr("encryption_protocol", t.protocol)
	attr("encryption_cipher", t.cipher)
	attr("encryption_keysize", strconv.Itoa(t.keysize))
	attr("etrn_domain", "")
	attr("stress", "")
	attr("ccert_pubkey_fingerprint", t.pubkeyFingerprint)
	attr("client_port", strconv.Itoa(int(c.Remote.Port())))
	attr("policy_context", p.policyContext)
	attr("server_address", c.Local.Addr().Unmap().String())
	attr("server_port", strconv.Itoa(int(c.Local.Port())))
	return append(b, '\n')
}

// sanitize makes a value safe for one attribute line: a control character
// (a newline would end the attribute, an empty line the request) becomes
// '?'.
func sanitize(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	b := []byte(s)
	for i, ch := range b {
		if ch < 0x20 || ch == 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

// tlsInfo is what the encryption_* and ccert_* attributes say.
type tlsInfo struct {
	protocol, cipher                                string
	keysize                                         int
	subject, issuer, fingerprint, pubkeyFingerprint string
}

// tlsAttrs describes a connection's TLS state as Postfix does: the
// protocol as OpenSSL names it ("TLSv1.3"), the cipher suite (Go's IANA
// name, "TLS_AES_128_GCM_SHA256"), its symmetric key bits, and for a client
// certificate the common names of its subject and issuer (xtext) and the
// SHA-256 fingerprints of the certificate and of its public key (Postfix's
// default digest since 3.6), as colon-separated hex.
func tlsAttrs(st *tls.ConnectionState) tlsInfo {
	if st == nil {
		return tlsInfo{}
	}
	t := tlsInfo{cipher: tls.CipherSuiteName(st.CipherSuite)}
	switch st.Version {
	case tls.VersionTLS10:
		t.protocol = "TLSv1"
	case tls.VersionTLS11:
		t.protocol = "TLSv1.1"
	case tls.VersionTLS12:
		t.protocol = "TLSv1.2"
	case tls.VersionTLS13:
		t.protocol = "TLSv1.3"
	default:
		t.protocol = tls.VersionName(st.Version)
	}
	switch {
	case strings.Contains(t.cipher, "AES_128"), strings.Contains(t.cipher, "RC4_128"):
		t.keysize = 128
	case strings.Contains(t.cipher, "AES_256"), strings.Contains(t.cipher, "CHACHA20"):
		t.keysize = 256
	case strings.Contains(t.cipher, "3DES"):
		t.keysize = 168
	}
	if len(st.PeerCertificates) > 0 {
		cert := st.PeerCertificates[0]
		t.subject = xtext(cert.Subject.CommonName)
		t.issuer = xtext(cert.Issuer.CommonName)
		sum := sha256.Sum256(cert.Raw)
		t.fingerprint = colonHex(sum[:])
		sum = sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		t.pubkeyFingerprint = colonHex(sum[:])
	}
	return t
}

// xtext encodes s as RFC 3461 xtext: '+', '=' and bytes outside '!'..'~'
// become +XX.
func xtext(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			b.WriteByte('+')
			b.WriteByte(hex[ch>>4])
			b.WriteByte(hex[ch&15])
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// colonHex formats b as upper-case hex pairs separated by colons.
func colonHex(b []byte) string {
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(b)*3)
	for i, x := range b {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, hex[x>>4], hex[x&15])
	}
	return string(out)
}
