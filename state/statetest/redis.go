package statetest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// RedisServerPath is where Debian's redis-server package installs the
// server.
const RedisServerPath = "/usr/bin/redis-server"

// redisServer is one redis-server this package started.
type redisServer struct {
	addr string
	err  error
	cmd  *exec.Cmd
	dir  string
	out  bytes.Buffer
	done chan struct{}
}

var redisOnce struct {
	sync.Once
	redisServer
}

// Redis returns the address ("127.0.0.1:port") of a private redis-server
// the test binary starts at its first call, on loopback, with no
// persistence, in a temporary directory. Call Main from TestMain so that
// it stops when the tests end. It fails the test, naming the Debian
// package, when redis-server is not installed.
func Redis(t testing.TB) string {
	t.Helper()
	redisOnce.Do(func() { redisOnce.start("tcp") })
	if redisOnce.err != nil {
		t.Fatalf("%v", redisOnce.err)
	}
	return redisOnce.addr
}

// Main runs the tests and then stops the redis-server Redis started, if
// any: func TestMain(m *testing.M) { statetest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	StopRedis()
	os.Exit(code)
}

// StopRedis stops the redis-server Redis started, if any.
func StopRedis() { redisOnce.stop() }

// StartRedis starts a redis-server of the test's own, as Redis does, and
// stops it when the test ends. Use it in a package whose TestMain is not
// Main's; Redis shares one server among a package's tests.
func StartRedis(t testing.TB) string {
	t.Helper()
	r := &redisServer{}
	r.start("tcp")
	t.Cleanup(r.stop)
	if r.err != nil {
		t.Fatalf("%v", r.err)
	}
	return r.addr
}

// RedisOnSocket starts a redis-server as Redis does, listening on a unix
// socket in its temporary directory instead of a port, for a TestMain that
// starts its own servers (lookuptest's). It returns the socket's path and
// the function that stops the server and removes the directory.
func RedisOnSocket() (sock string, stop func(), err error) {
	r := &redisServer{}
	r.start("unix")
	if r.err != nil {
		r.stop()
		return "", nil, r.err
	}
	return r.addr, r.stop, nil
}

func (r *redisServer) stop() {
	if r.cmd != nil {
		r.cmd.Process.Kill()
		<-r.done
		r.cmd = nil
	}
	if r.dir != "" {
		os.RemoveAll(r.dir)
	}
}

func (r *redisServer) start(network string) {
	if _, err := os.Stat(RedisServerPath); err != nil {
		r.err = fmt.Errorf("redis-server is not installed: run `make deps` (Debian package redis-server): %v", err)
		return
	}
	dir, err := os.MkdirTemp("", "statetest-redis-")
	if err != nil {
		r.err = err
		return
	}
	r.dir = dir
	var addr string
	var listen []string
	if network == "unix" {
		addr = filepath.Join(dir, "redis.sock")
		listen = []string{"--port", "0", "--unixsocket", addr}
	} else {
		// A free port: redis-server takes a number, not a listener.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			r.err = err
			return
		}
		addr = ln.Addr().String()
		ln.Close()
		_, port, _ := net.SplitHostPort(addr)
		listen = []string{"--bind", "127.0.0.1", "--port", port}
	}
	cmd := exec.Command(RedisServerPath, append(listen, "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--protected-mode", "yes", "--logfile", "")...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &r.out, &r.out
	if err := cmd.Start(); err != nil {
		r.err = fmt.Errorf("start redis-server: %v", err)
		return
	}
	r.cmd = cmd
	r.done = make(chan struct{})
	go func() { cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ping(network, addr) {
			r.addr = addr
			return
		}
		select {
		case <-r.done:
			r.err = fmt.Errorf("redis-server exited at start:\n%s", r.out.String())
			r.cmd = nil
			return
		default:
		}
		if time.Now().After(deadline) {
			r.err = fmt.Errorf("redis-server did not answer on %s within 20s:\n%s", addr, r.out.String())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping reports whether a Redis server answers PING at addr.
func ping(network, addr string) bool {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}
