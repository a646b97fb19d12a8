package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sluice-mta/sluice/plugins/dkimsign"
)

// dkimKeygen makes a DKIM signing key for the dkimsign plugin: it writes
// the private key (PEM, mode 0600, never over an existing file) and prints
// the DNS TXT record to publish.
func dkimKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dkim-keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	domain := fs.String("domain", "", "signing `DOMAIN` (d=), the domain of the From addresses signed")
	selector := fs.String("selector", "", "`SELECTOR` (s=): the key's DNS name is SELECTOR._domainkey.DOMAIN")
	algorithm := fs.String("algorithm", "rsa", "key algorithm: rsa or ed25519")
	bits := fs.Int("bits", 2048, "RSA key size in bits")
	out := fs.String("out", "", "private key `FILE` to write (default SELECTOR._domainkey.DOMAIN.pem)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpd dkim-keygen -domain DOMAIN -selector SELECTOR [-algorithm rsa|ed25519] [-bits 2048] [-out FILE]\n\n"+
			"Writes a new DKIM private key (PEM, mode 0600; an existing file is never replaced) for the dkimsign\n"+
			"plugin and prints the DNS TXT record that publishes its public key.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, "smtpd dkim-keygen", stderr); !ok {
		return code
	}
	if *domain == "" || *selector == "" {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: -domain and -selector are required\n")
		fs.Usage()
		return 2
	}
	d, ok := dkimsign.SigningDomain(*domain)
	if !ok {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: -domain %q is not a domain name\n", *domain)
		return 2
	}
	if !dkimsign.ValidSelector(*selector) {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: -selector %q: want a DNS label such as \"mail2026\" (letters, digits, hyphens; dots between labels)\n", *selector)
		return 2
	}
	path := *out
	if path == "" {
		path = *selector + "._domainkey." + d + ".pem"
	}
	key, err := dkimsign.GenerateKey(*algorithm, *bits)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: %v\n", err)
		return 2
	}
	record, err := dkimsign.TXTRecord(*selector, d, key.Public())
	if err != nil {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: %v\n", err)
		return 1
	}
	pemKey, err := dkimsign.MarshalKey(key)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: %v\n", err)
		return 1
	}
	if err := writeNew(path, pemKey); err != nil {
		fmt.Fprintf(stderr, "smtpd dkim-keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "private key written to %s; publish this record in DNS, then add the key to [plugins.dkimsign]:\n", path)
	fmt.Fprintln(stdout, record)
	return 0
}

// writeNew creates path with mode 0600 and writes b; an existing file is
// an error and is left alone.
func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s already exists: not replacing a key that may be in use (choose another -out, or remove it first)", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
