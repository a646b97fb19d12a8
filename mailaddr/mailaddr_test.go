package mailaddr_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/mailaddr"
)

func TestCanonicalDomain(t *testing.T) {
	const refused = "<refused>"
	for _, tt := range []struct{ in, want string }{
		{"example.test", "example.test"},
		{"Example.TEST", "example.test"},
		{"example.test.", "example.test"},
		{"mx-1.example.test", "mx-1.example.test"},
		// An IDN compares by its A-label, given as a U-label or as an
		// A-label in any ASCII case.
		{"bücher.example", "xn--bcher-kva.example"},
		{"Bücher.Example", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.EXAMPLE.", "xn--bcher-kva.example"},
		{"日本.jp", "xn--wgv71a.jp"},
		{"faß.de", "xn--fa-hia.de"}, // IDNA2008: ß is itself, not "ss"
		// Unicode case folding is not ASCII case folding: these are not
		// kernel.test, info.test, bücher.example or example.test.
		{"\u212Aernel.test", refused},     // KELVIN SIGN
		{"\u0130nfo.test", refused},       // LATIN CAPITAL LETTER I WITH DOT ABOVE
		{"BÜCHER.example", refused},       // a non-ASCII capital is not lowered
		{"\uFF45xample.test", refused},    // FULLWIDTH LATIN SMALL LETTER E
		{"example\u3002test", refused},    // IDEOGRAPHIC FULL STOP is no dot
		{"ex\u00ADample.test", refused},   // SOFT HYPHEN
		{"xn--ernel-r74b.test", refused},  // the Kelvin sign's A-label
		{"xn--nfo-eua.test", refused},     // U+0130's A-label
		{"bu\u0308cher.example", refused}, // not NFC
		{"xn--a.test", refused},           // not punycode of a valid label
		{"xn--example-.test", refused},    // an A-label that decodes to ASCII
		{"", refused},
		{".", refused},
		{"..", refused},
		{".example.test", refused},
		{"example..test", refused},
		{"example.test..", refused},
		{"exa mple.test", refused},
		{"exa_mple.test", refused},
		{"-example.test", refused},
		{"example-.test", refused},
		{"bob@example.test", refused},
		{"example.test\x00", refused},
		{strings.Repeat("a", 64) + ".test", refused},
		{strings.Repeat("a.", 127) + "test", refused}, // 257 bytes
		// Address literals.
		{"[192.0.2.1]", "[192.0.2.1]"},
		{"[ipv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"},
		{"[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"},
		{"[192.0.2.300]", refused},
		{"[192.0.2.01]", refused},
		{"[2001:db8::1]", refused}, // IPv6 needs its tag
		{"[IPv6:192.0.2.1]", refused},
		{"[IPv6:fe80::1%eth0]", refused},
		{"[x-tag:stuff]", refused},
		{"[192.0.2.1", refused},
	} {
		got, ok := mailaddr.CanonicalDomain(tt.in)
		if !ok {
			got = refused
		}
		if got != tt.want {
			t.Errorf("CanonicalDomain(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestEqualDomains(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"example.test", "EXAMPLE.test.", true},
		{"bücher.example", "xn--bcher-kva.example", true},
		{"XN--BCHER-KVA.example", "Bücher.example", true},
		{"kernel.test", "\u212Aernel.test", false},
		{"info.test", "\u0130nfo.test", false},
		{"\u212Aernel.test", "\u212Aernel.test", false}, // invalid equals nothing
		{"example.test", "example.test.invalid", false},
		{"[192.0.2.1]", "[192.0.2.1]", true},
		{"[IPv6:2001:db8::1]", "[ipv6:2001:db8:0:0::1]", true},
		{"[192.0.2.1]", "192.0.2.1", false},
	} {
		if got := mailaddr.EqualDomains(tt.a, tt.b); got != tt.want {
			t.Errorf("EqualDomains(%q, %q) = %v; want %v", tt.a, tt.b, got, tt.want)
		}
		if got := mailaddr.EqualDomains(tt.b, tt.a); got != tt.want {
			t.Errorf("EqualDomains(%q, %q) = %v; want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestSplit(t *testing.T) {
	for _, tt := range []struct{ in, local, domain string }{
		{"bob@example.test", "bob", "example.test"},
		{`"a@b"@example.test`, `"a@b"`, "example.test"},
		{"bob@", "bob", ""},
		{"@example.test", "", "example.test"},
	} {
		local, domain, ok := mailaddr.Split(tt.in)
		if !ok || local != tt.local || domain != tt.domain {
			t.Errorf("Split(%q) = %q, %q, %v; want %q, %q, true", tt.in, local, domain, ok, tt.local, tt.domain)
		}
	}
	if local, domain, ok := mailaddr.Split("postmaster"); ok || local != "postmaster" || domain != "" {
		t.Errorf("Split(postmaster) = %q, %q, %v", local, domain, ok)
	}
}

func TestLowerASCII(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "",
		"already lower":     "already lower",
		"PostMaster":        "postmaster",
		"\u212Aelvin":       "\u212Aelvin",
		"\u0130STANBUL":     "\u0130stanbul",
		"BÜCHER":            "bÜcher",
		"poſtmaster":        "poſtmaster", // LATIN SMALL LETTER LONG S stays
		"MiXeD@Example.Org": "mixed@example.org",
	} {
		if got := mailaddr.LowerASCII(in); got != want {
			t.Errorf("LowerASCII(%q) = %q; want %q", in, got, want)
		}
	}
}

func ExampleCanonicalDomain() {
	for _, d := range []string{"Example.TEST.", "bücher.example", "XN--BCHER-KVA.example", "\u212Aernel.test", "[ipv6:2001:DB8::1]"} {
		canon, ok := mailaddr.CanonicalDomain(d)
		fmt.Printf("%+q -> %q %v\n", d, canon, ok)
	}
	// Output:
	// "Example.TEST." -> "example.test" true
	// "b\u00fccher.example" -> "xn--bcher-kva.example" true
	// "XN--BCHER-KVA.example" -> "xn--bcher-kva.example" true
	// "\u212aernel.test" -> "" false
	// "[ipv6:2001:DB8::1]" -> "[IPv6:2001:db8::1]" true
}

func BenchmarkCanonicalDomainASCII(b *testing.B) {
	for b.Loop() {
		mailaddr.CanonicalDomain("Mail.Example.Test")
	}
}

func TestParentSuffixes(t *testing.T) {
	for domain, want := range map[string][]string{
		"a.b.example.com": {".b.example.com", ".example.com", ".com"},
		"localhost":       nil,
		"":                nil,
	} {
		got := slices.Collect(mailaddr.ParentSuffixes(domain))
		if !slices.Equal(got, want) {
			t.Errorf("ParentSuffixes(%q) = %q, want %q", domain, got, want)
		}
	}
}

func TestParseAddressListTakesAnyCharset(t *testing.T) {
	for _, v := range []string{
		"=?windows-1252?q?Al=EFce?= <alice@example.com>",
		"=?iso-2022-jp?B?GyRCJUElJiVkGyhC?= <alice@example.com>, bob@example.com",
	} {
		addrs, err := mailaddr.ParseAddressList(v)
		if err != nil || addrs[0].Address != "alice@example.com" {
			t.Errorf("ParseAddressList(%q) = %v, %v", v, addrs, err)
		}
	}
	if _, err := mailaddr.ParseAddressList("not an address"); err == nil {
		t.Error("a value without an address parsed")
	}
}
