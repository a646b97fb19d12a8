package lookup

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// durationOrDefault is a Spec timeout, DefaultTimeout when unset.
type durationOrDefault time.Duration

func (d durationOrDefault) get() time.Duration {
	if d <= 0 {
		return DefaultTimeout
	}
	return time.Duration(d)
}

// sqlTable runs a query with the key as its one parameter.
type sqlTable struct {
	db      *sql.DB
	query   string
	driver  string
	timeout durationOrDefault
}

// openSQL opens a pool. It does not connect: a database down at start is
// not a configuration error (lookups defer until it answers). The query
// is prepared on first use.
func openSQL(driver, dsn string, s Spec) (*sqlTable, error) {
	name := map[string]string{"pgx": "pgsql", "mysql": "mysql"}[driver]
	if driver == "mysql" {
		cfg, err := mysqldriver.ParseDSN(dsn)
		if err != nil {
			// The driver's message may quote the DSN, which may hold a password.
			return nil, fmt.Errorf("mysql: the DSN is not valid: want \"user:password@tcp(127.0.0.1:3306)/dbname\" or \"user@unix(/run/mysqld/mysqld.sock)/dbname\"")
		}
		t := durationOrDefault(s.Timeout).get()
		cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = t, t, t
		dsn = cfg.FormatDSN()
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot open the database: %v", name, err)
	}
	pool := s.Pool
	if pool <= 0 {
		pool = DefaultPool
	}
	db.SetMaxOpenConns(pool)
	db.SetMaxIdleConns(pool)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &sqlTable{db: db, query: s.Query, driver: name, timeout: durationOrDefault(s.Timeout)}, nil
}

// Lookup runs the query; a row means found.
func (t *sqlTable) Lookup(ctx context.Context, key string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout.get())
	defer cancel()
	var v sql.NullString
	err := t.db.QueryRowContext(ctx, t.query, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("%s lookup: %w", t.driver, err)
	}
	return v.String, true, nil
}

// Close closes the pool.
func (t *sqlTable) Close() error { return t.db.Close() }
