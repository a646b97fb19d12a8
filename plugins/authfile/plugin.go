// Package authfile checks AUTH credentials against a password file of
// hashed passwords: one "user:hash" a line, the hash bcrypt ($2a$, $2b$,
// $2y$) or argon2id ($argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>). It is
// qpsmtpd's auth_flat_file and Haraka's auth/flat_file, with hashes
// instead of clear-text passwords. `smtpd passwd` writes the file with
// SetPassword.
//
// An unknown user declines (another auth plugin may know it; when every
// plugin declines the client gets 535), a known user with a wrong password
// is denied (535 5.7.8), the right password is OK (235). Unknown users cost
// a hash comparison too, so response times do not tell which users exist.
//
// With the users setting instead of path, the users come from a lookup
// table (docs/lookup.md): the login, normalized by lookup.Key, maps to its
// hash, so a site keeps its users in PostgreSQL, MySQL/MariaDB, Redis or a
// CDB file. A table that cannot answer, and a hash in it that does not
// parse, give 454 4.7.0 (a temporary failure), never an answer.
//
// The file is read when the plugin is built and read again, at an AUTH, when
// its modification time, size or identity changed (looked at no more than
// once a second); a new file that does not parse is logged and the old
// content kept. A file that does not exist yet when the plugin is built
// means no users (logged as a warning): it is read once it appears.
package authfile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/lookup"
)

func init() { hooks.Register("authfile", New) }

// Settings are the keys of a [plugins.authfile] table.
type Settings struct {
	// Path is the password file. When it exists it must parse when the
	// plugin is built. A missing file means no users yet. Exactly one of
	// Path and Users is set.
	Path string `toml:"path"`
	// Users is a lookup table (docs/lookup.md) from a login, in
	// lookup.Key's normalized form, to its password hash, in the formats
	// the file takes: { pgsql = "...", query = "SELECT password FROM users
	// WHERE login = $1" }, { redis = "...", prefix = "user:" }, ...
	Users lookup.Spec `toml:"users"`
}

// recheckEvery is how often, at most, an AUTH looks at the file's mtime.
const recheckEvery = time.Second

// maxLine bounds one line of the password file.
const maxLine = 64 * 1024

// Plugin is an authfile instance, safe for concurrent use.
type Plugin struct {
	path string
	log  *slog.Logger
	now  func() time.Time
	// sem bounds the hash comparisons running at once: an argon2id check
	// takes 64 MiB, and a burst of AUTHs must not take the memory of the
	// machine.
	sem chan struct{}

	// users is the users table, nil when the users come from path.
	users lookup.Table
	// lastHash is the verifier of the last hash read from users: an
	// unknown user is checked against it, so that it costs what a known
	// user of the site's scheme does.
	lastHash atomic.Pointer[verifier]

	mu      sync.Mutex // guards the fields below
	db      *db        // replaced whole on reload, never modified
	stat    fs.FileInfo
	checked time.Time
	failed  fs.FileInfo // the last file that did not parse, logged once
	statErr bool        // a failed stat was logged
}

// db is one parsed password file.
type db struct {
	users map[string]verifier
	// dummy is compared against for unknown users, so that they cost as
	// much as known ones; nil for an empty file.
	dummy verifier
}

var _ hooks.Auth = (*Plugin)(nil)

// New builds an authfile instance: it reads and checks the password file.
// A file that does not exist is no error: the instance knows no users (it
// declines every AUTH) until the file is created, and logs a warning.
func New(decode hooks.Decoder) (*Plugin, error) {
	var s Settings
	if err := decode(&s); err != nil {
		return nil, err
	}
	switch {
	case s.Path != "" && s.Users.IsSet():
		return nil, errors.New("path and users: set one of them: the password file, or a lookup table of users")
	case s.Path == "" && !s.Users.IsSet():
		return nil, errors.New("path: required: the password file (`smtpd passwd` creates it), or users: a lookup table of login and hash (docs/lookup.md)")
	}
	p := &Plugin{path: s.Path, log: slog.Default(), now: time.Now, sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
	if s.Users.IsSet() {
		t, err := lookup.Open(s.Users)
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		p.users = t
		var dummy verifier = unknownUser()
		p.lastHash.Store(&dummy)
		return p, nil
	}
	d, info, err := load(s.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No users yet (a fresh install; `smtpd passwd` creates the file):
		// current reads the file once it appears.
		p.log.Warn("authfile: the password file does not exist: no users until it is created (smtpd passwd creates it)", "plugin", "authfile", "path", s.Path)
		d = &db{users: map[string]verifier{}}
	case err != nil:
		return nil, fmt.Errorf("path: %w", err)
	}
	p.db, p.stat, p.checked = d, info, p.now()
	return p, nil
}

// load reads and parses the file at path.
func load(path string) (*db, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	d, err := parseFile(path, b.Bytes())
	return d, info, err
}

// splitEntry splits a "user:hash" line; ok is false for a blank or comment
// line. Surrounding white space (and a CR) is ignored.
func splitEntry(line string) (user, hash string, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", "", false
	}
	user, hash, _ = strings.Cut(line, ":")
	return strings.TrimSpace(user), strings.TrimSpace(hash), true
}

