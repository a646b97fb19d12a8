package policyd_test

import (
	"bufio"
	"context"
	"github.com/sluice-mta/sluice/policyd/wire"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/policyd"
)

func startServer(t *testing.T, address string, maxConns int) (*policyd.Server, *hookstest.LogBuffer) {
	t.Helper()
	rec := &recorder{refuse: map[hooks.Hook]hooks.Result{}}
	c, _ := newChecker(t, hookstest.Plugin("rec", rec), hookstest.Plugin("limit", rcptLimit(0)))
	var log hookstest.LogBuffer
	srv := &policyd.Server{Checker: c, Logger: log.Logger(), MaxConnections: maxConns}
	if err := srv.Listen(address); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, &log
}

func TestServerAnswersEachRequestOfAConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.sock")
	_, log := startServer(t, "unix:"+path, 0)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(nc)
	for i, state := range []string{"RCPT", "CONNECT", "RCPT"} {
		if _, err := rcptRequest("protocol_state=" + state).WriteTo(nc); err != nil {
			t.Fatal(err)
		}
		action, err := wire.ReadAction(r)
		want := "450 4.5.3 only 0 recipients"
		if state == "CONNECT" {
			want = "DUNNO"
		}
		if err != nil || action != want {
			t.Errorf("request %d: %q, %v; want %q", i, action, err, want)
		}
	}
	// Not the protocol: the server logs and closes without answering.
	io.WriteString(nc, "GET / HTTP/1.0\r\n\r\n")
	if b, err := r.ReadByte(); err != io.EOF {
		t.Errorf("after a protocol error: read %q, %v; want the connection closed", b, err)
	}
	if !strings.Contains(log.String(), "closing the policy connection") || !strings.Contains(log.String(), `action="450 4.5.3 only 0 recipients"`) {
		t.Errorf("log:\n%s", log.String())
	}
}

func TestServerConnectionLimit(t *testing.T) {
	srv, log := startServer(t, "127.0.0.1:0", 1)
	addr := srv.Addr().String()
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// The first connection is being served once it has an answer.
	first.SetDeadline(time.Now().Add(10 * time.Second))
	rcptRequest("protocol_state=CONNECT").WriteTo(first)
	if a, err := wire.ReadAction(bufio.NewReader(first)); err != nil || a != "DUNNO" {
		t.Fatalf("first connection: %q, %v", a, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := wire.Query(ctx, addr, rcptRequest()); err == nil {
		t.Error("a connection over the limit was answered")
	}
	if !strings.Contains(log.String(), "too many connections") {
		t.Errorf("log:\n%s", log.String())
	}
	first.Close()
	// Once the first is gone, another one is served.
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, err := wire.Query(ctx, addr, rcptRequest("protocol_state=CONNECT"))
		if err == nil && a == "DUNNO" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer after the first connection closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
