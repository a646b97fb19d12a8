package authfile_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/lookup/lookuptest"
	"github.com/sluice-mta/sluice/plugins/authfile"
)

// pg is one PostgreSQL server for the package's tests.
var pg *lookuptest.Server

// The test vectors of testdata/passwd, as table entries.
const (
	daveHash  = "$2a$04$ABCDEFGHIJKLMNOPQRSTUutdBj1TzHskGHYiUO7.EmtyYGZ0G.mnK"
	aliceHash = "$argon2id$v=19$m=65536,t=3,p=1$rF2Gpde3/eE5TMOIw9pFZg$klZzhGuCfCbmnv1M2Zk+bIvuzO0nUVOB4cMLEw+FbZ8"
	bobHash   = "$2y$05$a11GQvXQEUjxf6NfVlOMSeCz9W2oXHPRLd/yRjNDrrwV5cFRb833W"
	carolHash = "$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2"
	// eve's "hash" is a clear-text password, mallory's a truncated bcrypt.
	evePassword = "clear-text-secret"
	malloryHash = "$2y$05$a11GQvXQEUjxf6NfVlOMSe"
)

func TestMain(m *testing.M) {
	lookuptest.RunWithPostgres(m, &pg,
		"CREATE TABLE users (login TEXT PRIMARY KEY, password TEXT)",
		"INSERT INTO users VALUES ('dave@example.test', '"+daveHash+"'), ('alice', '"+aliceHash+"'), ('bob', '"+bobHash+"'), ('carol', '"+carolHash+"'), ('eve', '"+evePassword+"'), ('mallory', '"+malloryHash+"'), ('nobody', NULL)",
	)
}

type authCase struct {
	user, password string
	code           hooks.Code
	reply          string
}

// tableCases hold for every backend holding the test vectors.
var tableCases = []authCase{
	{"alice", "s3cret", hooks.OK, authOK},
	{"alice", "S3cret", hooks.Deny, authBad},
	{"bob", "hunter2", hooks.OK, authOK},
	{"bob", "", hooks.Deny, authBad},
	{"carol", "correct horse", hooks.OK, authOK},
	{"dave@example.test", "battery staple", hooks.OK, authOK},
	{"dave@example.test", "s3cret", hooks.Deny, authBad},
	// Logins are looked up in lookup.Key's form: ASCII case does not
	// matter (unlike in the file), neither in a login without '@' nor in
	// an address.
	{"ALICE", "s3cret", hooks.OK, authOK},
	{"Dave@EXAMPLE.test", "battery staple", hooks.OK, authOK},
	// Unknown users decline, so the next auth plugin may know them.
	{"dave", "battery staple", hooks.Declined, authBad},
	{"zoe", "s3cret", hooks.Declined, authBad},
	{"", "", hooks.Declined, authBad},
	// A login lookup.Key would trim or that holds a control character
	// is no login of the table.
	{" alice", "s3cret", hooks.Declined, authBad},
	{"alice\n", "s3cret", hooks.Declined, authBad},
	{"al\x00ice", "s3cret", hooks.Declined, authBad},
}

func runAuth(t *testing.T, p *authfile.Plugin, cases []authCase) {
	t.Helper()
	ch := chain(t, hookstest.Plugin("authfile", p))
	for _, tt := range cases {
		r := p.Auth(context.Background(), conn(), "PLAIN", tt.user, tt.password)
		if r.Code != tt.code || (r.Code != hooks.DenySoft && (r.Err != nil || r.Msg != "")) {
			t.Errorf("Auth(%q, %q) = %+v; want %v", tt.user, tt.password, r, tt.code)
		}
		if got := reply(ch, tt.user, tt.password); got != tt.reply {
			t.Errorf("chain: Auth(%q, %q) replies %q; want %q", tt.user, tt.password, got, tt.reply)
		}
	}
}

// TestUsersList: users as an inline list of "login hash" entries; the keys
// are normalized when the list is read ("Carol" is carol).
func TestUsersList(t *testing.T) {
	p := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf("users = [%q, %q, %q, %q]",
		"dave@example.test "+daveHash, "alice "+aliceHash, "bob\t"+bobHash, "Carol "+carolHash))
	runAuth(t, p, tableCases)
}

// TestUsersPgSQL: users in PostgreSQL, read with the README's query.
func TestUsersPgSQL(t *testing.T) {
	p := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf(`users = { pgsql = %q, query = "SELECT password FROM users WHERE login = $1" }`, pg.DSN))
	runAuth(t, p, tableCases)
}

