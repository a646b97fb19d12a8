package command

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// Enhanced codes used by the address parser.
var (
	addrEnh552 = [3]int{5, 5, 2} // syntax error
	addrEnh554 = [3]int{5, 5, 4} // bad parameters
	addrEnh513 = [3]int{5, 1, 3} // bad address syntax
	addrEnh567 = [3]int{5, 6, 7} // non-ASCII without SMTPUTF8
	addrEnh571 = [3]int{5, 7, 1} // refused by policy
)

// addrWant checks err against an expected refusal; code 0 means success.
func addrWant(t *testing.T, err error, code int, enh [3]int) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Fatalf("unexpected refusal: %v", err)
		}
		return
	}
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("want %d %v, got %v", code, enh, err)
	}
	if ae.Code != code || ae.Enhanced != enh {
		t.Fatalf("want %d %v, got %v", code, enh, ae)
	}
	if ae.Msg == "" {
		t.Fatalf("refusal without a message: %v", ae)
	}
}

func TestErrorText(t *testing.T) {
	e := &Error{Code: 553, Enhanced: [3]int{5, 1, 3}, Msg: "Bad address syntax"}
	if got, want := e.Error(), "553 5.1.3 Bad address syntax"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func TestParseMail(t *testing.T) {
	long64 := strings.Repeat("a", 64)
	long65 := strings.Repeat("a", 65)
	label63 := strings.Repeat("d", 63)
	label64 := strings.Repeat("d", 64)
	at254 := "a@" + strings.Repeat("d.", 123) + "dddddd"
	tests := []struct {
		name string
		arg  string
		want Mail
		code int
		enh  [3]int
	}{
		// Addresses.
		{name: "plain", arg: "FROM:<a@b.example>", want: Mail{Sender: "a@b.example"}},
		{name: "keyword any case", arg: "from:<a@b.example>", want: Mail{Sender: "a@b.example"}},
		{name: "mixed case keyword", arg: "FrOm:<a@b.example>", want: Mail{Sender: "a@b.example"}},
		{name: "one space after colon", arg: "FROM: <a@b.example>", want: Mail{Sender: "a@b.example"}},
		{name: "two spaces after colon", arg: "FROM:  <a@b.example>", code: 501, enh: addrEnh552},
		{name: "space before colon", arg: "FROM :<a@b.example>", code: 501, enh: addrEnh552},
		{name: "null sender", arg: "FROM:<>", want: Mail{}},
		{name: "null sender with space", arg: "FROM: <>", want: Mail{}},
		{name: "null sender with params", arg: "FROM:<> SIZE=10 BODY=7BIT", want: Mail{Size: 10, Body: "7BIT"}},
		{name: "dotted local part", arg: "FROM:<first.last@b.example>", want: Mail{Sender: "first.last@b.example"}},
		{name: "atext specials", arg: "FROM:<a!#$%&'*+-/=?^_`{|}~z@b.example>", want: Mail{Sender: "a!#$%&'*+-/=?^_`{|}~z@b.example"}},
		{name: "domain case kept", arg: "FROM:<A@B.Example>", want: Mail{Sender: "A@B.Example"}},
		{name: "single label domain", arg: "FROM:<a@localhost>", want: Mail{Sender: "a@localhost"}},
		{name: "hyphen in label", arg: "FROM:<a@x-y.example>", want: Mail{Sender: "a@x-y.example"}},
		{name: "source route stripped", arg: "FROM:<@a.example,@b.example:u@c.example>", want: Mail{Sender: "u@c.example"}},
		{name: "one hop route stripped", arg: "FROM:<@a.example:u@c.example>", want: Mail{Sender: "u@c.example"}},
		{name: "route without colon", arg: "FROM:<@a.example,u@c.example>", code: 553, enh: addrEnh513},
		{name: "route with bad hop", arg: "FROM:<@a.example,b.example:u@c.example>", code: 553, enh: addrEnh513},
		{name: "route with empty hop", arg: "FROM:<@:u@c.example>", code: 553, enh: addrEnh513},
		{name: "route with literal hop", arg: "FROM:<@[192.0.2.1]:u@c.example>", code: 553, enh: addrEnh513},
		{name: "route without mailbox", arg: "FROM:<@a.example:>", code: 553, enh: addrEnh513},
		{name: "quoted local part kept", arg: `FROM:<"john doe"@example.test>`, want: Mail{Sender: `"john doe"@example.test`}},
		{name: "quoted pair kept", arg: `FROM:<"a\"b"@example.test>`, want: Mail{Sender: `"a\"b"@example.test`}},
		{name: "quoted with bracket", arg: `FROM:<"a>b"@example.test> SIZE=1`, want: Mail{Sender: `"a>b"@example.test`, Size: 1}},
		{name: "quoted relay trick", arg: `FROM:<"relay@evil.test"@example.test>`, code: 553, enh: addrEnh513},
		{name: "quoted-pair relay trick", arg: `FROM:<"relay\@evil.test"@example.test>`, code: 553, enh: addrEnh513},
		{name: "empty quoted", arg: `FROM:<""@example.test>`, code: 553, enh: addrEnh513},
		{name: "unterminated quote", arg: `FROM:<"abc@example.test>`, code: 501, enh: addrEnh552},
		{name: "quote inside atom", arg: `FROM:<a"b"@example.test>`, code: 553, enh: addrEnh513},
		{name: "postmaster without domain", arg: "FROM:<Postmaster>", code: 553, enh: addrEnh513},
		{name: "no domain", arg: "FROM:<user>", code: 553, enh: addrEnh513},
		{name: "empty domain", arg: "FROM:<user@>", code: 553, enh: addrEnh513},
		{name: "empty local part", arg: "FROM:<@example.test>", code: 553, enh: addrEnh513},
		{name: "two @", arg: "FROM:<a@b@example.test>", code: 553, enh: addrEnh513},
		{name: "leading dot", arg: "FROM:<.a@example.test>", code: 553, enh: addrEnh513},
		{name: "trailing dot", arg: "FROM:<a.@example.test>", code: 553, enh: addrEnh513},
		{name: "double dot", arg: "FROM:<a..b@example.test>", code: 553, enh: addrEnh513},
		{name: "domain trailing dot", arg: "FROM:<a@example.test.>", code: 553, enh: addrEnh513},
		{name: "domain double dot", arg: "FROM:<a@example..test>", code: 553, enh: addrEnh513},
		{name: "domain leading hyphen", arg: "FROM:<a@-x.example>", code: 553, enh: addrEnh513},
		{name: "domain trailing hyphen", arg: "FROM:<a@x-.example>", code: 553, enh: addrEnh513},
		{name: "domain underscore", arg: "FROM:<a@x_y.example>", code: 553, enh: addrEnh513},
		{name: "space in address", arg: "FROM:<a b@example.test>", code: 553, enh: addrEnh513},
		{name: "backslash outside quotes", arg: `FROM:<a\b@example.test>`, code: 553, enh: addrEnh513},
		{name: "label of 63", arg: "FROM:<a@" + label63 + ".example>", want: Mail{Sender: "a@" + label63 + ".example"}},
		{name: "label of 64", arg: "FROM:<a@" + label64 + ".example>", code: 553, enh: addrEnh513},
		{name: "local part of 64", arg: "FROM:<" + long64 + "@example.test>", want: Mail{Sender: long64 + "@example.test"}},
		{name: "local part of 65", arg: "FROM:<" + long65 + "@example.test>", code: 501, enh: addrEnh513},
		{name: "path of 256", arg: "FROM:<" + at254 + ">", want: Mail{Sender: at254}},
		{name: "path of 257", arg: "FROM:<" + at254 + "d>", code: 501, enh: addrEnh513},

		// Address literals.
		{name: "IPv4 literal", arg: "FROM:<a@[192.0.2.1]>", want: Mail{Sender: "a@[192.0.2.1]"}},
		{name: "IPv6 literal", arg: "FROM:<a@[IPv6:2001:db8::1]>", want: Mail{Sender: "a@[IPv6:2001:db8::1]"}},
		{name: "IPv6 tag any case", arg: "FROM:<a@[ipv6:2001:db8::1]>", want: Mail{Sender: "a@[ipv6:2001:db8::1]"}},
		{name: "IPv6 with IPv4 tail", arg: "FROM:<a@[IPv6:::ffff:192.0.2.1]>", want: Mail{Sender: "a@[IPv6:::ffff:192.0.2.1]"}},
		{name: "IPv4 with prefix", arg: "FROM:<a@[192.0.2.0/24]>", code: 553, enh: addrEnh513},
		{name: "IPv4 out of range", arg: "FROM:<a@[192.0.2.256]>", code: 553, enh: addrEnh513},
		{name: "IPv4 leading zero", arg: "FROM:<a@[192.0.2.01]>", code: 553, enh: addrEnh513},
		{name: "IPv4 short", arg: "FROM:<a@[192.0.2]>", code: 553, enh: addrEnh513},
		{name: "IPv6 without tag", arg: "FROM:<a@[2001:db8::1]>", code: 553, enh: addrEnh513},
		{name: "IPv4 with IPv6 tag", arg: "FROM:<a@[IPv6:192.0.2.1]>", code: 553, enh: addrEnh513},
		{name: "IPv6 with zone", arg: "FROM:<a@[IPv6:fe80::1%eth0]>", code: 553, enh: addrEnh513},
		{name: "general literal", arg: "FROM:<a@[x400:foo]>", code: 553, enh: addrEnh513},
		{name: "empty literal", arg: "FROM:<a@[]>", code: 553, enh: addrEnh513},
		{name: "unclosed literal", arg: "FROM:<a@[192.0.2.1>", code: 553, enh: addrEnh513},
		{name: "literal then text", arg: "FROM:<a@[192.0.2.1].x>", code: 553, enh: addrEnh513},

		// Control bytes and 8-bit.
		{name: "qmail envelope forgery", arg: "FROM:<a\x00Tv@evil\x00Tx@mx>", code: 501, enh: addrEnh552},
		{name: "NUL", arg: "FROM:<a\x00@example.test>", code: 501, enh: addrEnh552},
		{name: "CR", arg: "FROM:<a\r@example.test>", code: 501, enh: addrEnh552},
		{name: "LF", arg: "FROM:<a@example.test>\nRCPT TO:<b@c>", code: 501, enh: addrEnh552},
		{name: "CRLF in parameter", arg: "FROM:<a@example.test> SIZE=1\r\n", code: 501, enh: addrEnh552},
		{name: "tab", arg: "FROM:<a@example.test>\tSIZE=1", code: 501, enh: addrEnh552},
		{name: "DEL", arg: "FROM:<a\x7f@example.test>", code: 501, enh: addrEnh552},
		{name: "control in quotes", arg: "FROM:<\"a\x01\"@example.test>", code: 501, enh: addrEnh552},
		{name: "UTF-8 without SMTPUTF8", arg: "FROM:<пользователь@пример.испытание>", code: 553, enh: addrEnh567},
		{name: "UTF-8 with SMTPUTF8", arg: "FROM:<пользователь@пример.испытание> SMTPUTF8", want: Mail{Sender: "пользователь@пример.испытание", UTF8: true}},
		{name: "UTF-8 quoted with SMTPUTF8", arg: "FROM:<\"jöhn dœ\"@example.test> smtputf8", want: Mail{Sender: "\"jöhn dœ\"@example.test", UTF8: true}},
		{name: "Latin-1 byte without SMTPUTF8", arg: "FROM:<j\xf6hn@example.test>", code: 553, enh: addrEnh567},
		{name: "invalid UTF-8 with SMTPUTF8", arg: "FROM:<j\xf6hn@example.test> SMTPUTF8", code: 553, enh: addrEnh567},
		{name: "overlong UTF-8 with SMTPUTF8", arg: "FROM:<a\xc0\xaf@example.test> SMTPUTF8", code: 553, enh: addrEnh567},
		{name: "C1 control with SMTPUTF8", arg: "FROM:<a\u0085@example.test> SMTPUTF8", code: 501, enh: addrEnh552},
		{name: "8-bit in parameter without SMTPUTF8", arg: "FROM:<a@example.test> SIZE=1é", code: 553, enh: addrEnh567},
		{name: "UTF-8 in literal", arg: "FROM:<a@[192.0.2.é]> SMTPUTF8", code: 553, enh: addrEnh513},
		{name: "UTF-8 with malformed SMTPUTF8", arg: "FROM:<é@example.test> SMTPUTF8=YES", code: 501, enh: addrEnh554},

		// Brackets and trailing text.
		{name: "missing brackets", arg: "FROM:a@example.test", code: 501, enh: addrEnh552},
		{name: "missing closing bracket", arg: "FROM:<a@example.test", code: 501, enh: addrEnh552},
		{name: "missing opening bracket", arg: "FROM:a@example.test>", code: 501, enh: addrEnh552},
		{name: "missing keyword", arg: "<a@example.test>", code: 501, enh: addrEnh552},
		{name: "wrong keyword", arg: "TO:<a@example.test>", code: 501, enh: addrEnh552},
		{name: "empty", arg: "", code: 501, enh: addrEnh552},
		{name: "keyword only", arg: "FROM:", code: 501, enh: addrEnh552},
		{name: "garbage after bracket", arg: "FROM:<a@example.test>x", code: 501, enh: addrEnh552},
		{name: "second bracket", arg: "FROM:<a@example.test>>", code: 501, enh: addrEnh552},
		{name: "nested brackets", arg: "FROM:<<a@example.test>>", code: 501, enh: addrEnh552},
		{name: "trailing word", arg: "FROM:<a@example.test> junk", code: 555, enh: addrEnh554},
		{name: "trailing punctuation", arg: "FROM:<a@example.test> <b@example.test>", code: 501, enh: addrEnh554},
		{name: "trailing space", arg: "FROM:<a@example.test> ", want: Mail{Sender: "a@example.test"}},

		// Parameters.
		{name: "SIZE", arg: "FROM:<a@example.test> SIZE=12345", want: Mail{Sender: "a@example.test", Size: 12345}},
		{name: "size lower case", arg: "FROM:<a@example.test> size=1", want: Mail{Sender: "a@example.test", Size: 1}},
		{name: "SIZE zero", arg: "FROM:<a@example.test> SIZE=0", want: Mail{Sender: "a@example.test"}},
		{name: "SIZE 19 digits", arg: "FROM:<a@example.test> SIZE=9223372036854775807", want: Mail{Sender: "a@example.test", Size: 9223372036854775807}},
		{name: "SIZE overflow", arg: "FROM:<a@example.test> SIZE=9223372036854775808", code: 501, enh: addrEnh554},
		{name: "SIZE 20 digits", arg: "FROM:<a@example.test> SIZE=00000000000000000001", code: 501, enh: addrEnh554},
		{name: "SIZE negative", arg: "FROM:<a@example.test> SIZE=-1", code: 501, enh: addrEnh554},
		{name: "SIZE plus", arg: "FROM:<a@example.test> SIZE=+1", code: 501, enh: addrEnh554},
		{name: "SIZE hex", arg: "FROM:<a@example.test> SIZE=0x10", code: 501, enh: addrEnh554},
		{name: "SIZE without value", arg: "FROM:<a@example.test> SIZE", code: 501, enh: addrEnh554},
		{name: "SIZE empty value", arg: "FROM:<a@example.test> SIZE=", code: 501, enh: addrEnh554},
		{name: "SIZE twice", arg: "FROM:<a@example.test> SIZE=1 SIZE=2", code: 501, enh: addrEnh554},
		{name: "BODY 7BIT", arg: "FROM:<a@example.test> BODY=7BIT", want: Mail{Sender: "a@example.test", Body: "7BIT"}},
		{name: "BODY 8BITMIME", arg: "FROM:<a@example.test> BODY=8BITMIME", want: Mail{Sender: "a@example.test", Body: "8BITMIME"}},
		{name: "BODY lower case", arg: "FROM:<a@example.test> body=8bitmime", want: Mail{Sender: "a@example.test", Body: "8BITMIME"}},
		{name: "BODY BINARYMIME", arg: "FROM:<a@example.test> BODY=BINARYMIME", code: 555, enh: addrEnh554},
		{name: "BODY other", arg: "FROM:<a@example.test> BODY=9BIT", code: 555, enh: addrEnh554},
		{name: "BODY without value", arg: "FROM:<a@example.test> BODY", code: 501, enh: addrEnh554},
		{name: "BODY twice", arg: "FROM:<a@example.test> BODY=7BIT BODY=8BITMIME", code: 501, enh: addrEnh554},
		{name: "SMTPUTF8 ASCII", arg: "FROM:<a@example.test> SMTPUTF8", want: Mail{Sender: "a@example.test", UTF8: true}},
		{name: "SMTPUTF8 with value", arg: "FROM:<a@example.test> SMTPUTF8=1", code: 501, enh: addrEnh554},
		// Python's smtplib sends it twice from send_message(mail_options=["SMTPUTF8"]); Postfix takes it.
		{name: "SMTPUTF8 twice", arg: "FROM:<a@example.test> SMTPUTF8 SMTPUTF8", want: Mail{Sender: "a@example.test", UTF8: true}},
		{name: "SMTPUTF8 twice, one with a value", arg: "FROM:<a@example.test> SMTPUTF8 SMTPUTF8=x", code: 501, enh: addrEnh554},
		{name: "AUTH", arg: "FROM:<a@example.test> AUTH=a@example.test", want: Mail{Sender: "a@example.test", Auth: "a@example.test"}},
		{name: "AUTH null", arg: "FROM:<a@example.test> AUTH=<>", want: Mail{Sender: "a@example.test", Auth: "<>"}},
		{name: "AUTH xtext", arg: "FROM:<a@example.test> AUTH=a+2Bb+3Dc@example.test", want: Mail{Sender: "a@example.test", Auth: "a+b=c@example.test"}},
		{name: "AUTH xtext lower hex", arg: "FROM:<a@example.test> AUTH=a+2bb@example.test", want: Mail{Sender: "a@example.test", Auth: "a+b@example.test"}},
		{name: "AUTH xtext space", arg: "FROM:<a@example.test> AUTH=\"a+20b\"@example.test", want: Mail{Sender: "a@example.test", Auth: "\"a b\"@example.test"}},
		{name: "AUTH xtext UTF-8", arg: "FROM:<a@example.test> AUTH=j+C3+B6hn@example.test SMTPUTF8", want: Mail{Sender: "a@example.test", Auth: "jöhn@example.test", UTF8: true}},
		{name: "AUTH xtext 8-bit without SMTPUTF8", arg: "FROM:<a@example.test> AUTH=j+C3+B6hn@example.test", code: 501, enh: addrEnh554},
		{name: "AUTH xtext invalid UTF-8", arg: "FROM:<a@example.test> AUTH=j+F6hn@example.test SMTPUTF8", code: 501, enh: addrEnh554},
		{name: "AUTH xtext NUL", arg: "FROM:<a@example.test> AUTH=a+00b", code: 501, enh: addrEnh554},
		{name: "AUTH xtext CR", arg: "FROM:<a@example.test> AUTH=a+0Db", code: 501, enh: addrEnh554},
		{name: "AUTH xtext DEL", arg: "FROM:<a@example.test> AUTH=a+7Fb", code: 501, enh: addrEnh554},
		{name: "AUTH xtext truncated", arg: "FROM:<a@example.test> AUTH=a+2", code: 501, enh: addrEnh554},
		{name: "AUTH xtext bad hex", arg: "FROM:<a@example.test> AUTH=a+GG", code: 501, enh: addrEnh554},
		{name: "AUTH without value", arg: "FROM:<a@example.test> AUTH", code: 501, enh: addrEnh554},
		{name: "AUTH of 256", arg: "FROM:<a@example.test> AUTH=" + strings.Repeat("+41", 256), want: Mail{Sender: "a@example.test", Auth: strings.Repeat("A", 256)}},
		{name: "AUTH of 257", arg: "FROM:<a@example.test> AUTH=" + strings.Repeat("A", 257), code: 501, enh: addrEnh554},
		{name: "AUTH twice", arg: "FROM:<a@example.test> AUTH=<> AUTH=<>", code: 501, enh: addrEnh554},
		{name: "all parameters", arg: "FROM:<a@example.test> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>", want: Mail{Sender: "a@example.test", Size: 100, Body: "8BITMIME", UTF8: true, Auth: "<>"}},
		{name: "several spaces between", arg: "FROM:<a@example.test>  SIZE=100   BODY=7BIT", want: Mail{Sender: "a@example.test", Size: 100, Body: "7BIT"}},
		{name: "RET", arg: "FROM:<a@example.test> RET=HDRS", code: 555, enh: addrEnh554},
		{name: "ENVID", arg: "FROM:<a@example.test> ENVID=abc", code: 555, enh: addrEnh554},
		{name: "unknown flag", arg: "FROM:<a@example.test> XFOO", code: 555, enh: addrEnh554},
		{name: "keyword with hyphen", arg: "FROM:<a@example.test> X-FOO=1", code: 555, enh: addrEnh554},
		{name: "keyword leading hyphen", arg: "FROM:<a@example.test> -X=1", code: 501, enh: addrEnh554},
		{name: "empty keyword", arg: "FROM:<a@example.test> =1", code: 501, enh: addrEnh554},
		{name: "value with equals", arg: "FROM:<a@example.test> SIZE=1=2", code: 501, enh: addrEnh554},
		{name: "bad keyword char", arg: "FROM:<a@example.test> SI_ZE=1", code: 501, enh: addrEnh554},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMail(tt.arg, false)
			addrWant(t, err, tt.code, tt.enh)
			if tt.code == 0 && got != tt.want {
				t.Fatalf("ParseMail(%q) = %+v, want %+v", tt.arg, got, tt.want)
			}
			if tt.code != 0 && got != (Mail{}) {
				t.Fatalf("refusal returned a partial result %+v", got)
			}
		})
	}
}

