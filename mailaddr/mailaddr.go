// Package mailaddr compares the parts of mail addresses the way plugins
// must: domains by their A-label form, with ASCII-only case folding.
//
// Unicode case folding is the trap it closes. strings.ToLower and
// strings.EqualFold map the Kelvin sign U+212A to 'k' and U+0130 (capital I
// with dot) to 'i', so a plugin that lowercases "victim@\u212Aernel.test"
// takes it for a recipient at kernel.test, while the next hop and DNS see
// another name altogether. Here only A-Z fold to a-z; any other character
// must be part of a valid IDNA2008 U-label, which is compared as the
// A-label it converts to (bücher.example is xn--bcher-kva.example). A
// domain that IDNA refuses (the Kelvin sign, U+0130, full-width letters,
// an ideographic full stop, empty or over-long labels) has no canonical
// form and equals nothing, not even itself.
//
// Address literals ("[192.0.2.1]", "[IPv6:2001:db8::1]") are domains too
// in an address; CanonicalDomain returns their canonical form.
package mailaddr

import (
	"io"
	"iter"
	"mime"
	"net/mail"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// CanonicalDomain returns the form of domain d that compares equal for
// every spelling of the same domain, and whether d is a valid domain:
//
//   - a trailing dot ("example.test.") is dropped;
//   - ASCII letters are lowered (A-Z only);
//   - a U-label becomes its A-label ("bücher" becomes "xn--bcher-kva"),
//     and an A-label must decode to a valid U-label, both under IDNA2008's
//     registration rules (UTS #46 with no mapping: a character that
//     lookup would map to another, such as U+212A to 'k', is refused);
//   - the result must be its own lookup form (idna.Lookup), as DNS would
//     use it;
//   - an address literal becomes "[192.0.2.1]" or "[IPv6:2001:db8::1]"
//     (RFC 5952 text for the IPv6 address); other literals are refused.
//
// ok is false for anything else (an empty name, a label IDNA refuses, a
// bad literal); the caller must then treat d as matching no domain.
func CanonicalDomain(d string) (canon string, ok bool) {
	if strings.HasPrefix(d, "[") {
		return canonicalLiteral(d)
	}
	d = LowerASCII(strings.TrimSuffix(d, "."))
	if d == "" {
		return "", false
	}
	a, err := idna.Registration.ToASCII(d)
	if err != nil || a == "" || strings.HasSuffix(a, ".") {
		return "", false
	}
	if l, err := idna.Lookup.ToASCII(a); err != nil || l != a {
		return "", false
	}
	return a, true
}

// EqualDomains reports whether a and b are valid domains (or address
// literals) with the same canonical form. An invalid domain equals
// nothing.
func EqualDomains(a, b string) bool {
	ca, ok := CanonicalDomain(a)
	if !ok {
		return false
	}
	cb, ok := CanonicalDomain(b)
	return ok && ca == cb
}

// Split splits an address at its last '@' (a quoted local part may hold
// '@' itself) into the local part and the domain. ok is false when there
// is no '@'. Neither part is checked or changed.
func Split(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr, "", false
	}
	return addr[:i], addr[i+1:], true
}

// ParseAddressList parses the addresses of a header field such as From
// (RFC 5322 section 3.4) whatever the charset of an encoded display name
// (=?windows-1252?...?=, =?iso-2022-jp?...?=, which net/mail alone
// refuses): a plugin that wants the addresses must not fail on the names.
func ParseAddressList(value string) ([]*mail.Address, error) {
	return addressParser.ParseList(value)
}

var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// ParentSuffixes yields the suffixes of domain that start at each of its
// dots, longest first: "a.b.example.com" gives ".b.example.com",
// ".example.com" and ".com". They are the keys a ".example.com" entry of
// qmail's rcpthosts (or rcptok's domains) is stored under.
func ParentSuffixes(domain string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for i, c := range []byte(domain) {
			if c == '.' && !yield(domain[i:]) {
				return
			}
		}
	}
}

// LowerASCII maps A-Z to a-z and leaves every other byte alone: the case
// folding of domain names and of the local parts a plugin chooses to
// compare without regard to case (strings.ToLower would also fold
// non-ASCII letters, such as the Kelvin sign to 'k').
func LowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// canonicalLiteral returns "[192.0.2.1]" or "[IPv6:2001:db8::1]" for an
// address literal with an IPv4 address or an IPv6 address (no zone).
func canonicalLiteral(lit string) (string, bool) {
	inner, ok := strings.CutPrefix(lit, "[")
	if !ok {
		return "", false
	}
	if inner, ok = strings.CutSuffix(inner, "]"); !ok {
		return "", false
	}
	if len(inner) >= 5 && LowerASCII(inner[:5]) == "ipv6:" {
		a, err := netip.ParseAddr(inner[5:])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", false
		}
		return "[IPv6:" + a.String() + "]", true
	}
	a, err := netip.ParseAddr(inner)
	if err != nil || !a.Is4() {
		return "", false
	}
	return "[" + a.String() + "]", true
}
