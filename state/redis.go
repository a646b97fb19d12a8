package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/redislog"
)

// redisStore is the Redis backend: every call is one command (or one
// script), atomic on the server, so that any number of smtpd processes
// share it safely.
type redisStore struct {
	c      redis.UniversalClient
	prefix string
}

func openRedis(s Settings) (*redisStore, error) {
	pw, err := s.password()
	if err != nil {
		return nil, err
	}
	addrs := s.Addrs
	if len(addrs) == 0 {
		addrs = []string{DefaultRedisAddr}
	}
	t := s.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	opt := &redis.UniversalOptions{
		Addrs: addrs, MasterName: s.MasterName, DB: s.DB,
		Username: s.Username, Password: pw,
		DialTimeout: t, ReadTimeout: t, WriteTimeout: t,
		// A failed command is answered at once (451 to the client);
		// the client retries the message, not we the command.
		MaxRetries: 1,
		// Sluice speaks RESP2 to Redis and sends no CLIENT SETINFO,
		// which servers before 7.2 refuse.
		Protocol:        2,
		DisableIdentity: true,
	}
	// The universal client is a Cluster client for several addresses
	// without a master name; with one address it is a plain client.
	redislog.Install()
	return &redisStore{c: redis.NewUniversalClient(opt), prefix: s.prefix()}, nil
}

func (s *redisStore) Close() error { return s.c.Close() }

// wrap says which store failed, without the password (go-redis never puts
// it in an error).
func wrap(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("state: redis: %w", err)
}

func (s *redisStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	v, err := s.c.Get(ctx, s.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, wrap(err)
	}
	return v, true, nil
}

func (s *redisStore) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return wrap(s.c.Set(ctx, s.prefix+key, value, ttlArg(ttl)).Err())
}

func (s *redisStore) SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	// SET key value NX PX ttl: one atomic command.
	ok, err := s.c.SetNX(ctx, s.prefix+key, value, ttlArg(ttl)).Result()
	return ok, wrap(err)
}

// incrScript adds to a counter and, when the counter has no expiry yet
// (it was just created), gives it its time to live: INCRBY and PEXPIRE in
// one script, which Redis runs atomically. (EXPIRE NX would need Redis 7.)
var incrScript = redis.NewScript(`
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n`)

func (s *redisStore) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	ms := int64(0)
	if ttl > 0 {
		ms = max(ttl.Milliseconds(), 1)
	}
	n, err := incrScript.Run(ctx, s.c, []string{s.prefix + key}, delta, ms).Int64()
	if err != nil && strings.Contains(err.Error(), "not an integer") {
		return 0, fmt.Errorf("%w: %q", ErrNotInteger, key)
	}
	return n, wrap(err)
}

func (s *redisStore) Delete(ctx context.Context, key string) error {
	return wrap(s.c.Del(ctx, s.prefix+key).Err())
}

// ttlArg is the expiration go-redis takes: 0 for none, else at least a
// millisecond (a shorter one would round to no expiry at all).
func ttlArg(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return 0
	}
	return max(ttl, time.Millisecond)
}
