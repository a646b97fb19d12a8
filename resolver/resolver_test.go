package resolver_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/resolver/dnstest"
)

func TestLookupsAskTheConfiguredServer(t *testing.T) {
	long := strings.Repeat("k", 700) // a DKIM key is longer than one TXT string
	srv := dnstest.Start(t,
		`example.test. 300 IN TXT "v=spf1 -all"`,
		dnstest.TXT("s1._domainkey.example.test.", "v=DKIM1; p="+long),
		`example.test. 300 IN MX 10 mx.example.test.`,
		`mx.example.test. 300 IN A 192.0.2.25`,
		`mx.example.test. 300 IN AAAA 2001:db8::25`,
		`alias.example.test. 300 IN CNAME mx.example.test.`,
		`25.2.0.192.in-addr.arpa. 300 IN PTR mx.example.test.`,
	)
	srv.ServFail("broken.example.test.")
	srv.Hang("slow.example.test.")
	r, err := srv.Settings().New()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	if txt, err := r.LookupTXT(ctx, "example.test"); err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Errorf("TXT example.test = %q, %v", txt, err)
	}
	if txt, err := r.LookupTXT(ctx, "s1._domainkey.example.test"); err != nil || len(txt) != 1 || txt[0] != "v=DKIM1; p="+long {
		t.Errorf("long TXT: %d records, %v; want the strings joined into one", len(txt), err)
	}
	if mx, err := r.LookupMX(ctx, "example.test"); err != nil || len(mx) != 1 || mx[0].Host != "mx.example.test." || mx[0].Pref != 10 {
		t.Errorf("MX = %v, %v", mx, err)
	}
	if ips, err := r.LookupIPAddr(ctx, "alias.example.test"); err != nil || len(ips) != 2 {
		t.Errorf("A/AAAA through a CNAME = %v, %v; want 192.0.2.25 and 2001:db8::25", ips, err)
	}
	if names, err := r.LookupAddr(ctx, "192.0.2.25"); err != nil || len(names) != 1 || names[0] != "mx.example.test." {
		t.Errorf("PTR = %v, %v", names, err)
	}

	_, err = r.LookupTXT(ctx, "nowhere.example.test")
	if !resolver.IsNotFound(err) {
		t.Errorf("NXDOMAIN: err = %v, want IsNotFound", err)
	}
	_, err = r.LookupTXT(ctx, "mx.example.test") // the name exists, no TXT
	if !resolver.IsNotFound(err) {
		t.Errorf("no data: err = %v, want IsNotFound", err)
	}
	_, err = r.LookupTXT(ctx, "broken.example.test")
	if err == nil || resolver.IsNotFound(err) {
		t.Errorf("SERVFAIL: err = %v, want a temporary error, not IsNotFound", err)
	}
	start := time.Now()
	_, err = r.LookupTXT(ctx, "slow.example.test")
	var de *net.DNSError
	if !errors.As(err, &de) || resolver.IsNotFound(err) || time.Since(start) > 5*time.Second {
		t.Errorf("no answer: err = %v after %v, want a timeout within the 1s setting", err, time.Since(start))
	}
	if q := srv.Queries(); len(q) == 0 || q[0] != "TXT example.test." {
		t.Errorf("queries = %q", q)
	}
}

func TestSettingsCheck(t *testing.T) {
	for _, tc := range []struct {
		s    resolver.Settings
		want string
	}{
		{resolver.Settings{Servers: []string{"ns.example.test:53"}}, `"ns.example.test:53" is not an IP address`},
		{resolver.Settings{Servers: []string{"127.0.0.1:99999"}}, `is not an IP address or "IP:port"`},
		{resolver.Settings{Timeout: 5}, `timeout = 5ns`},
	} {
		err := tc.s.Check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.s, err, tc.want)
		}
	}
	for _, ok := range []resolver.Settings{
		{},
		{Servers: []string{"127.0.0.1", "[::1]:5353", "192.0.2.53:53"}, Timeout: 2 * time.Second},
	} {
		if err := ok.Check(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}
