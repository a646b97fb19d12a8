package senderlogin_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/lookup/lookuptest"
)

// pg is one PostgreSQL server for the package's tests, with a Postfix-style
// sender_login table.
var pg *lookuptest.Server

func TestMain(m *testing.M) {
	lookuptest.RunWithPostgres(m, &pg,
		"CREATE TABLE sender_logins (sender TEXT PRIMARY KEY, owners TEXT NOT NULL)",
		"INSERT INTO sender_logins VALUES ('sales@example.test', 'alice@example.test, carol@example.test'), ('@shared.example', 'bob@example.test'), ('ceo@shared.example', 'carol@example.test')",
	)
}

// ownersChecks are what every backend holding the same table must answer:
// the table's entries
//
//	sales@example.test  alice@example.test, carol@example.test
//	@shared.example     bob@example.test
//	ceo@shared.example  carol@example.test
//
// on top of the default mode (full, no domain, no allow).
var ownersChecks = []check{
	// The login's own address, as without the table.
	{"alice@example.test", "alice@example.test", ok},
	{"dave@example.test", "dave@example.test", ok},
	// An address the table gives to two logins (comma and space).
	{"alice@example.test", "sales@example.test", ok},
	{"carol@example.test", "sales@example.test", ok},
	{"bob@example.test", "sales@example.test", refused("sales@example.test", "bob@example.test")},
	// Keys and logins are compared in lookup.Key's form: ASCII case does
	// not matter (Postfix folds case for both too).
	{"alice@example.test", "SALES@Example.TEST", ok},
	{"ALICE@example.test", "sales@example.test", ok},
	// "@domain" gives every address of the domain to its owners...
	{"bob@example.test", "anyone@shared.example", ok},
	{"bob@example.test", "anyone@SHARED.example", ok},
	{"alice@example.test", "anyone@shared.example", refused("anyone@shared.example", "alice@example.test")},
	// ...but not its subdomains,
	{"bob@example.test", "anyone@sub.shared.example", refused("anyone@sub.shared.example", "bob@example.test")},
	// and an address's own entry comes first (Postfix's order): ceo@ is
	// carol's alone.
	{"carol@example.test", "ceo@shared.example", ok},
	{"bob@example.test", "ceo@shared.example", refused("ceo@shared.example", "bob@example.test")},
	// An address the table does not know.
	{"alice@example.test", "bob@example.test", refused("bob@example.test", "alice@example.test")},
	// The null sender and unauthenticated clients, as without the table.
	{"bob@example.test", "", ok},
	{"", "sales@example.test", ok},
}

var ownersEntries = []string{
	"sales@example.test alice@example.test, carol@example.test",
	"@shared.example bob@example.test",
	"ceo@shared.example carol@example.test",
}

// TestSenderLoginsList: the table as an inline list.
func TestSenderLoginsList(t *testing.T) {
	var q []string
	for _, e := range ownersEntries {
		q = append(q, fmt.Sprintf("%q", e))
	}
	run(t, "sender_logins = ["+strings.Join(q, ", ")+"]", ownersChecks)
}

// TestSenderLoginsFile: the table as a file, Postfix's text format (the
// source of a hash: map) with a comment.
func TestSenderLoginsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sender_logins")
	content := "# sender  owners\n" + strings.Join(ownersEntries, "\n") + "\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, fmt.Sprintf("sender_logins = { file = %q }", path), ownersChecks)
}

// TestSenderLoginsPgSQL: the table in PostgreSQL, read with a query, as
// Postfix's pgsql: smtpd_sender_login_maps would.
func TestSenderLoginsPgSQL(t *testing.T) {
	run(t, fmt.Sprintf(`sender_logins = { pgsql = %q, query = "SELECT owners FROM sender_logins WHERE sender = $1", cache = "0s" }`, pg.DSN), ownersChecks)
}

// TestSenderLoginsCombine: the table adds owners to what mode, domain and
// allow give; it takes nothing away.
func TestSenderLoginsCombine(t *testing.T) {
	settings := `mode = "same-domain"
domain = "example.test"
sender_logins = ["sales@example.test carol@example.test", "@shared.example alice"]
[allow]
"bob@example.test" = ["*@lists.example.test"]`
	run(t, settings, []check{
		// same-domain lets anyone of example.test send as sales@, even
		// though the table names carol alone.
		{"bob@example.test", "sales@example.test", ok},
		{"bob@example.test", "news@lists.example.test", ok},
		// The table's owners are logins as sent: "alice", not the address
		// domain completes.
		{"alice", "x@shared.example", ok},
		{"alice@example.test", "x@shared.example", refused("x@shared.example", "alice@example.test")},
		{"bob@example.test", "x@example.org", refused("x@example.org", "bob@example.test")},
	})
	// mode = "disabled" checks nothing, and so does not consult the table.
	run(t, `mode = "disabled"
sender_logins = { pgsql = "host=/nonexistent user=postgres dbname=postgres", query = "SELECT owners FROM sender_logins WHERE sender = $1", timeout = "1s" }`, []check{
		{"bob@example.test", "ceo@example.org", ok},
	})
}

// TestSenderLoginsDown: a table that cannot answer (a database that is
// not there, a bad query) defers the sender with 451 4.3.0, never accepts
// it and never calls it a mismatch. An address the login owns without the
// table still passes: the table is not asked.
func TestSenderLoginsDown(t *testing.T) {
	const deferred = "451 4.3.0 <sales@example.test>: cannot check the sender's owner now; try again later"
	for name, spec := range map[string]string{
		"no server": fmt.Sprintf(`{ pgsql = "host=%s user=postgres dbname=postgres", query = "SELECT owners FROM sender_logins WHERE sender = $1", timeout = "1s" }`, t.TempDir()),
		"bad query": fmt.Sprintf(`{ pgsql = %q, query = "SELECT owners FROM no_such_table WHERE sender = $1" }`, pg.DSN),
	} {
		h := newHarness(t, "sender_logins = "+spec)
		got, note := mail(t, h, "alice@example.test", "sales@example.test")
		if got != deferred || note != "" {
			t.Errorf("%s: MAIL FROM:<sales@example.test>: %q, note %q; want %q and no note", name, got, note, deferred)
		}
		if got, _ := mail(t, h, "alice@example.test", "alice@example.test"); got != ok {
			t.Errorf("%s: MAIL FROM the login's own address: %q; want %q", name, got, ok)
		}
	}
}

func TestSenderLoginsBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`sender_logins = "sales@example.test alice"`, `sender_logins: want a list`},
		{`sender_logins = { pgsql = "host=/tmp" }`, `sender_logins: pgsql: a query is needed`},
		{`sender_logins = { file = "/nonexistent/sender_logins" }`, `sender_logins: cannot read the table file`},
	} {
		hookstest.ExpectBuildError(t, "senderlogin", tt.settings, tt.want)
	}
}
