package lookup

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/redislog"
)

// redisTable looks keys up with GET prefix+key.
type redisTable struct {
	c       *redis.Client
	prefix  string
	timeout durationOrDefault
}

func openRedis(s Spec) (*redisTable, error) {
	opt, err := redis.ParseURL(s.Redis)
	if err != nil {
		return nil, fmt.Errorf("redis: %v: want a URL such as \"redis://127.0.0.1:6379/0\" or \"unix:///run/redis/redis.sock\"", err)
	}
	timeout := durationOrDefault(s.Timeout)
	opt.DialTimeout = timeout.get()
	opt.ReadTimeout = timeout.get()
	opt.WriteTimeout = timeout.get()
	opt.MaxRetries = -1 // a lookup that fails is an error: the plugin defers
	opt.DialerRetries = 1
	if s.Pool > 0 {
		opt.PoolSize = s.Pool
	} else {
		opt.PoolSize = DefaultPool
	}
	redislog.Install()
	return &redisTable{c: redis.NewClient(opt), prefix: s.Prefix, timeout: timeout}, nil
}

// Lookup sends GET prefix+key.
func (t *redisTable) Lookup(ctx context.Context, key string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout.get())
	defer cancel()
	v, err := t.c.Get(ctx, t.prefix+key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("redis lookup: %w", err)
	}
	return v, true, nil
}

// Close closes the connection pool.
func (t *redisTable) Close() error { return t.c.Close() }
