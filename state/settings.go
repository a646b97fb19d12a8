package state

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Backend names.
const (
	// Bbolt is the embedded store: one file, one process.
	Bbolt = "bbolt"
	// Redis is a Redis server that several processes share.
	Redis = "redis"
)

// DefaultFile is the bbolt file's name under data_dir.
const DefaultFile = "state.db"

// Defaults of the settings left unset.
const (
	DefaultSweepInterval = time.Minute
	DefaultRedisAddr     = "127.0.0.1:6379"
	DefaultPrefix        = "sluice:"
	DefaultTimeout       = 2 * time.Second
)

// Settings are the keys of the [state] table. The zero value is the
// bbolt store in data_dir/state.db.
type Settings struct {
	// Backend is "bbolt" (default: a file under data_dir, one process) or
	// "redis" (a Redis server several smtpd processes share).
	Backend string `toml:"backend"`

	// Path is the bbolt file. Default: state.db under data_dir.
	Path string `toml:"path"`
	// SweepInterval is how often expired keys are removed from the bbolt
	// file (they are invisible from the moment they expire). Default
	// "1m".
	SweepInterval time.Duration `toml:"sweep_interval"`

	// Addrs are the Redis servers, "host:port": one for a standalone
	// server, the Sentinels with MasterName, or the Cluster's nodes.
	// Default ["127.0.0.1:6379"].
	Addrs []string `toml:"addrs"`
	// MasterName is the Sentinel master's name; set it to use Sentinel.
	MasterName string `toml:"master_name"`
	// DB is the Redis database number (not with Cluster). Default 0.
	DB int `toml:"db"`
	// Username is the Redis ACL user, if any.
	Username string `toml:"username"`
	// PasswordFile is a file holding the Redis password (one line), or
	// PasswordEnv the name of an environment variable holding it. The
	// password is never written in this file, nor logged.
	PasswordFile string `toml:"password_file"`
	PasswordEnv  string `toml:"password_env"`
	// Prefix is put before every key in Redis, so that one server can
	// serve other programs too. Default "sluice:".
	Prefix string `toml:"prefix"`
	// Timeout bounds connecting to Redis and each command. Default "2s".
	Timeout time.Duration `toml:"timeout"`

	// DataDir is the configuration's data_dir, set by package config (it
	// is not a key of [state]); Path defaults to a file in it.
	DataDir string `toml:"-"`
}

// Check reports a setting that cannot work, naming it.
func (s Settings) Check() error {
	switch s.Backend {
	case "", Bbolt, Redis:
	default:
		return fmt.Errorf("state: backend = %q: want \"bbolt\" (a file under data_dir, one smtpd process) or \"redis\" (shared by several)", s.Backend)
	}
	if s.SweepInterval < 0 || (s.SweepInterval != 0 && s.SweepInterval < 10*time.Millisecond) {
		return fmt.Errorf("state: sweep_interval = %v: want a duration such as \"1m\"", s.SweepInterval)
	}
	if s.Timeout < 0 || (s.Timeout != 0 && s.Timeout < time.Millisecond) {
		return fmt.Errorf("state: timeout = %v: want a duration such as \"2s\" (a bare number is nanoseconds)", s.Timeout)
	}
	if s.DB < 0 {
		return fmt.Errorf("state: db = %d: want a database number, 0 or more", s.DB)
	}
	for _, a := range s.Addrs {
		if !strings.Contains(a, ":") {
			return fmt.Errorf("state: addrs: %q: want \"host:port\" (\"127.0.0.1:6379\")", a)
		}
	}
	if s.PasswordFile != "" && s.PasswordEnv != "" {
		return fmt.Errorf("state: set password_file or password_env, not both")
	}
	return nil
}

// file is the bbolt file the settings name, made absolute so that two
// spellings of one file share one store.
func (s Settings) file() (string, error) {
	p := s.Path
	if p == "" {
		dir := s.DataDir
		if dir == "" {
			dir = "./var"
		}
		p = filepath.Join(dir, DefaultFile)
	}
	return filepath.Abs(p)
}

// password reads the Redis password from its file or variable.
func (s Settings) password() (string, error) {
	switch {
	case s.PasswordFile != "":
		b, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("state: password_file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case s.PasswordEnv != "":
		v, ok := os.LookupEnv(s.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("state: password_env: the environment variable %s is not set", s.PasswordEnv)
		}
		return v, nil
	}
	return "", nil
}

// id names the store the settings open: settings with the same id share
// one.
func (s Settings) id() (string, error) {
	if s.Backend == Redis {
		addrs := slices.Clone(s.Addrs)
		if len(addrs) == 0 {
			addrs = []string{DefaultRedisAddr}
		}
		return fmt.Sprintf("redis|%s|%s|%d|%s|%s|%s|%q|%v", strings.Join(addrs, ","), s.MasterName, s.DB, s.Username,
			s.PasswordFile, s.PasswordEnv, s.prefix(), s.Timeout), nil
	}
	f, err := s.file()
	if err != nil {
		return "", fmt.Errorf("state: path: %w", err)
	}
	return "bbolt|" + f, nil
}

func (s Settings) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// The stores open in this process, by Settings.id. bbolt cannot open one
// file twice in a process (the second open waits for the first one's
// lock forever), and a SIGHUP reload builds new plugins while the old
// ones still serve: so every plugin naming one store shares one, counted
// by its handles.
var (
	openMu sync.Mutex
	opened = map[string]*shared{}
)

type shared struct {
	id    string
	store Store
	refs  int
}

// Open returns a handle of the store the settings describe, opening it
// when no handle of it is open in this process. Close the handle when
// done (in the plugin's Close): the store closes with its last handle.
//
// Open does not wait for the network or for a file lock: a bbolt file is
// opened, and Redis connected, at the first call, so that `smtpd check`
// runs beside a running smtpd; a store that cannot be reached then fails
// that call with an error that says why.
func (s Settings) Open() (Store, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	id, err := s.id()
	if err != nil {
		return nil, err
	}
	openMu.Lock()
	defer openMu.Unlock()
	sh := opened[id]
	if sh == nil {
		var st Store
		if s.Backend == Redis {
			st, err = openRedis(s)
		} else {
			var f string
			f, _ = s.file()
			st, err = openBolt(f, s.SweepInterval)
		}
		if err != nil {
			return nil, err
		}
		sh = &shared{id: id, store: st}
		opened[id] = sh
	}
	sh.refs++
	return &handle{sh: sh}, nil
}

// handle is one Open's share of a store.
type handle struct {
	sh     *shared
	closed atomic.Bool
}

func (h *handle) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if h.closed.Load() {
		return nil, false, ErrClosed
	}
	return h.sh.store.Get(ctx, key)
}

func (h *handle) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if h.closed.Load() {
		return ErrClosed
	}
	return h.sh.store.Set(ctx, key, value, ttl)
}

func (h *handle) SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if h.closed.Load() {
		return false, ErrClosed
	}
	return h.sh.store.SetIfAbsent(ctx, key, value, ttl)
}

func (h *handle) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	if h.closed.Load() {
		return 0, ErrClosed
	}
	return h.sh.store.Incr(ctx, key, delta, ttl)
}

func (h *handle) Delete(ctx context.Context, key string) error {
	if h.closed.Load() {
		return ErrClosed
	}
	return h.sh.store.Delete(ctx, key)
}

// Close releases the handle; the last one closes the store.
func (h *handle) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	openMu.Lock()
	defer openMu.Unlock()
	h.sh.refs--
	if h.sh.refs > 0 {
		return nil
	}
	delete(opened, h.sh.id)
	return h.sh.store.Close()
}
