package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/monitor/admin"
)

// operator is what serve runs beside the listeners for the operator: the
// control socket and the admin HTTP listener, each when configured.
type operator struct {
	control     net.Listener
	controlPath string
	admin       *http.Server
	cancelAdmin context.CancelFunc // ends the admin requests in progress
}

// startOperator opens the control socket and the admin listener that cfg
// asks for. state is the server's (server.Server.State).
func startOperator(cfg *config.Config, rec *monitor.Recorder, bus *monitor.Bus, state func() string, log *slog.Logger) (*operator, error) {
	ops := &operator{}
	if path := cfg.ControlSocketPath(); path != "" {
		ln, err := monitor.ListenControl(path)
		if err != nil {
			return nil, err
		}
		ops.control, ops.controlPath = ln, path
		go func() {
			if err := monitor.ServeControl(ln, rec.Snapshot); err != nil {
				log.Error("control socket failed", "err", err)
			}
		}()
		log.Info("control socket", "path", path)
	}
	if a := cfg.Admin; a.Address != "" {
		ln, err := net.Listen("tcp", a.Address)
		if err != nil {
			ops.stop(log)
			return nil, fmt.Errorf("[admin] address %q: %w", a.Address, err)
		}
		h := admin.Handler(admin.Config{Recorder: rec, Bus: bus, State: state, Token: a.Token, User: a.User, Password: a.Password})
		// The web view's event streams never go idle: stop ends them by
		// cancelling their requests' base context.
		base, cancel := context.WithCancel(context.Background())
		ops.cancelAdmin = cancel
		ops.admin = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return base }}
		go func() {
			if err := ops.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed", "err", err)
			}
		}()
		log.Info("admin listener", "address", ln.Addr().String())
	}
	return ops, nil
}

// stop closes what startOperator opened. A nil operator is a no-op.
func (o *operator) stop(log *slog.Logger) {
	if o == nil {
		return
	}
	if o.control != nil {
		o.control.Close() // removes the socket file
		o.control = nil
	}
	if o.admin != nil {
		o.cancelAdmin()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := o.admin.Shutdown(ctx); err != nil {
			log.Warn("admin listener: shutdown", "err", err)
		}
		o.admin = nil
	}
}

// stats prints a running smtpd's figures, asked on its control socket.
func stats(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", config.DefaultPath, "configuration `FILE` (its control_socket, or data_dir/smtpd.sock)")
	socket := fs.String("socket", "", "the control socket's `PATH` (instead of reading the configuration)")
	asJSON := fs.Bool("json", false, "print the figures as JSON")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpd stats [-config FILE | -socket PATH] [-json]\n\nPrints a running smtpd's figures since start: connections, transactions,\nmessages by result, plugin and code, latency per hook and per plugin.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, "smtpd stats", stderr); !ok {
		return code
	}
	path := *socket
	if path == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "smtpd stats: %v\n", err)
			return 1
		}
		if path = cfg.ControlSocketPath(); path == "" {
			fmt.Fprintf(stderr, "smtpd stats: %s sets control_socket = \"off\": there is no socket to ask\n", *cfgPath)
			return 1
		}
	}
	snap, err := monitor.FetchStats(path)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd stats: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(snap); err != nil {
			fmt.Fprintf(stderr, "smtpd stats: %v\n", err)
			return 1
		}
		return 0
	}
	monitor.WriteText(stdout, snap)
	return 0
}
