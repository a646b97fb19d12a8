// Package cli is the smtpd command line: serve, check, stdio, policy,
// plugins, passwd, dkim-keygen and version. cmd/smtpd is this plus the list of compiled-in plugins; a custom
// smtpd with plugins of its own is the same two files in another module:
//
//	package main
//
//	import (
//		"os"
//
//		"github.com/sluice-mta/sluice/cmd/smtpd/cli"
//		_ "github.com/sluice-mta/sluice/plugins/rcptok"
//		_ "github.com/sluice-mta/sluice/plugins/maildir"
//		_ "example.org/mysmtpd/bouncecheck"
//	)
//
//	func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
//
//	smtpd [-config FILE]          serve (default config: /etc/sluice/smtpd.toml)
//	smtpd check [-config FILE]    validate the configuration, build every plugin, exit
//	smtpd stdio [-config FILE]    serve one connection on stdin/stdout (tcpserver, inetd)
//	smtpd policy [-config FILE]   serve Postfix's policy delegation protocol
//	smtpd plugins                 list the compiled-in plugins and their hooks
//	smtpd passwd [-file F] USER   set USER's password in an authfile password file
//	smtpd stats [-json]           print a running smtpd's figures from its control socket
//	smtpd dkim-keygen -domain D -selector S [-algorithm rsa|ed25519] [-bits N] [-out F]
//	                              write a DKIM signing key, print its DNS record
//	smtpd version                 print the version
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/monitor"
	"github.com/sluice-mta/sluice/server"
	"github.com/sluice-mta/sluice/server/authlimit"
	"github.com/sluice-mta/sluice/server/certs"
	"github.com/sluice-mta/sluice/state"
)

// Version is set at build time with
// -ldflags "-X github.com/sluice-mta/sluice/cmd/smtpd/cli.Version=...".
var Version = "dev"

// Main runs the smtpd command with args (without the program name) and
// returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "check":
		return check(args, stdout, stderr)
	case "stdio":
		return stdio(args, os.LookupEnv, stderr)
	case "policy":
		return policy(args, stdout, stderr)
	case "plugins":
		return listPlugins(stdout)
	case "passwd":
		return passwd(args, stdin, stdout, stderr)
	case "stats":
		return stats(args, stdout, stderr)
	case "dkim-keygen":
		return dkimKeygen(args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "smtpd (Sluice) %s\n", Version)
		return 0
	case "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "smtpd: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `usage:
  smtpd [-config FILE]            serve mail (default config %s)
  smtpd check [-config FILE]      validate the configuration and build every plugin
  smtpd stdio [-config FILE] [-listener NAME]
                                  serve one connection on stdin/stdout (under tcpserver or inetd)
  smtpd policy [-config FILE] [-listener NAME] [-address ADDR] | -test [-address ADDR] [name=value ...]
                                  serve Postfix's policy delegation protocol (check_policy_service), or ask one
  smtpd plugins                   list the compiled-in plugins and the hooks each implements
  smtpd passwd [-file FILE] USER  set USER's password in an authfile password file
  smtpd stats [-config FILE | -socket PATH] [-json]
                                  print a running smtpd's figures (connections, messages, latency)
  smtpd dkim-keygen -domain D -selector S [-algorithm rsa|ed25519] [-bits 2048] [-out FILE]
                                  write a DKIM signing key (mode 0600) and print its DNS TXT record
  smtpd version                   print the version
  smtpd help                      print this text
`, config.DefaultPath)
}

// configFlag parses the -config flag of serve (the command run without a
// name) and check. ok is false when the command must stop with exit code
// code: 0 after -h (the usage was asked for), 2 on a bad argument.
// parseFlags parses a command's flags; with cmd ("smtpd stats") it also
// refuses arguments that are not flags. It returns the exit code and false
// when the command should stop there: 0 after -h, 2 after a mistake (the
// usage printed).
func parseFlags(fs *flag.FlagSet, args []string, cmd string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if cmd != "" && fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", cmd, fs.Arg(0))
		fs.Usage()
		return 2, false
	}
	return 0, true
}

