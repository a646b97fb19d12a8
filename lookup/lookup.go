// Package lookup is Sluice's lookup tables: one small interface, Table,
// with backends for the places sites keep their domains, users,
// sender-login maps and black/white lists: an inline list, a text file, a
// CDB file, Redis, PostgreSQL and MySQL/MariaDB. It is what Postfix's
// lookup tables (hash:, cdb:, pgsql:, mysql:) and Valvula's and vSMTP's
// MySQL support are to those servers.
//
// A plugin setting that takes a table is a Spec, written in TOML as a list
// or as an inline table naming one backend:
//
//	domains = ["example.test", "example.org"]
//	domains = { file = "/etc/sluice/domains" }
//	domains = { cdb = "/etc/sluice/domains.cdb" }
//	domains = { redis = "redis://127.0.0.1:6379/0", prefix = "domain:" }
//	domains = { pgsql = "host=/run/postgresql dbname=mail", query = "SELECT 1 FROM domains WHERE name = $1" }
//	domains = { mysql = "mail@unix(/run/mysqld/mysqld.sock)/mail", query = "SELECT 1 FROM domains WHERE name = ?" }
//
// Keys are normalized (Key) before every lookup and when a list, file or
// CDB... is loaded: domains as A-labels in ASCII lower case, addresses as
// local@domain with the local part in ASCII lower case, IP addresses in
// their canonical text. A backend that cannot answer (a database down, a
// timeout) returns an error, never a miss: plugins turn it into 451 4.3.0,
// so a broken database defers mail and never accepts it.
package lookup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/mailaddr"
)

// Table answers lookups of one key. Implementations are safe for
// concurrent use. found is false for a key the table does not hold; err is
// set when the table could not answer (then found means nothing and the
// caller must not treat the key as absent).
type Table interface {
	Lookup(ctx context.Context, key string) (value string, found bool, err error)
}

// Closer is a Table holding resources (a connection pool, an open file)
// that Close releases. Plugins close their tables from their own Close,
// which runs when a reload replaces them.
type Closer interface {
	Table
	io.Closer
}

// Defaults for the remote backends (Redis, PostgreSQL, MySQL).
const (
	// DefaultTimeout bounds one lookup.
	DefaultTimeout = 2 * time.Second
	// DefaultCache is how long an answer (found or not) is remembered.
	DefaultCache = 30 * time.Second
	// DefaultPool is the most connections a table keeps open.
	DefaultPool = 4
)

// Spec is a table's configuration: exactly one backend and its options.
// It decodes from a TOML list (the inline backend) or inline table.
type Spec struct {
	// List holds the entries inline: "key" or "key value" (the value is
	// what follows the first run of spaces).
	List []string
	// File is a text file of entries in List's syntax, one a line; '#'
	// starts a comment. It is read when the table is opened: at start and
	// at each reload (SIGHUP), when plugins are rebuilt.
	File string
	// CDB is a constant database (cdbmake's 32-bit format, as `cdb -c` and
	// qmail write) whose keys are written in Key's normalized form.
	CDB string
	// Redis is the server's URL ("redis://127.0.0.1:6379/0",
	// "unix:///run/redis.sock"); a lookup is GET Prefix+key.
	Redis string
	// Prefix is put before every key sent to Redis ("domain:").
	Prefix string
	// PgSQL is a PostgreSQL connection string (libpq keyword form or a
	// postgres:// URL), for pgx.
	PgSQL string
	// MySQL is a MySQL/MariaDB DSN in go-sql-driver's form
	// ("user:password@tcp(127.0.0.1:3306)/mail",
	// "user@unix(/run/mysqld/mysqld.sock)/mail").
	MySQL string
	// Query is the SQL query: one parameter, the key ($1 for PostgreSQL, ?
	// for MySQL); a row means found, and the first column of the first row
	// (NULL as "") is the value.
	Query string
	// Pool is the most connections an SQL table keeps (default 4).
	Pool int
	// Timeout bounds one remote lookup (default 2s).
	Timeout time.Duration
	// Cache is how long a remote answer that a key was found is kept
	// (default 30s; negative disables); NegativeCache the same for a key
	// not found (default: Cache). Errors are never cached.
	Cache, NegativeCache time.Duration

	set bool // decoded from the config (the zero Spec is "no table")
}

// IsSet reports whether the setting was given.
func (s Spec) IsSet() bool { return s.set || len(s.List) > 0 }

// ListSpec is the Spec of an inline list, for plugins whose older
// settings are plain lists.
func ListSpec(entries []string) Spec { return Spec{List: entries, set: true} }

// Backend names the backend, as it is written in the config.
func (s Spec) Backend() string {
	switch {
	case s.File != "":
		return "file"
	case s.CDB != "":
		return "cdb"
	case s.Redis != "":
		return "redis"
	case s.PgSQL != "":
		return "pgsql"
	case s.MySQL != "":
		return "mysql"
	}
	return "list"
}

// IsLocal reports whether the table's entries are in memory (list, file),
// where a table of networks can be searched by prefix.
func (s Spec) IsLocal() bool { b := s.Backend(); return b == "list" || b == "file" }

const specWant = `want a list ["example.test"] or one backend: { file = "/path" }, { cdb = "/path" }, { redis = "redis://127.0.0.1:6379/0" }, { pgsql = "host=... dbname=...", query = "SELECT ... $1" } or { mysql = "user@unix(/path)/db", query = "SELECT ... ?" }`