func TestParseRcpt(t *testing.T) {
	tests := []struct {
		name   string
		arg    string
		utf8   bool
		strict bool
		want   string
		code   int
		enh    [3]int
	}{
		{name: "plain", arg: "TO:<b@c.example>", want: "b@c.example"},
		{name: "keyword any case", arg: "to:<b@c.example>", want: "b@c.example"},
		{name: "one space after colon", arg: "TO: <b@c.example>", want: "b@c.example"},
		{name: "two spaces after colon", arg: "TO:  <b@c.example>", code: 501, enh: addrEnh552},
		{name: "Postmaster", arg: "TO:<Postmaster>", want: "Postmaster"},
		{name: "postmaster lower case", arg: "TO:<postmaster>", want: "Postmaster"},
		{name: "POSTMASTER strict", arg: "TO:<POSTMASTER>", strict: true, want: "Postmaster"},
		{name: "postmaster with domain kept", arg: "TO:<postmaster@c.example>", want: "postmaster@c.example"},
		{name: "quoted Postmaster", arg: `TO:<"Postmaster">`, code: 553, enh: addrEnh513},
		{name: "routed Postmaster", arg: "TO:<@a.example:Postmaster>", code: 553, enh: addrEnh513},
		{name: "other bare name", arg: "TO:<root>", code: 553, enh: addrEnh513},
		{name: "postmasters", arg: "TO:<postmasters>", code: 553, enh: addrEnh513},
		{name: "null recipient", arg: "TO:<>", code: 553, enh: addrEnh513},
		{name: "source route stripped", arg: "TO:<@a.example,@b.example:u@c.example>", want: "u@c.example"},
		{name: "quoted kept", arg: `TO:<"john doe"@example.test>`, want: `"john doe"@example.test`},
		{name: "quoted relay trick", arg: `TO:<"relay@evil.test"@example.test>`, code: 553, enh: addrEnh513},
		{name: "qmail envelope forgery", arg: "TO:<a\x00Tv@evil\x00Tx@mx>", code: 501, enh: addrEnh552},
		{name: "CR LF", arg: "TO:<a@b.example>\r\nDATA", code: 501, enh: addrEnh552},
		{name: "two @", arg: "TO:<a@b@c.example>", code: 553, enh: addrEnh513},
		{name: "percent hack permissive", arg: "TO:<user%other@example.test>", want: "user%other@example.test"},
		{name: "percent hack strict", arg: "TO:<user%other@example.test>", strict: true, code: 553, enh: addrEnh571},
		{name: "bang path permissive", arg: "TO:<bang!path@example.test>", want: "bang!path@example.test"},
		{name: "bang path strict", arg: "TO:<bang!path@example.test>", strict: true, code: 553, enh: addrEnh571},
		{name: "quoted percent strict", arg: `TO:<"a%b"@example.test>`, strict: true, code: 553, enh: addrEnh571},
		{name: "percent in domain is bad syntax", arg: "TO:<a@b%c.example>", code: 553, enh: addrEnh513},
		{name: "plain strict", arg: "TO:<b@c.example>", strict: true, want: "b@c.example"},
		{name: "UTF-8 without SMTPUTF8", arg: "TO:<josé@example.test>", code: 553, enh: addrEnh567},
		{name: "UTF-8 with SMTPUTF8", arg: "TO:<josé@例え.テスト>", utf8: true, want: "josé@例え.テスト"},
		{name: "invalid UTF-8 with SMTPUTF8", arg: "TO:<jos\xe9@example.test>", utf8: true, code: 553, enh: addrEnh567},
		{name: "truncated UTF-8 with SMTPUTF8", arg: "TO:<jos\xc3@example.test>", utf8: true, code: 553, enh: addrEnh567},
		{name: "local part of 65", arg: "TO:<" + strings.Repeat("x", 65) + "@example.test>", code: 501, enh: addrEnh513},
		{name: "IPv4 literal", arg: "TO:<b@[192.0.2.1]>", want: "b@[192.0.2.1]"},
		{name: "IPv6 literal", arg: "TO:<b@[IPv6:2001:db8::1]>", want: "b@[IPv6:2001:db8::1]"},
		{name: "bad IPv6 literal", arg: "TO:<b@[IPv6:2001:db8:::1]>", code: 553, enh: addrEnh513},
		{name: "missing brackets", arg: "TO:b@c.example", code: 501, enh: addrEnh552},
		{name: "wrong keyword", arg: "FROM:<b@c.example>", code: 501, enh: addrEnh552},
		{name: "garbage after bracket", arg: "TO:<b@c.example>x", code: 501, enh: addrEnh552},
		{name: "NOTIFY", arg: "TO:<b@c.example> NOTIFY=NEVER", code: 555, enh: addrEnh554},
		{name: "ORCPT", arg: "TO:<b@c.example> ORCPT=rfc822;b@c.example", code: 555, enh: addrEnh554},
		{name: "unknown flag", arg: "TO:<b@c.example> XFOO", code: 555, enh: addrEnh554},
		{name: "bad parameter syntax", arg: "TO:<b@c.example> <x>", code: 501, enh: addrEnh554},
		{name: "trailing space", arg: "TO:<b@c.example> ", want: "b@c.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRcpt(tt.arg, tt.utf8, tt.strict, false)
			addrWant(t, err, tt.code, tt.enh)
			if tt.code == 0 && got.Rcpt != tt.want {
				t.Fatalf("ParseRcpt(%q) = %q, want %q", tt.arg, got.Rcpt, tt.want)
			}
			if tt.code != 0 && !reflect.DeepEqual(got, Rcpt{}) {
				t.Fatalf("refusal returned a partial result %+v", got)
			}
		})
	}
}