func configFlag(name string, args []string, stderr io.Writer) (path string, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	p := fs.String("config", config.DefaultPath, "configuration `FILE`")
	fs.Usage = func() {
		if name == "serve" {
			// smtpd [-config FILE]: the usage of the whole command.
			usage(stderr)
		} else {
			fmt.Fprintf(stderr, "usage: smtpd %s [-config FILE]\n", name)
		}
		fmt.Fprintf(stderr, "\nflags:\n")
		fs.PrintDefaults()
	}
	cmd := "smtpd " + name
	if name == "serve" {
		cmd = "smtpd"
	}
	if code, ok := parseFlags(fs, args, cmd, stderr); !ok {
		return "", code, false
	}
	return *p, 0, true
}

func check(args []string, stdout, stderr io.Writer) int {
	path, code, ok := configFlag("check", args, stderr)
	if !ok {
		return code
	}
	cfg, err := config.Load(path)
	if err == nil {
		// Warnings (a listener without a queue plugin) go to stderr.
		var b *built
		b, err = build(cfg, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil, nil)
		if err == nil {
			b.close(slog.New(slog.NewTextHandler(io.Discard, nil)))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "smtpd check: %v\n", err)
		return 1
	}
	for _, l := range cfg.Listeners {
		names := slices.Clone(l.Plugins)
		for i, n := range names {
			if !cfg.Enforces(n) {
				names[i] += " (enforce = false)"
			}
		}
		fmt.Fprintf(stdout, "listener %s on %s: %s\n", l.Name, l.Address, strings.Join(names, ", "))
	}
	fmt.Fprintf(stdout, "%s: OK\n", path)
	return 0
}

func listPlugins(stdout io.Writer) int {
	for _, r := range hooks.Registered() {
		names := make([]string, len(r.Hooks))
		for i, h := range r.Hooks {
			names[i] = h.String()
		}
		fmt.Fprintf(stdout, "%-14s %s\n", r.Name, strings.Join(names, " "))
	}
	return 0
}

// built is a configuration turned into what the server runs.
type built struct {
	server  server.Config
	chains  map[string]*hooks.Chain
	plugins map[string]any // every instance once, even when shared by listeners
	certs   []*certs.Set
	// authStore is the AUTH limiter's handle of the [state] store, nil
	// without a [state] table.
	authStore state.Store
}

func sameListeners(a, b map[string]*hooks.Chain) bool {
	if len(a) != len(b) {
		return false
	}
	for name := range a {
		if _, ok := b[name]; !ok {
			return false
		}
	}
	return true
}

// close runs each plugin instance's Close once and closes the AUTH
// limiter's store handle.
func (b *built) close(log *slog.Logger) {
	b.closeAuthStore(log)
	for name, p := range b.plugins {
		if c, ok := p.(io.Closer); ok {
			if err := c.Close(); err != nil {
				log.Warn("closing a plugin failed", "plugin", name, "err", err)
			}
		}
	}
}

// closeAuthStore closes the AUTH limiter's store handle, if any.
func (b *built) closeAuthStore(log *slog.Logger) {
	if b.authStore == nil {
		return
	}
	if err := b.authStore.Close(); err != nil {
		log.Warn("closing the AUTH failure counts' state store failed", "err", err)
	}
	b.authStore = nil
}

