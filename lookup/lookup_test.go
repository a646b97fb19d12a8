package lookup_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sluice-mta/sluice/lookup"
	"github.com/sluice-mta/sluice/lookup/lookuptest"
)

var pg, my, rd *lookuptest.Server

func TestMain(m *testing.M) {
	var err error
	if pg, err = lookuptest.Postgres(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if my, err = lookuptest.MariaDB(); err != nil {
		pg.Stop()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if rd, err = lookuptest.Redis(); err != nil {
		pg.Stop()
		my.Stop()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	pg.Stop()
	my.Stop()
	rd.Stop()
	os.Exit(code)
}

// entries is what every backend holds, in normalized form.
var entries = map[string]string{
	"example.test":          "local",
	"xn--bcher-kva.example": "",
	"alice@example.test":    "alice@example.org",
}

// spec decodes a table setting as a plugin's config would.
func spec(t *testing.T, text string) lookup.Spec {
	t.Helper()
	var v struct {
		T lookup.Spec `toml:"t"`
	}
	if _, err := toml.Decode("t = "+text, &v); err != nil {
		t.Fatalf("decode %s: %v", text, err)
	}
	return v.T
}

func open(t *testing.T, text string) lookup.Table {
	t.Helper()
	tbl, err := lookup.Open(spec(t, text))
	if err != nil {
		t.Fatalf("open %s: %v", text, err)
	}
	t.Cleanup(func() { lookup.Close(tbl) })
	return tbl
}

// backends builds the same table in each backend.
func backends(t *testing.T) map[string]string {
	dir := t.TempDir()
	var lines []string
	for k, v := range entries {
		lines = append(lines, strings.TrimSpace(k+" "+v))
	}
	file := filepath.Join(dir, "t.txt")
	os.WriteFile(file, []byte("# a comment\n\n"+strings.Join(lines, "\n")+"\n"), 0o644)
	cdbFile := filepath.Join(dir, "t.cdb")
	if _, err := exec.LookPath("cdb"); err != nil {
		t.Fatalf("cdb is missing: install the Debian package tinycdb (make deps)")
	}
	var in strings.Builder
	for k, v := range entries {
		fmt.Fprintf(&in, "+%d,%d:%s->%s\n", len(k), len(v), k, v)
	}
	in.WriteString("\n")
	mk := exec.Command("cdb", "-c", cdbFile)
	mk.Stdin = strings.NewReader(in.String())
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("cdb -c: %v: %s", err, out)
	}
	var kv []string
	for k, v := range entries {
		kv = append(kv, "suite:"+k, v)
	}
	if err := rd.RedisSet(kv...); err != nil {
		t.Fatal(err)
	}
	list := make([]string, 0)
	for _, l := range lines {
		list = append(list, fmt.Sprintf("%q", l))
	}
	return map[string]string{
		"list":  "[" + strings.Join(list, ", ") + "]",
		"file":  fmt.Sprintf("{ file = %q }", file),
		"cdb":   fmt.Sprintf("{ cdb = %q }", cdbFile),
		"redis": fmt.Sprintf("{ redis = %q, prefix = \"suite:\" }", rd.DSN),
		"pgsql": fmt.Sprintf("{ pgsql = %q, query = \"SELECT v FROM suite WHERE k = $1\" }", pg.DSN),
		"mysql": fmt.Sprintf("{ mysql = %q, query = \"SELECT v FROM suite WHERE k = ?\" }", my.DSN),
	}
}

var suiteOnce = map[string]bool{}

func fillSQL(t *testing.T) {
	if suiteOnce["sql"] {
		return
	}
	suiteOnce["sql"] = true
	for _, s := range []*lookuptest.Server{pg, my} {
		stmts := []string{"CREATE TABLE suite (k VARCHAR(200) PRIMARY KEY, v VARCHAR(200))" + map[bool]string{true: " CHARACTER SET utf8mb4", false: ""}[s == my]}
		for k, v := range entries {
			val := "'" + v + "'"
			if v == "" {
				val = "NULL"
			}
			stmts = append(stmts, fmt.Sprintf("INSERT INTO suite VALUES ('%s', %s)", k, val))
		}
		if err := s.Exec(stmts...); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEveryBackend runs one behaviour suite against each backend: found
// with its value, not found, keys folded (case, U-labels) by lookup.Get.
func TestEveryBackend(t *testing.T) {
	fillSQL(t)
	for name, text := range backends(t) {
		t.Run(name, func(t *testing.T) {
			tbl := open(t, text)
			ctx := context.Background()
			for _, c := range []struct {
				key, value string
				found      bool
			}{
				{"example.test", "local", true},
				{"EXAMPLE.Test.", "local", true},
				{"bücher.example", "", true},
				{"XN--BCHER-KVA.example", "", true},
				{"Alice@Example.TEST", "alice@example.org", true},
				{"bob@example.test", "", false},
				{"example.org", "", false},
				{"\u212Aexample.test", "", false},
			} {
				v, found, err := lookup.Get(ctx, tbl, c.key)
				if err != nil || found != c.found || v != c.value {
					t.Errorf("%s: Get(%q) = %q, %v, %v; want %q, %v, nil", name, c.key, v, found, err, c.value, c.found)
				}
			}
			if _, _, ok, err := lookup.MatchAddress(ctx, tbl, "carol@Example.Test"); !ok || err != nil {
				t.Errorf("MatchAddress(carol@Example.Test) = %v, %v: want its domain found", ok, err)
			}
		})
	}
}

// TestDownIsAnError: a server that does not answer is an error, never a
// miss, and an error is not cached.
func TestDownIsAnError(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"pgsql": fmt.Sprintf("{ pgsql = \"host=%s user=postgres dbname=postgres\", query = \"SELECT 1 WHERE $1 <> ''\", timeout = \"1s\" }", dir),
		"mysql": fmt.Sprintf("{ mysql = \"root@unix(%s/none.sock)/test\", query = \"SELECT 1 FROM DUAL WHERE ? <> ''\", timeout = \"1s\" }", dir),
		"redis": fmt.Sprintf("{ redis = \"unix://%s/none.sock\", timeout = \"1s\" }", dir),
	} {
		t.Run(name, func(t *testing.T) {
			tbl := open(t, text)
			for range 2 {
				_, found, err := lookup.Get(context.Background(), tbl, "example.test")
				if err == nil || found {
					t.Fatalf("%s down: found=%v err=%v; want an error", name, found, err)
				}
				if strings.Contains(err.Error(), "password") {
					t.Fatalf("error %q", err)
				}
			}
		})
	}
}

// TestTimeout: a query slower than the timeout is an error in time.
func TestTimeout(t *testing.T) {
	// A listener that accepts and never answers stands for a hung Redis.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for name, text := range map[string]string{
		"pgsql": fmt.Sprintf("{ pgsql = %q, query = \"SELECT 1 FROM pg_sleep(5) WHERE $1 <> ''\", timeout = \"300ms\" }", pg.DSN),
		"mysql": fmt.Sprintf("{ mysql = %q, query = \"SELECT SLEEP(5) FROM DUAL WHERE ? <> ''\", timeout = \"300ms\" }", my.DSN),
		"redis": fmt.Sprintf("{ redis = \"redis://%s\", timeout = \"300ms\" }", ln.Addr()),
	} {
		t.Run(name, func(t *testing.T) {
			tbl := open(t, text)
			start := time.Now()
			_, found, err := lookup.Get(context.Background(), tbl, "example.test")
			if err == nil || found {
				t.Fatalf("found=%v err=%v: want a timeout error", found, err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("the lookup took %v; want about 300ms", d)
			}
		})
	}
}

// TestCache: an answer (found or not) is remembered; cache = "0s" turns
// the cache off.
func TestCache(t *testing.T) {
	if err := pg.Exec("CREATE TABLE cachet (k TEXT PRIMARY KEY)", "INSERT INTO cachet VALUES ('a.test')"); err != nil {
		t.Fatal(err)
	}
	q := "SELECT 1 FROM cachet WHERE k = $1"
	cached := open(t, fmt.Sprintf("{ pgsql = %q, query = %q, cache = \"1h\" }", pg.DSN, q))
	uncached := open(t, fmt.Sprintf("{ pgsql = %q, query = %q, cache = \"0s\" }", pg.DSN, q))
	ctx := context.Background()
	for _, tbl := range []lookup.Table{cached, uncached} {
		for _, k := range []string{"a.test", "b.test"} {
			lookup.Get(ctx, tbl, k)
		}
	}
	if err := pg.Exec("DELETE FROM cachet", "INSERT INTO cachet VALUES ('b.test')"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tbl    lookup.Table
		key    string
		want   bool
		reason string
	}{
		{cached, "a.test", true, "cached positive answer"},
		{cached, "b.test", false, "cached negative answer"},
		{uncached, "a.test", false, "no cache"},
		{uncached, "b.test", true, "no cache"},
	} {
		if _, found, err := lookup.Get(ctx, c.tbl, c.key); err != nil || found != c.want {
			t.Errorf("%s: %s found=%v err=%v, want %v", c.reason, c.key, found, err, c.want)
		}
	}
}

func TestSpecErrors(t *testing.T) {
	for text, want := range map[string]string{
		`{ file = "/a", cdb = "/b" }`:               "one backend",
		`{ pgsql = "host=/tmp" }`:                   "a query is needed",
		`{ file = "/a", query = "SELECT 1" }`:       "only the pgsql and mysql",
		`{ nope = "x" }`:                            `unknown key "nope"`,
		`{ redis = "redis://x", timeout = "soon" }`: "want a duration",
		`{ mysql = "::bad::", query = "SELECT ?" }`: "",
		`42`: "want a list",
	} {
		var v struct {
			T lookup.Spec `toml:"t"`
		}
		_, err := toml.Decode("t = "+text, &v)
		if err == nil && want != "" {
			t.Errorf("%s: no error, want %q", text, want)
		} else if err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", text, err, want)
		}
	}
	if _, err := lookup.Open(spec(t, `{ mysql = "::bad::", query = "SELECT ?" }`)); err == nil || strings.Contains(err.Error(), "::bad::") {
		t.Errorf("a bad mysql DSN: %v: want an error that does not quote the DSN", err)
	}
	if _, err := lookup.Open(spec(t, `{ file = "/nonexistent/t" }`)); err == nil || !strings.Contains(err.Error(), "cannot read the table file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestNetworks(t *testing.T) {
	n, err := lookup.OpenNetworks(spec(t, `["192.0.2.0/24", "2001:db8::1", "::ffff:198.51.100.7"]`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for ip, want := range map[string]string{"192.0.2.9": "192.0.2.0/24", "2001:db8::1": "2001:db8::1/128", "198.51.100.7": "198.51.100.7/32", "::ffff:192.0.2.1": "192.0.2.0/24", "203.0.113.1": ""} {
		got, _, err := n.Match(ctx, mustAddr(ip))
		if err != nil || got != want {
			t.Errorf("Match(%s) = %q, %v; want %q", ip, got, err, want)
		}
	}
	if _, err := lookup.OpenNetworks(spec(t, `["example.test"]`)); err == nil || !strings.Contains(err.Error(), "is not an IP address or CIDR prefix") {
		t.Errorf("a domain in a network list: %v", err)
	}
	if err := pg.Exec("CREATE TABLE clients (ip INET PRIMARY KEY)", "INSERT INTO clients VALUES ('192.0.2.5')"); err != nil {
		t.Fatal(err)
	}
	remote, err := lookup.OpenNetworks(spec(t, fmt.Sprintf("{ pgsql = %q, query = \"SELECT 1 FROM clients WHERE ip = $1::inet\" }", pg.DSN)))
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	if got, ok, err := remote.Match(ctx, mustAddr("192.0.2.5")); !ok || err != nil || got != "192.0.2.5" {
		t.Errorf("remote Match = %q %v %v", got, ok, err)
	}
}

func TestPostfixDomains(t *testing.T) {
	dir := t.TempDir()
	vmd := filepath.Join(dir, "vmd")
	os.WriteFile(vmd, []byte("# virtual domains\nVirtual.Example  OK\nbücher.example x\n"), 0o644)
	relay := filepath.Join(dir, "relay")
	os.WriteFile(relay, []byte(".sub.example\n"), 0o644)
	main := filepath.Join(dir, "main.cf")
	os.WriteFile(main, []byte(`# main.cf
myhostname = mx.example.test
mydomain = example.test
mydestination = $myhostname, localhost.$mydomain,
    localhost, ${mydomain}
virtual_mailbox_domains = texthash:`+vmd+`
relay_domains = hash:`+relay+`
`), 0o644)
	tbl, err := lookup.PostfixDomains(main)
	if err != nil {
		t.Fatal(err)
	}
	var l lookup.Local
	l.AddDomains(tbl)
	ctx := context.Background()
	for d, want := range map[string]bool{"mx.example.test": true, "localhost.example.test": true, "localhost": true, "example.test": true,
		"virtual.example": true, "xn--bcher-kva.example": true, "a.sub.example": true, "sub.example": false, "other.test": false} {
		if got, err := l.IsLocalDomain(ctx, d); err != nil || got != want {
			t.Errorf("IsLocalDomain(%s) = %v, %v; want %v", d, got, err, want)
		}
	}
	if ok, _ := l.IsLocalAddress(ctx, "bob@Example.Test"); !ok {
		t.Errorf("IsLocalAddress(bob@Example.Test) = false")
	}
	for text, want := range map[string]string{
		"mydestination = $myhostname\n":                     "$myhostname is not set",
		"mydestination = x\nrelay_domains = mysql:/etc/x\n": "mysql: tables are not read",
	} {
		os.WriteFile(main, []byte(text), 0o644)
		if _, err := lookup.PostfixDomains(main); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
}