// TestParseAddrLinear feeds long hostile inputs; a super-linear scanner
// would make this test slow.
func TestParseAddrLinear(t *testing.T) {
	long := []string{
		"FROM:<" + strings.Repeat("a.", 1<<16) + "@x>",
		"FROM:<" + strings.Repeat(`"\`, 1<<16),
		"FROM:<a@b>" + strings.Repeat(" SIZE=1", 1<<16),
		"FROM:<@" + strings.Repeat("a,@", 1<<16) + ":a@b>",
		"FROM:<a@b> AUTH=" + strings.Repeat("+41", 1<<16),
	}
	for _, s := range long {
		if _, err := ParseMail(s, false); err == nil {
			t.Fatalf("accepted a %d-byte argument", len(s))
		}
		if _, err := ParseRcpt("TO:"+s[len("FROM:"):], true, false, false); err == nil {
			t.Fatalf("accepted a %d-byte argument", len(s))
		}
	}
}

// addrOneAt reports whether addr is a mailbox with exactly one '@' outside
// a leading quoted local part.
func addrOneAt(addr string) bool {
	rest := addr
	if strings.HasPrefix(rest, `"`) {
		i := 1
		for ; i < len(rest); i++ {
			if rest[i] == '\\' {
				i++
			} else if rest[i] == '"' {
				break
			}
		}
		if i >= len(rest) {
			return false
		}
		rest = rest[i+1:]
	}
	return strings.Count(rest, "@") == 1
}

// addrClean reports whether s has no control byte, and (unless allow8) no
// byte >= 0x80.
func addrClean(s string, allow8 bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f || c >= 0x80 && !allow8 {
			return false
		}
	}
	return !allow8 || utf8.ValidString(s)
}