// build turns the configuration into a server configuration: every plugin
// built once, one chain per listener, the TLS certificates loaded.
//
// rec, when not nil, counts the server's figures and times the chains'
// hooks; bus, when not nil, gets the server's events. A reload passes the
// same ones: the figures go on.
func build(cfg *config.Config, log *slog.Logger, rec *monitor.Recorder, bus *monitor.Bus) (*built, error) {
	plugins, err := cfg.Build()
	if err != nil {
		return nil, err
	}
	b := &built{chains: map[string]*hooks.Chain{}, plugins: plugins}
	ok := false
	defer func() {
		if !ok {
			b.close(log)
		}
	}()
	limiter := &authlimit.Limiter{
		MaxFailures: cfg.AuthMaxFailures, Window: cfg.AuthFailureWindow.Duration, Delay: cfg.AuthFailureDelay.Duration,
		Logger: log,
	}
	// With a [state] table the AUTH failure counts are in the store
	// (shared through Redis, kept across restarts in bbolt); without one
	// in memory, and no state file is created.
	if st, ok := cfg.StateStore(); ok {
		if b.authStore, err = st.Open(); err != nil {
			return nil, fmt.Errorf("%s: [state] for the AUTH failure counts: %w", cfg.Path(), err)
		}
		limiter.Store = b.authStore
	}
	b.server = server.Config{SpoolDir: filepath.Join(cfg.DataDir, "spool"), Logger: log, AuthLimiter: limiter, Recorder: rec, Bus: bus,
		MaxSpooling: cfg.MaxSpooling, SpoolMemoryBudget: int64(cfg.SpoolMemoryBudget)}
	var meter hooks.Meter
	if rec != nil {
		meter = rec
	}
	for _, l := range cfg.Listeners {
		var ins []hooks.Instance
		for _, name := range l.Plugins {
			ins = append(ins, hooks.Instance{Name: name, Plugin: plugins[name], ObserveOnly: !cfg.Enforces(name)})
		}
		ch, err := hooks.NewChain(ins, hooks.Options{Timeout: cfg.HookTimeout.Duration, QueueTimeout: cfg.QueueTimeout.Duration, Logger: log.With("listener", l.Name), Meter: meter})
		if err != nil {
			return nil, fmt.Errorf("%s: listener %q: %w", cfg.Path(), l.Name, err)
		}
		if !ch.HasQueue() {
			log.Warn("listener has no queue plugin: every message will get 451", "listener", l.Name)
		}
		if l.RequireAuth && !ch.HasAuth() {
			return nil, fmt.Errorf("%s: listener %q: require_auth is set but no plugin in its list checks passwords (add authfile, checkpassword or dovecotauth)", cfg.Path(), l.Name)
		}
		b.chains[l.Name] = ch
		lc := server.ListenerConfig{
			Name: l.Name, Address: l.Address, Hostname: l.Hostname, Greeting: l.Greeting, Chain: ch,
			Limits: server.Limits{
				MaxMessageBytes: int64(l.MaxMessageSize), MaxRecipients: l.MaxRecipients,
				MaxHeaderBytes: int64(l.MaxHeaderSize), SpoolMemory: int64(l.SpoolMemory),
				HeaderIndexBytes: int(l.HeaderIndexSize), HeaderIndexFields: l.HeaderIndexFields,
			},
			ReadTimeout: l.ReadTimeout.Duration, WriteTimeout: l.WriteTimeout.Duration,
			MinDataRate: l.MinDataRate, MinDataRateGrace: l.MinDataRateGrace.Duration,
			MaxLineLength: l.MaxLineLength, MaxConnections: l.MaxConnections,
			MaxConnectionsPerIP: l.MaxConnectionsPerIP, MaxErrors: l.MaxErrors, MaxJunkCommands: l.MaxJunkCommands,
			IPv6Prefix: l.IPv6Prefix, GreetingDelay: l.GreetingDelay.Duration,
			MaxConnectionRatePerIP: l.MaxConnectionRatePerIP, ConnectionRateWindow: l.ConnectionRateWindow.Duration,
			BareNewline:      server.BareNewline(l.BareNewline),
			RequireAuth:      l.RequireAuth,
			ReceivedAuthUser: l.ReceivedAuthUser, AuthPlaintextLoopback: l.AuthPlaintextLoopback,
			ProxyProtocol: l.ProxyProtocol, ProxyHeaderTimeout: l.ProxyHeaderTimeout.Duration,
		}
		if lc.ProxyNetworks, err = config.Networks(l.ProxyNetworks); err != nil {
			return nil, fmt.Errorf("%s: listener %q: proxy_networks: %w", cfg.Path(), l.Name, err)
		}
		if lc.XClientHosts, err = config.Networks(l.XClientHosts); err != nil {
			return nil, fmt.Errorf("%s: listener %q: xclient_hosts: %w", cfg.Path(), l.Name, err)
		}
		if len(lc.XClientHosts) > 0 {
			log.Warn("XCLIENT is allowed: these hosts may name any client address and log in as any user (relay rights)", "listener", l.Name, "xclient_hosts", l.XClientHosts)
		}
		if l.Trace {
			lc.Trace = traceLogger(cfg, log)
		}
		if l.ConnectionRateExceptions != nil {
			lc.ConnectionRateExceptions = []netip.Prefix{}
			for _, n := range l.ConnectionRateExceptions {
				p, _ := config.ParsePrefix(n) // checked when the file was loaded
				lc.ConnectionRateExceptions = append(lc.ConnectionRateExceptions, p)
			}
		}
		if l.HasTLS() && l.StartTLS != "none" || l.ImplicitTLS {
			set, err := loadCertificates(l, log)
			if err != nil {
				return nil, fmt.Errorf("%s: listener %q: %w", cfg.Path(), l.Name, err)
			}
			if lc.TLS, err = set.TLSConfig(l.TLSMinVersion); err != nil {
				return nil, fmt.Errorf("%s: listener %q: %w", cfg.Path(), l.Name, err)
			}
			b.certs = append(b.certs, set)
			lc.ImplicitTLS = l.ImplicitTLS
			lc.RequireTLS = l.StartTLS == "require"
		}
		b.server.Listeners = append(b.server.Listeners, lc)
	}
	ok = true
	return b, nil
}

