package external

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxLine bounds one line the program writes on its standard output.
const maxLine = 1 << 20

// stderrLineMax bounds one line of the program's standard error in the log.
const stderrLineMax = 4096

// errStopped is why calls on a process that Close stopped fail.
var errStopped = errors.New("the plugin is closed")

// process is one run of the program: the pipes, the replies awaited, and
// the goroutine that reads its standard output.
type process struct {
	cmd   *exec.Cmd
	stdin *os.File // our end of its standard input
	wmu   sync.Mutex

	mu      sync.Mutex
	pending map[uint64]chan *response
	broken  error // why the process is unusable; set once, with dead closed

	first    chan []byte   // the handshake line
	dead     chan struct{} // closed once the process is no use: EOF, a stray line, killed
	exited   chan struct{} // closed once it was reaped
	stopping atomic.Bool   // Close is ending it: its exit is no failure
	stderr   *stderrLog
}

// start runs the program, sends the hello and reads the handshake, within
// start_timeout.
func (p *Plugin) start() (*process, *handshake, error) {
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = p.env
	// Its own process group, so that a kill reaches the children of a
	// wrapper ("sh -c") too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	stderr := &stderrLog{p: p}
	cmd.Stderr = stderr
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	err = cmd.Start()
	inR.Close() // the child has its copies
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, nil, fmt.Errorf("start %s: %w", p.argv[0], err)
	}
	pr := &process{
		cmd: cmd, stdin: inW, pending: map[uint64]chan *response{}, stderr: stderr,
		first: make(chan []byte, 1), dead: make(chan struct{}), exited: make(chan struct{}),
	}
	go pr.read(outR, p)
	p.logger().Info("external program started", "plugin", p.instance(), "pid", cmd.Process.Pid, "command", p.argv)

	deadline := time.Now().Add(p.start0)
	if err := pr.write(p.hello, deadline); err != nil {
		// Most likely it exited already (a broken pipe): say so.
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-pr.exited:
			return nil, nil, fmt.Errorf("%s exited before its handshake (%v)", p.argv[0], pr.cmd.ProcessState)
		case <-t.C:
		}
		pr.kill(err)
		return nil, nil, fmt.Errorf("sending the hello: %w", err)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	var line []byte
	select {
	case line = <-pr.first:
	case <-pr.dead:
		select {
		case line = <-pr.first:
		default:
			pr.kill(nil)
			<-pr.exited
			return nil, nil, fmt.Errorf("%s exited before its handshake (%v)", p.argv[0], pr.cmd.ProcessState)
		}
	case <-t.C:
		pr.kill(nil)
		return nil, nil, fmt.Errorf("no handshake from %s within %v", p.argv[0], p.start0)
	}
	var h handshake
	if err := json.Unmarshal(line, &h); err != nil {
		pr.kill(nil)
		return nil, nil, fmt.Errorf("handshake %q: not a JSON object: %v", trim(line), err)
	}
	return pr, &h, nil
}

// read delivers each line of the program's output to the call waiting for
// it, until EOF; then it reaps the process. A line that answers no call
// waiting breaks the process: the two sides no longer agree.
func (pr *process) read(out *os.File, p *Plugin) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	first := true
	for sc.Scan() {
		line := sc.Bytes()
		if first {
			first = false
			pr.first <- bytes.Clone(line)
			continue
		}
		r := new(response)
		d := json.NewDecoder(bytes.NewReader(line))
		d.UseNumber()
		if err := d.Decode(r); err != nil || r.ID == nil {
			if err == nil {
				err = errors.New(`no "id"`)
			}
			pr.kill(fmt.Errorf("a line that is no response (%v): %q", err, trim(line)))
			break
		}
		pr.mu.Lock()
		ch := pr.pending[*r.ID]
		delete(pr.pending, *r.ID)
		pr.mu.Unlock()
		if ch == nil {
			pr.kill(fmt.Errorf("a response to id %d, which no call is waiting for", *r.ID))
			break
		}
		ch <- r
	}
	why := errors.New("it closed its standard output")
	if err := sc.Err(); err != nil {
		why = fmt.Errorf("reading its output: %w", err)
		pr.kill(why)
	}
	pr.fail(why)
	out.Close()
	err := pr.cmd.Wait()
	if len(pr.stderr.line) > 0 {
		pr.stderr.flush() // a last line with no newline
	}
	pr.stdin.Close()
	close(pr.exited)
	switch {
	case pr.stopping.Load():
		p.logger().Info("external program stopped", "plugin", p.instance(), "pid", pr.cmd.Process.Pid, "status", pr.cmd.ProcessState.String())
	default:
		p.logger().Error("external program exited", "plugin", p.instance(), "pid", pr.cmd.Process.Pid, "status", pr.cmd.ProcessState.String(), "why", pr.reason().Error(), "err", fmt.Sprint(err))
	}
}

// fail marks the process unusable for why, once.
func (pr *process) fail(why error) {
	pr.mu.Lock()
	if pr.broken == nil {
		pr.broken = why
		close(pr.dead)
	}
	pr.mu.Unlock()
}

// reason returns why the process is unusable.
func (pr *process) reason() error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.broken
}

// kill marks the process unusable and kills its process group. A nil why
// keeps an earlier reason, or says it was killed.
func (pr *process) kill(why error) {
	if why == nil {
		why = errors.New("killed")
	}
	pr.fail(why)
	pr.signal(syscall.SIGKILL)
}

// signal sends sig to the process group.
func (pr *process) signal(sig syscall.Signal) {
	syscall.Kill(-pr.cmd.Process.Pid, sig)
}

// register says a call waits for id's response.
func (pr *process) register(id uint64, ch chan *response) error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.broken != nil {
		return pr.broken
	}
	pr.pending[id] = ch
	return nil
}

// unregister forgets a call that stopped waiting.
func (pr *process) unregister(id uint64) {
	pr.mu.Lock()
	delete(pr.pending, id)
	pr.mu.Unlock()
}

// write sends one line by deadline.
func (pr *process) write(line []byte, deadline time.Time) error {
	pr.wmu.Lock()
	defer pr.wmu.Unlock()
	pr.stdin.SetWriteDeadline(deadline)
	_, err := pr.stdin.Write(line)
	return err
}

// stop ends the process: its standard input closed (a well-behaved program
// exits at EOF), then SIGTERM, then SIGKILL, each after grace.
func (pr *process) stop(grace time.Duration) {
	pr.stopping.Store(true)
	pr.wmu.Lock()
	pr.stdin.Close()
	pr.wmu.Unlock()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t := time.NewTimer(grace)
		select {
		case <-pr.exited:
			t.Stop()
			return
		case <-t.C:
		}
		pr.fail(errStopped)
		pr.signal(sig)
	}
	<-pr.exited
}

// trim shortens a line for an error message.
func trim(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// stderrLog logs the program's standard error line by line.
type stderrLog struct {
	p    *Plugin
	line []byte
}

func (s *stderrLog) Write(b []byte) (int, error) {
	n := len(b)
	for {
		line, rest, ended := bytes.Cut(b, []byte{'\n'})
		s.line = append(s.line, line[:min(stderrLineMax-len(s.line), len(line))]...)
		if !ended {
			return n, nil
		}
		s.flush()
		b = rest
	}
}

func (s *stderrLog) flush() {
	line := bytes.TrimRight(s.line, "\r")
	s.p.logger().Log(context.Background(), slog.LevelWarn, "external program stderr", "plugin", s.p.instance(), "line", string(line))
	s.line = s.line[:0]
}