func FuzzParseMail(f *testing.F) {
	for _, s := range []string{
		"FROM:<a@b.example>",
		"FROM:<> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>",
		"FROM:<@a.example,@b.example:u@c.example>",
		`FROM:<"john doe"@example.test>`,
		"FROM:<a\x00Tv@evil\x00Tx@mx>",
		"FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8",
		"FROM:<a@[IPv6:2001:db8::1]> AUTH=a+2Bb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		m, err := ParseMail(arg, false)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) || (ae.Code != 501 && ae.Code != 553 && ae.Code != 555) {
				t.Fatalf("ParseMail(%q): unexpected error %v", arg, err)
			}
			if m != (Mail{}) {
				t.Fatalf("ParseMail(%q): refusal with result %+v", arg, m)
			}
			return
		}
		for _, s := range []string{m.Sender, m.Body, m.Auth} {
			if !addrClean(s, m.UTF8) {
				t.Fatalf("ParseMail(%q) = %+v: forbidden byte in %q", arg, m, s)
			}
		}
		if m.Sender != "" && !addrOneAt(m.Sender) {
			t.Fatalf("ParseMail(%q): sender %q is not one mailbox", arg, m.Sender)
		}
		if m.Size < 0 {
			t.Fatalf("ParseMail(%q): negative size %d", arg, m.Size)
		}
		if m.Body != "" && m.Body != "7BIT" && m.Body != "8BITMIME" {
			t.Fatalf("ParseMail(%q): body %q", arg, m.Body)
		}
		// The canonical sender parses again to itself.
		again := "FROM:<" + m.Sender + ">"
		if m.UTF8 {
			again += " SMTPUTF8"
		}
		m2, err := ParseMail(again, false)
		if err != nil || m2.Sender != m.Sender {
			t.Fatalf("ParseMail(%q) = %q, but %q gives %q, %v", arg, m.Sender, again, m2.Sender, err)
		}
	})
}