func loadCertificates(l config.Listener, log *slog.Logger) (*certs.Set, error) {
	if len(l.TLSCertificates) == 0 {
		log.Warn("listener uses a throwaway SELF-SIGNED certificate: for local testing only, clients cannot verify it",
			"listener", l.Name, "hostname", l.Hostname)
		return certs.SelfSigned(l.Hostname)
	}
	pairs := make([]certs.Pair, len(l.TLSCertificates))
	for i, p := range l.TLSCertificates {
		pairs[i] = certs.Pair{Cert: p.Cert, Key: p.Key}
	}
	return certs.Load(pairs)
}

// newLogger returns the logger of cfg's log_level and log_format, writing
// to w.
func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	logOutput = w
	level := cfg.LogLevel
	var lv slog.Level
	switch level {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	}
	return slog.New(newHandler(cfg.LogFormat, w, lv))
}

func newHandler(format string, w io.Writer, lv slog.Level) slog.Handler {
	if format == "json" {
		return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})
}

// logOutput is where serve, stdio and policy log: their stderr. The trace
// loggers write there too, at DEBUG whatever log_level says.
var logOutput io.Writer = os.Stderr

// traceLogger returns the logger of a listener's trace: cfg's format, at
// DEBUG.
func traceLogger(cfg *config.Config, _ *slog.Logger) *slog.Logger {
	return slog.New(newHandler(cfg.LogFormat, logOutput, slog.LevelDebug))
}

func serve(args []string, stderr io.Writer) int {
	path, code, ok := configFlag("serve", args, stderr)
	if !ok {
		return code
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd: %v\n", err)
		return 1
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	rec := monitor.NewRecorder()
	var bus *monitor.Bus
	if cfg.Admin.Address != "" {
		bus = monitor.NewBus(1000) // for the live view on the admin listener
	}
	b, err := build(cfg, log, rec, bus)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd: %v\n", err)
		return 1
	}
	inherited, err := inherit(&b.server)
	var srv *server.Server
	if err == nil {
		srv, err = server.New(b.server)
	}
	var ops *operator
	if err == nil {
		ops, err = startOperator(cfg, rec, bus, srv.State, log)
	}
	if err == nil {
		err = srv.Listen()
	}
	if err != nil {
		ops.stop(log)
		b.close(log)
		fmt.Fprintf(stderr, "smtpd: %v\n", err)
		return 1
	}
	defer ops.stop(log)
	log.Info("Sluice started", "version", Version, "config", path, "sockets_from_systemd", inherited)
	if err := notify(daemon.SdNotifyReady); err != nil {
		log.Warn(err.Error())
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	for {
		select {
		case err := <-done:
			if err != nil {
				fmt.Fprintf(stderr, "smtpd: %v\n", err)
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if err := notify(daemon.SdNotifyReloading); err != nil {
					log.Warn(err.Error())
				}
				b = reload(path, cfg, b, srv, log, rec, bus)
				if err := notify(daemon.SdNotifyReady); err != nil {
					log.Warn(err.Error())
				}
				continue
			}
			if err := notify(daemon.SdNotifyStopping); err != nil {
				log.Warn(err.Error())
			}
			timeout := cfg.ShutdownTimeout.Duration
			if timeout <= 0 {
				timeout = 30 * time.Second
			}
			log.Info("stopping: no new connections; waiting for transactions in progress", "signal", sig.String(), "timeout", timeout.String())
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
				log.Warn(err.Error())
			}
			b.close(log)
			log.Info("stopped")
			return 0
		}
	}
}

