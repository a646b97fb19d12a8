// Package servertest starts a server.Server for a test: listening on the
// addresses of cfg, serving until the test ends, then shut down.
package servertest

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/server"
)

// Serve makes a server of cfg, listens and serves until tb ends; then it
// shuts the server down (5 s for transactions in progress) and reports an
// error Serve returned. A listener address "127.0.0.1:0" gets a free port:
// read it with srv.Addr(name).
func Serve(tb testing.TB, cfg server.Config) *server.Server {
	tb.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return srv
}