func FuzzParseRcpt(f *testing.F) {
	for _, s := range []string{
		"TO:<b@c.example>",
		"TO:<Postmaster>",
		"TO:<@a.example:u%v@c.example>",
		`TO:<"relay@evil.test"@example.test>`,
		"TO:<a\x00Tv@evil\x00Tx@mx>",
		"TO:<josé@例え.テスト>",
		"TO:<b@[192.0.2.1]> NOTIFY=NEVER",
	} {
		f.Add(s, true, false)
		f.Add(s, false, true)
	}
	f.Fuzz(func(t *testing.T, arg string, utf8, strict bool) {
		r, err := ParseRcpt(arg, utf8, strict, false)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) || (ae.Code != 501 && ae.Code != 553 && ae.Code != 555) {
				t.Fatalf("ParseRcpt(%q): unexpected error %v", arg, err)
			}
			if !reflect.DeepEqual(r, Rcpt{}) {
				t.Fatalf("ParseRcpt(%q): refusal with result %+v", arg, r)
			}
			return
		}
		if !addrClean(r.Rcpt, utf8) {
			t.Fatalf("ParseRcpt(%q, %v) = %q: forbidden byte", arg, utf8, r.Rcpt)
		}
		if r.Rcpt != "Postmaster" && !addrOneAt(r.Rcpt) {
			t.Fatalf("ParseRcpt(%q): %q is not one mailbox", arg, r.Rcpt)
		}
		if strict && r.Rcpt != "Postmaster" {
			local := r.Rcpt[:strings.LastIndexByte(r.Rcpt, '@')]
			if strings.ContainsAny(local, "%!") {
				t.Fatalf("ParseRcpt(%q, strict): %q routes with %% or !", arg, r.Rcpt)
			}
		}
		// The canonical recipient parses again to itself.
		r2, err := ParseRcpt("TO:<"+r.Rcpt+">", utf8, strict, false)
		if err != nil || !reflect.DeepEqual(r2, r) {
			t.Fatalf("ParseRcpt(%q) = %q, but it does not parse to itself: %q, %v", arg, r.Rcpt, r2.Rcpt, err)
		}
	})
}