// reload re-reads the configuration on SIGHUP: it builds every new chain
// and reloads the certificates first, and swaps the chains only if all of
// that worked; otherwise the running configuration stays. Adding or
// removing listeners, addresses and TLS settings other than the
// certificate files need a restart. Connections in progress finish with the chain they started
// with; the old chains' plugins are closed after shutdown_timeout.
func reload(path string, old *config.Config, cur *built, srv *server.Server, log *slog.Logger, rec *monitor.Recorder, bus *monitor.Bus) *built {
	log.Info("SIGHUP: reloading", "config", path)
	for _, c := range cur.certs {
		if err := c.Reload(); err != nil {
			log.Error("reload: keeping the certificates in use", "err", err)
		}
	}
	cfg, err := config.Load(path)
	var next *built
	if err == nil {
		next, err = build(cfg, log, rec, bus)
	}
	if err != nil {
		log.Error("reload failed: keeping the running configuration", "err", err)
		return cur
	}
	if !sameListeners(cur.chains, next.chains) {
		next.close(log)
		log.Error("reload refused: listeners were added or removed; restart smtpd for that")
		return cur
	}
	if changed := needsRestart(old, cfg); len(changed) > 0 {
		log.Warn("reload: these settings changed but only take effect after a restart", "settings", strings.Join(changed, ", "))
	}
	drained := srv.Reload(next.chains)
	// The server keeps the AUTH limiter it started with (its settings
	// take effect at a restart): the new one's store handle is not used,
	// and the running one's moves on to the new configuration, to be
	// closed at shutdown.
	next.closeAuthStore(log)
	next.server.AuthLimiter, next.authStore, cur.authStore = cur.server.AuthLimiter, cur.authStore, nil
	retired := cur
	go func() {
		<-drained // the connections that started with the old chains are gone
		retired.close(log)
	}()
	next.certs = cur.certs // the running listeners keep their certificate stores
	log.Info("reloaded", "listeners", len(next.chains))
	return next
}

// needsRestart names the settings that differ between two configurations
// and that a reload does not apply: everything but the plugin lists, the
// plugin tables and the hook timeouts.
func needsRestart(a, b *config.Config) []string {
	var out []string
	if a.Hostname != b.Hostname || a.DataDir != b.DataDir || a.LogLevel != b.LogLevel || a.ShutdownTimeout != b.ShutdownTimeout {
		out = append(out, "hostname/data_dir/log_level/shutdown_timeout")
	}
	if a.LogFormat != b.LogFormat || a.ControlSocket != b.ControlSocket || a.Admin != b.Admin {
		out = append(out, "log_format/control_socket/[admin]")
	}
	if a.AuthMaxFailures != b.AuthMaxFailures || a.AuthFailureWindow != b.AuthFailureWindow || a.AuthFailureDelay != b.AuthFailureDelay {
		out = append(out, "auth_*")
	}
	sa, oka := a.StateStore()
	sb, okb := b.StateStore()
	if oka != okb || !reflect.DeepEqual(sa, sb) {
		out = append(out, "[state] for the AUTH failure counts")
	}
	for i := range a.Listeners {
		if i >= len(b.Listeners) {
			break
		}
		la, lb := a.Listeners[i], b.Listeners[i]
		la.Plugins, lb.Plugins = nil, nil
		if !reflect.DeepEqual(la, lb) {
			out = append(out, fmt.Sprintf("listener %q settings", la.Name))
		}
	}
	return out
}
