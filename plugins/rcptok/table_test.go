package rcptok_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/lookup/lookuptest"
)

var pg *lookuptest.Server

func TestMain(m *testing.M) {
	lookuptest.RunWithPostgres(m, &pg,
		"CREATE TABLE domains (name TEXT PRIMARY KEY)",
		"INSERT INTO domains VALUES ('db.example'), ('.sub.example')",
	)
}

// TestSQLDomains: local domains from PostgreSQL; a recipient whose domain
// is in the table is accepted, another refused, and a database that does
// not answer defers (451), never accepts.
func TestSQLDomains(t *testing.T) {
	p := hookstest.Build(t, "rcptok", fmt.Sprintf(`domains = { pgsql = %q, query = "SELECT 1 FROM domains WHERE name = $1", cache = "0s" }
relay_clients_ok = false`, pg.DSN))
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@DB.example"), accepted)
	hookstest.ExpectReply(t, s.Rcpt("bob@a.sub.example"), accepted)
	hookstest.ExpectReply(t, s.Rcpt("bob@sub.example"), denied)
	hookstest.ExpectReply(t, s.Rcpt("bob@elsewhere.example"), denied)

	down := hookstest.Build(t, "rcptok", fmt.Sprintf(`domains = { pgsql = "host=%s user=postgres dbname=postgres", query = "SELECT 1 FROM domains WHERE name = $1", timeout = "1s" }`, t.TempDir()))
	h = hookstest.New(t, hookstest.Plugin("rcptok", down), hookstest.Queue())
	s = h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	hookstest.ExpectReply(t, s.Rcpt("bob@db.example"), "451 4.3.0 cannot check the recipient's domain now; try again later")
}

// TestFileAndPostfixDomains: the file backend reads rcpthosts' format, and
// a Postfix main.cf adds its domains.
func TestFileAndPostfixDomains(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "domains")
	os.WriteFile(file, []byte("file.example\n.wild.example # subdomains\n"), 0o644)
	main := filepath.Join(dir, "main.cf")
	os.WriteFile(main, []byte("myhostname = mx.postfix.example\nmydestination = $myhostname, postfix.example\n"), 0o644)
	p := hookstest.Build(t, "rcptok", fmt.Sprintf("domains = { file = %q }\npostfix_main_cf = %q", file, main))
	h := hookstest.New(t, hookstest.Plugin("rcptok", p), hookstest.Queue())
	s := h.Connect("192.0.2.1")
	hookstest.Expect(t, s.Helo("client.example"), 250)
	hookstest.Expect(t, s.Mail("alice@example.org"), 250)
	for _, r := range []string{"a@file.example", "a@x.wild.example", "a@postfix.example", "a@MX.postfix.example"} {
		hookstest.ExpectReply(t, s.Rcpt(r), accepted)
	}
	hookstest.ExpectReply(t, s.Rcpt("a@wild.example"), denied)
}