// parseFile parses a password file's content; errors name path:line.
func parseFile(path string, b []byte) (*db, error) {
	d := &db{users: map[string]verifier{}}
	lineOf := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxLine)
	for n := 1; sc.Scan(); n++ {
		user, hash, ok := splitEntry(sc.Text())
		if !ok {
			continue
		}
		if !strings.Contains(sc.Text(), ":") {
			return nil, fmt.Errorf("%s:%d: want user:hash", path, n)
		}
		if err := CheckUser(user); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if first, dup := lineOf[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q again (first on line %d)", path, n, user, first)
		}
		v, err := parseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %v", path, n, user, err)
		}
		d.users[user], lineOf[user] = v, n
		if d.dummy == nil {
			d.dummy = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// current returns the password data, reading the file again first when it
// changed and it was not looked at in the last second.
func (p *Plugin) current() *db {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Sub(p.checked) < recheckEvery && !now.Before(p.checked) {
		return p.db
	}
	p.checked = now
	info, err := os.Stat(p.path)
	if err != nil {
		if p.stat == nil && errors.Is(err, fs.ErrNotExist) {
			// Still missing since the start: no users yet, as logged
			// when the plugin was built.
			return p.db
		}
		if !p.statErr {
			p.log.Error("authfile: cannot look at the password file; keeping the users read before", "plugin", "authfile", "path", p.path, "err", err)
			p.statErr = true
		}
		return p.db
	}
	p.statErr = false
	if same(info, p.stat) || same(info, p.failed) {
		return p.db
	}
	d, info, err := load(p.path)
	if err != nil {
		p.log.Error("authfile: the password file changed and does not parse; keeping the users read before", "plugin", "authfile", "path", p.path, "err", err)
		p.failed = info
		if p.failed == nil {
			p.failed, _ = os.Stat(p.path)
		}
		return p.db
	}
	p.db, p.stat, p.failed = d, info, nil
	p.log.Info("authfile: password file read again", "plugin", "authfile", "path", p.path, "users", len(d.users))
	return p.db
}

// same reports whether a and b describe the same version of a file (a
// chmod counts as a change: it may fix a file Sluice could not read).
func same(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size() && a.Mode() == b.Mode()
}

// Close closes the users table.
func (p *Plugin) Close() error {
	if p.users == nil {
		return nil
	}
	return lookup.Close(p.users)
}

// unknownUser is the verifier unknown users are checked against before
// the table gave a hash: an argon2id hash with HashPassword's parameters
// and a random key, which no password matches, built without running
// argon2.
func unknownUser() verifier {
	h := &argonHash{memory: ArgonMemory, time: ArgonTime, threads: ArgonThreads, salt: make([]byte, ArgonSaltLen), key: make([]byte, ArgonKeyLen)}
	rand.Read(h.salt)
	rand.Read(h.key)
	return h
}

// tableLogin reports whether user can be looked up in the users table: not
// empty, valid UTF-8, no control characters, no surrounding white space
// (lookup.Key would trim it, and " alice" is not alice) and at most 512
// bytes. Other logins are unknown users.
func tableLogin(user string) bool {
	return user != "" && len(user) <= 512 && utf8.ValidString(user) && strings.TrimSpace(user) == user &&
		!strings.ContainsFunc(user, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// authTable checks the password of a user in the users table.
func (p *Plugin) authTable(ctx context.Context, user, password string) hooks.Result {
	var v verifier
	if tableLogin(user) {
		hash, found, err := p.users.Lookup(ctx, lookup.Key(user))
		if err != nil {
			return hooks.Fail(fmt.Errorf("authfile: users table: %w", err))
		}
		if found {
			if v, err = parseHash(strings.TrimSpace(hash)); err != nil {
				// The error names the scheme, never the hash.
				return hooks.Fail(fmt.Errorf("authfile: users table: the hash of user %q: %v", user, err))
			}
			p.lastHash.Store(&v)
		}
	}
	select {
	case p.sem <- struct{}{}:
		defer func() { <-p.sem }()
	case <-ctx.Done():
		return hooks.Fail(fmt.Errorf("authfile: waiting to check a password: %w", ctx.Err()))
	}
	if v == nil {
		(*p.lastHash.Load()).verify(password) // as slow as a known user
		return hooks.Result{}
	}
	if v.verify(password) {
		return hooks.Accept("")
	}
	return hooks.Result{Code: hooks.Deny}
}

// Auth checks the password of a user in the file or the table: Declined
// for an unknown user, Deny for a wrong password, OK for the right one,
// and a failure (454) when the table cannot answer or holds a hash that
// does not parse.
func (p *Plugin) Auth(ctx context.Context, _ *connection.Connection, _, user, password string) hooks.Result {
	if p.users != nil {
		return p.authTable(ctx, user, password)
	}
	d := p.current()
	v, known := d.users[user]
	if !known && d.dummy == nil {
		return hooks.Result{}
	}
	select {
	case p.sem <- struct{}{}:
		defer func() { <-p.sem }()
	case <-ctx.Done():
		return hooks.Fail(fmt.Errorf("authfile: waiting to check a password: %w", ctx.Err()))
	}
	if !known {
		d.dummy.verify(password) // as slow as a known user
		return hooks.Result{}
	}
	if v.verify(password) {
		return hooks.Accept("")
	}
	return hooks.Result{Code: hooks.Deny}
}