// UnmarshalTOML decodes a Spec from a TOML list or inline table.
func (s *Spec) UnmarshalTOML(v any) error {
	*s = Spec{set: true}
	switch v := v.(type) {
	case []any:
		l, err := stringList("", v)
		if err != nil {
			return err
		}
		s.List = l
		return nil
	case map[string]any:
		return s.decodeTable(v)
	}
	return errors.New(specWant)
}

func stringList(key string, v []any) ([]string, error) {
	out := make([]string, 0, len(v))
	for _, e := range v {
		str, ok := e.(string)
		if !ok {
			if key != "" {
				return nil, fmt.Errorf("%s: want a list of strings", key)
			}
			return nil, fmt.Errorf("want a list of strings, got %v", e)
		}
		out = append(out, str)
	}
	return out, nil
}

func (s *Spec) decodeTable(m map[string]any) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	backends := 0
	for _, k := range keys {
		v := m[k]
		str, isStr := v.(string)
		var err error
		switch k {
		case "list":
			l, ok := v.([]any)
			if !ok {
				return errors.New("list: want a list of strings")
			}
			s.List, err = stringList(k, l)
			if s.List == nil {
				s.List = []string{}
			}
			backends++
		case "file", "cdb", "redis", "pgsql", "mysql", "prefix", "query":
			if !isStr || (k != "prefix" && str == "") {
				return fmt.Errorf("%s: want a non-empty string", k)
			}
			switch k {
			case "file":
				s.File = str
			case "cdb":
				s.CDB = str
			case "redis":
				s.Redis = str
			case "pgsql":
				s.PgSQL = str
			case "mysql":
				s.MySQL = str
			case "prefix":
				s.Prefix = str
			case "query":
				s.Query = str
			}
			if k != "prefix" && k != "query" {
				backends++
			}
		case "pool":
			n, ok := v.(int64)
			if !ok || n < 1 || n > 1000 {
				return errors.New("pool: want a number of connections from 1 to 1000")
			}
			s.Pool = int(n)
		case "timeout", "cache", "negative_cache":
			if !isStr {
				return fmt.Errorf("%s: want a duration such as \"2s\"", k)
			}
			d, perr := time.ParseDuration(str)
			if perr != nil || (k == "timeout" && d <= 0) {
				return fmt.Errorf("%s = %q: want a duration such as \"2s\"", k, str)
			}
			if d == 0 {
				d = -1 // "0s" disables the cache; 0 means "the default"
			}
			switch k {
			case "timeout":
				s.Timeout = d
			case "cache":
				s.Cache = d
			default:
				s.NegativeCache = d
			}
		default:
			return fmt.Errorf("unknown key %q: %s", k, specWant)
		}
		if err != nil {
			return err
		}
	}
	if backends != 1 {
		return errors.New(specWant)
	}
	switch s.Backend() {
	case "pgsql", "mysql":
		if s.Query == "" {
			return fmt.Errorf("%s: a query is needed: query = \"SELECT 1 FROM domains WHERE name = %s\"", s.Backend(), map[bool]string{true: "$1", false: "?"}[s.Backend() == "pgsql"])
		}
	default:
		if s.Query != "" {
			return fmt.Errorf("query: only the pgsql and mysql backends take a query")
		}
	}
	if s.Prefix != "" && s.Backend() != "redis" {
		return errors.New("prefix: only the redis backend takes a prefix")
	}
	return nil
}

// Open builds the table a Spec describes. Remote backends get a cache
// in front. The caller closes the table (Close) when it is a Closer.
func Open(s Spec) (Table, error) {
	var (
		t   Table
		err error
	)
	switch s.Backend() {
	case "list":
		return newMemory(s.List, "list")
	case "file":
		return readFile(s.File)
	case "cdb":
		return openCDB(s.CDB)
	case "redis":
		t, err = openRedis(s)
	case "pgsql":
		t, err = openSQL("pgx", s.PgSQL, s)
	case "mysql":
		t, err = openSQL("mysql", s.MySQL, s)
	}
	if err != nil {
		return nil, err
	}
	return withCache(t, s), nil
}

// Close closes t when it holds resources.
func Close(t Table) error {
	if c, ok := t.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Key is the normalized form of a lookup key: an address as local@domain
// (local part in ASCII lower case, domain as below), a domain (or a
// ".domain" wildcard) as A-labels in ASCII lower case without a final dot,
// an IP address or prefix in canonical text, anything else (a login
// without '@') in ASCII lower case. Strings IDNA refuses are only
// lowered, so they match nothing a valid domain could.
func Key(s string) string {
	s = strings.TrimSpace(s)
	if local, domain, ok := mailaddr.Split(s); ok {
		if d, ok := mailaddr.CanonicalDomain(domain); ok {
			return mailaddr.LowerASCII(local) + "@" + d
		}
		return mailaddr.LowerASCII(s)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String()
	}
	if strings.HasPrefix(s, ".") {
		if d, ok := mailaddr.CanonicalDomain(s[1:]); ok {
			return "." + d
		}
	} else if d, ok := mailaddr.CanonicalDomain(s); ok {
		return d
	}
	return mailaddr.LowerASCII(s)
}

// Get is Table.Lookup with the key normalized by Key.
func Get(ctx context.Context, t Table, key string) (string, bool, error) {
	return t.Lookup(ctx, Key(key))
}
