// Package redislog sends go-redis's own log lines (a failed dial, a
// connection pool that cannot connect) to the program's slog logger, at
// WARN, instead of go-redis's default of printing to stderr in a format of
// its own. go-redis has one logger for the process; Install sets it once.
package redislog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

var once sync.Once

// Install makes go-redis log through slog.Default. It is safe to call
// many times, from any goroutine.
func Install() {
	once.Do(func() { redis.SetLogger(logger{}) })
}

type logger struct{}

// Printf is go-redis's logging interface.
func (logger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	if !strings.HasPrefix(msg, "redis: ") {
		msg = "redis: " + msg
	}
	slog.Default().WarnContext(ctx, msg)
}
