package monitor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// The control socket: a unix socket, mode 0600, that answers `smtpd
// stats`. The client writes one line, "stats"; the server answers with
// the Snapshot as one JSON document and closes.

// ListenControl makes the control socket at path, mode 0600, replacing a
// stale one (a socket nobody answers on). A socket in use is an error:
// another smtpd runs with the same data_dir.
func ListenControl(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way: remove it or set control_socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another smtpd answers on it: stop it, or give this one another data_dir or control_socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w (set control_socket to another path, or \"off\")", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// ServeControl answers the control socket's clients with stats() until ln
// is closed.
func ServeControl(ln net.Listener, stats func() Snapshot) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
			if err != nil {
				return
			}
			switch strings.TrimSpace(line) {
			case "stats":
				json.NewEncoder(c).Encode(stats())
			default:
				fmt.Fprintf(c, "{\"error\": \"unknown command %q: the control socket knows stats\"}\n", strings.TrimSpace(line))
			}
		}()
	}
}

// FetchStats asks the control socket at path for the server's figures.
func FetchStats(path string) (Snapshot, error) {
	var s Snapshot
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return s, fmt.Errorf("%w: is smtpd running, with this control_socket? (give -socket PATH or -config FILE)", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "stats\n"); err != nil {
		return s, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := json.NewDecoder(c).Decode(&s); err != nil {
		return s, fmt.Errorf("control socket %s: the answer is not the server's figures: %w", path, err)
	}
	return s, nil
}

// WriteText prints s for a person: the counts, then the latency tables.
func WriteText(w io.Writer, s Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	up := time.Since(s.Started).Round(time.Second)
	fmt.Fprintf(w, "since %s (%s)\n", s.Started.Format(time.RFC3339), up)
	fmt.Fprintf(w, "connections: %d open, %d total\n", s.ConnectionsOpen, s.ConnectionsTotal)
	fmt.Fprintf(w, "transactions: %d\n", s.Transactions)
	fmt.Fprintf(w, "\nmessages:\n")
	fmt.Fprintf(tw, "result\tplugin\tcode\tcount\t\n")
	for _, o := range s.Messages {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t\n", o.Result, dash(o.Plugin), dash(o.Code), o.Count)
	}
	tw.Flush()
	for _, t := range []struct {
		title string
		rows  []Latency
	}{{"hooks", s.Hooks}, {"plugins", s.Plugins}} {
		fmt.Fprintf(w, "\n%s:\n", t.title)
		fmt.Fprintf(tw, "name\tcount\tmean\tp50\tp99\tmax\t\n")
		for _, l := range t.rows {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", l.Name, l.Count, short(l.Mean), short(l.P50), short(l.P99), short(l.Max))
		}
		tw.Flush()
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// short rounds d to 3 significant digits.
func short(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	case d >= time.Microsecond:
		return d.Round(10 * time.Nanosecond).String()
	}
	return d.String()
}