// TestUsersTemporaryFailures: a table that cannot answer, and a hash in it
// that does not parse, answer 454 4.7.0 (RFC 4954's temporary failure):
// never 235, and not 535 either, which would tell the user the password
// is wrong. The error is logged, naming the user but neither the stored
// value nor the password.
func TestUsersTemporaryFailures(t *testing.T) {
	good := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf(`users = { pgsql = %q, query = "SELECT password FROM users WHERE login = $1", cache = "0s" }`, pg.DSN))
	down := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf(`users = { pgsql = "host=%s user=postgres dbname=postgres", query = "SELECT password FROM users WHERE login = $1", timeout = "1s" }`, t.TempDir()))
	badQuery := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf(`users = { pgsql = %q, query = "SELECT password FROM no_such_table WHERE login = $1" }`, pg.DSN))
	for _, tt := range []struct {
		name     string
		p        *authfile.Plugin
		user     string
		password string
		log      string
	}{
		{"a clear-text password in the table", good, "eve", evePassword, `the hash of user \"eve\": not a hash (a plain-text password?)`},
		{"a truncated bcrypt hash", good, "mallory", "hunter2", `the hash of user \"mallory\": malformed bcrypt hash`},
		{"a NULL password", good, "nobody", "", `the hash of user \"nobody\": not a hash`},
		{"no database server", down, "alice", "s3cret", "authfile: users table: "},
		{"a bad query", badQuery, "alice", "s3cret", "no_such_table"},
	} {
		var logs hookstest.LogBuffer
		ch, err := hooks.NewChain([]hooks.Instance{hookstest.Plugin("authfile", tt.p)}, hooks.Options{Timeout: 10 * time.Second, Logger: logs.Logger()})
		if err != nil {
			t.Fatal(err)
		}
		if got := reply(ch, tt.user, tt.password); got != authSoft {
			t.Errorf("%s: AUTH as %q replies %q; want %q", tt.name, tt.user, got, authSoft)
		}
		log := logs.String()
		if !strings.Contains(log, "level=ERROR") || !strings.Contains(log, tt.log) {
			t.Errorf("%s: log %q; want an ERROR with %q", tt.name, log, tt.log)
		}
		for _, secret := range []string{evePassword, malloryHash, tt.password, pg.DSN} {
			if secret != "" && strings.Contains(log, secret) {
				t.Errorf("%s: the log shows %q: %s", tt.name, secret, log)
			}
		}
	}
}

// TestUsersUnknownCostsAHash: an unknown user waits for a hash-checking
// turn like a known one (it is checked against the last hash the table
// gave, so that the time of the answer does not tell which users exist):
// with every turn taken it gets 454 at the deadline, not a quick decline.
func TestUsersUnknownCostsAHash(t *testing.T) {
	p := hookstest.BuildAs[*authfile.Plugin](t, "authfile", fmt.Sprintf(`users = [%q]`, "bob "+bobHash))
	release := p.Occupy()
	defer release()
	for _, user := range []string{"zoe", "bob", " bob"} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		r := p.Auth(ctx, conn(), "PLAIN", user, "hunter2")
		cancel()
		if r.Code != hooks.DenySoft || r.Err == nil {
			t.Errorf("Auth(%q) while every turn is taken = %+v; want DenySoft (it waits to check a hash)", user, r)
		}
	}
}

func TestUsersBadSettings(t *testing.T) {
	for _, tt := range []struct{ settings, want string }{
		{`path = "testdata/passwd"` + "\nusers = [\"alice " + aliceHash + "\"]", "path and users: set one of them"},
		{``, "path: required: the password file (`smtpd passwd` creates it), or users: a lookup table"},
		{`users = "alice"`, "users: want a list"},
		{`users = { pgsql = "host=/tmp" }`, "users: pgsql: a query is needed"},
		{`users = { file = "/nonexistent/users" }`, "users: cannot read the table file"},
	} {
		hookstest.ExpectBuildError(t, "authfile", tt.settings, tt.want)
	}
}

// TestReadmeUsersExample builds the README's PostgreSQL example against the
// test server, with its query and table layout.
func TestReadmeUsersExample(t *testing.T) {
	var example string
	for _, e := range hookstest.ReadmeExamples(t, "README.md") {
		if strings.Contains(e, "pgsql") {
			example = e
		}
	}
	if example == "" {
		t.Fatal("README.md has no example with users in pgsql")
	}
	dsn := `"host=/run/postgresql dbname=mail user=sluice"`
	if !strings.Contains(example, dsn) {
		t.Fatalf("the README's pgsql example does not use %s", dsn)
	}
	p := hookstest.BuildFromConfig(t, "authfile", strings.Replace(example, dsn, fmt.Sprintf("%q", pg.DSN), 1)).(*authfile.Plugin)
	runAuth(t, p, []authCase{{"alice", "s3cret", hooks.OK, authOK}, {"alice", "x", hooks.Deny, authBad}})
}
