// Package lookuptest starts real database servers for the tests of lookup
// tables: PostgreSQL, MariaDB and Redis from their Debian packages, each
// with a private data directory and a unix socket in a temporary folder,
// never the system's instance and never the network. Start one server per
// test package (in TestMain) and Stop it at the end.
package lookuptest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the mysql driver for Exec
	_ "github.com/jackc/pgx/v5/stdlib" // the pgx driver for Exec

	"github.com/sluice-mta/sluice/state/statetest"
)

// Where Debian installs the servers (redis-server: statetest.RedisServerPath).
const (
	PostgresBin = "/usr/lib/postgresql/15/bin"
	MariaDBd    = "/usr/sbin/mariadbd"
	MariaDBInit = "/usr/bin/mariadb-install-db"
)

// Server is a running database server.
type Server struct {
	// DSN connects to the server: a pgx connection string, a
	// go-sql-driver DSN or a redis:// / unix:// URL.
	DSN string
	// Driver is "pgx", "mysql" or "redis".
	Driver string
	dir    string
	cmd    *exec.Cmd
	done   chan error
	stop   func() // stops a server another package started
}

// Stop ends the server and removes its folder.
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		return
	}
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	os.RemoveAll(s.dir)
}

// Exec runs SQL statements on the server (to create the tables a test
// reads).
func (s *Server) Exec(stmts ...string) error {
	db, err := sql.Open(s.Driver, s.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func need(path, pkg string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s is missing: install the Debian package %s (make deps)", path, pkg)
	}
	return nil
}

// tempDir makes a folder the server's user can use.
func tempDir(owner string) (string, *user.User, error) {
	dir, err := os.MkdirTemp("", "sluice-"+owner+"-")
	if err != nil {
		return "", nil, err
	}
	if os.Getuid() != 0 {
		return dir, nil, nil
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return dir, nil, fmt.Errorf("postgres refuses to run as root and there is no %q user to run it as: %w", owner, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return dir, nil, err
	}
	return dir, u, nil
}

func asUser(cmd *exec.Cmd, u *user.User) {
	if u == nil {
		return
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Env = append(os.Environ(), "HOME="+cmd.Dir)
}

func (s *Server) start(cmd *exec.Cmd, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	s.cmd = cmd
	s.done = make(chan error, 1)
	go func() { s.done <- cmd.Wait(); f.Close() }()
	return nil
}

// waitReady polls ready until it succeeds, the server exits, or 30s pass.
func (s *Server) waitReady(logPath string, ready func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case e := <-s.done:
			s.done <- e
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("the server exited (%v): %s", e, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("the server did not answer within 30s: %v: %s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ping(driver, dsn string) error {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// Postgres initializes a cluster in a temporary folder (as the postgres
// user when running as root) and starts it on a unix socket there, with
// trust authentication; the DSN connects as user postgres to database
// postgres.
func Postgres() (*Server, error) {
	if err := need(filepath.Join(PostgresBin, "postgres"), "postgresql"); err != nil {
		return nil, err
	}
	dir, u, err := tempDir("postgres")
	s := &Server{dir: dir, Driver: "pgx"}
	if err != nil {
		s.Stop()
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(PostgresBin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.Dir = dir
	asUser(initdb, u)
	if out, err := initdb.CombinedOutput(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	cmd := exec.Command(filepath.Join(PostgresBin, "postgres"), "-D", data, "-k", dir, "-c", "listen_addresses=", "-F", "-c", "full_page_writes=off")
	cmd.Dir = dir
	asUser(cmd, u)
	logPath := filepath.Join(dir, "postgres.log")
	if err := s.start(cmd, logPath); err != nil {
		s.Stop()
		return nil, err
	}
	s.DSN = "host=" + dir + " user=postgres dbname=postgres sslmode=disable"
	if err := s.waitReady(logPath, func() error { return ping("pgx", s.DSN) }); err != nil {
		s.Stop()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return s, nil
}

// MariaDB installs a data directory in a temporary folder and starts
// mariadbd on a unix socket there, with networking off; the DSN connects
// as root to database test (created empty).
func MariaDB() (*Server, error) {
	if err := need(MariaDBd, "mariadb-server"); err != nil {
		return nil, err
	}
	if err := need(MariaDBInit, "mariadb-server"); err != nil {
		return nil, err
	}
	dir, u, err := tempDir("mysql")
	s := &Server{dir: dir, Driver: "mysql"}
	if err != nil {
		s.Stop()
		return nil, err
	}
	data := filepath.Join(dir, "data")
	sock := filepath.Join(dir, "mysqld.sock")
	userName := "root"
	if u != nil {
		userName = u.Username
	}
	inst := exec.Command(MariaDBInit, "--no-defaults", "--datadir="+data, "--user="+userName, "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve")
	inst.Dir = dir
	if out, err := inst.CombinedOutput(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("mariadb-install-db: %v: %s", err, out)
	}
	cmd := exec.Command(MariaDBd, "--no-defaults", "--datadir="+data, "--socket="+sock, "--skip-networking",
		"--user="+userName, "--pid-file="+filepath.Join(dir, "mysqld.pid"), "--innodb-flush-log-at-trx-commit=0",
		"--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve")
	cmd.Dir = dir
	logPath := filepath.Join(dir, "mariadb.log")
	if err := s.start(cmd, logPath); err != nil {
		s.Stop()
		return nil, err
	}
	root := "root@unix(" + sock + ")/"
	if err := s.waitReady(logPath, func() error { return ping("mysql", root) }); err != nil {
		s.Stop()
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	s.DSN = root
	if err := s.Exec("CREATE DATABASE test"); err != nil {
		s.Stop()
		return nil, err
	}
	s.DSN = root + "test"
	return s, nil
}

// Redis starts redis-server on a unix socket in a temporary folder, with
// no persistence (statetest.RedisOnSocket); the DSN is its unix:// URL.
func Redis() (*Server, error) {
	sock, stop, err := statetest.RedisOnSocket()
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return &Server{DSN: "unix://" + sock, Driver: "redis", stop: stop}, nil
}

// RedisSet runs SET key value on a redis server.
func (s *Server) RedisSet(kv ...string) error {
	c, err := net.Dial("unix", s.DSN[len("unix://"):])
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; i+1 < len(kv); i += 2 {
		cmd := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(kv[i]), kv[i], len(kv[i+1]), kv[i+1])
		if _, err := c.Write([]byte(cmd)); err != nil {
			return err
		}
		b := make([]byte, 5)
		if _, err := c.Read(b); err != nil || string(b) != "+OK\r\n" {
			return fmt.Errorf("SET %s: %q %v", kv[i], b, err)
		}
	}
	return nil
}

// RunWithPostgres is a package's TestMain when its tests share one
// PostgreSQL server: it starts the server, runs stmts in it (the tables
// the tests read), sets *pg, runs the tests, stops the server and exits.
// A server that does not start, or a statement that fails, ends the run
// with a message naming what the tests need.
//
//	var pg *lookuptest.Server
//
//	func TestMain(m *testing.M) {
//		lookuptest.RunWithPostgres(m, &pg, "CREATE TABLE domains (name TEXT PRIMARY KEY)")
//	}
func RunWithPostgres(m *testing.M, pg **Server, stmts ...string) {
	s, err := Postgres()
	if err != nil {
		fmt.Fprintln(os.Stderr, "these tests need a PostgreSQL server:", err)
		os.Exit(1)
	}
	if err := s.Exec(stmts...); err != nil {
		s.Stop()
		fmt.Fprintln(os.Stderr, "setting up the test tables in PostgreSQL:", err)
		os.Exit(1)
	}
	*pg = s
	code := m.Run()
	s.Stop()
	os.Exit(code)
}
