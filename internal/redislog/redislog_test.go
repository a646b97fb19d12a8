package redislog_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/logbuf"
	"github.com/sluice-mta/sluice/internal/redislog"
)

// A client that cannot reach its server: go-redis's complaint comes out
// of slog at WARN, once prefixed.
func TestDialErrorsGoToSlog(t *testing.T) {
	var buf logbuf.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	redislog.Install()

	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "level=WARN msg=\"redis: connection pool: failed to dial") {
		if time.Now().After(deadline) {
			t.Fatalf("no WARN line from go-redis in the slog output:\n%s", buf.String())
		}
		c.Ping(context.Background()) // refused: each failed dial counts
	}
}
