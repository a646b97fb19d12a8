package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"github.com/sluice-mta/sluice/policyd/wire"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/policyd"
	"github.com/sluice-mta/sluice/server"
)

// DefaultPolicyAddress is where `smtpd policy` listens when -address is
// not given: loopback only.
const DefaultPolicyAddress = "127.0.0.1:10040"

// policy serves Postfix's SMTP access policy delegation protocol with a
// listener's plugin chain (see docs/policy.md), or with -test sends one
// request and prints the action.
func policy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration `FILE`")
	name := fs.String("listener", "", "run the plugin chain of listener `NAME` (default: the first)")
	address := fs.String("address", DefaultPolicyAddress, "listen on (or with -test, ask) `ADDR`: host:port or unix:/path")
	test := fs.Bool("test", false, "send one request (name=value arguments over the defaults) and print the action; exit 0 for DUNNO or OK, 1 for a refusal, 2 for a failure")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: smtpd policy [-config FILE] [-listener NAME] [-address ADDR]
       smtpd policy -test [-address ADDR] [name=value ...]

Serves Postfix's policy delegation protocol (check_policy_service) with a
listener's plugin chain; -test asks a policy service as Postfix would.

flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, "", stderr); !ok {
		return code
	}
	if *test {
		return policyTest(*address, fs.Args(), stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "smtpd policy: unexpected argument %q (name=value arguments go with -test)\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "smtpd policy: %v\n", err)
		return 1
	}
	cfg, listener, err := loadListener(*path, *name)
	if err != nil {
		return fail(err)
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	b, err := build(cfg, log, nil, nil)
	if err != nil {
		return fail(err)
	}
	defer b.close(log)
	var lc server.ListenerConfig
	for _, l := range b.server.Listeners {
		if l.Name == listener {
			lc = l
		}
	}
	log = log.With("listener", listener)
	warnUnfed(cfg, listener, b.plugins, log)
	srv := &policyd.Server{
		Checker: &policyd.Checker{
			Listener: lc.Name, Hostname: lc.Hostname,
			Session: server.SessionConfig{Chain: lc.Chain, Limits: lc.Limits, SpoolDir: b.server.SpoolDir, Logger: log},
		},
		Logger:         log,
		MaxConnections: lc.MaxConnections,
	}
	if err := srv.Listen(*address); err != nil {
		return fail(err)
	}
	log.Info("Sluice policy service started", "version", Version, "config", *path)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	select {
	case err := <-done:
		if err != nil {
			return fail(err)
		}
		return 0
	case sig := <-sigs:
		timeout := cfg.ShutdownTimeout.Duration
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		log.Info("stopping: no new connections; answering the requests in progress", "signal", sig.String())
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn(err.Error())
		}
		log.Info("stopped")
		return 0
	}
}

// warnUnfed names, once at start, the plugins of the chain with hooks a
// policy request cannot feed: those hooks never run in policy mode.
func warnUnfed(cfg *config.Config, listener string, plugins map[string]any, log *slog.Logger) {
	var parts []string
	for _, l := range cfg.Listeners {
		if l.Name != listener {
			continue
		}
		for _, name := range l.Plugins {
			unfed := policyd.Unfed(plugins[name])
			if len(unfed) == 0 {
				continue
			}
			hs := make([]string, len(unfed))
			for i, h := range unfed {
				hs[i] = h.String()
			}
			parts = append(parts, name+" ("+strings.Join(hs, ", ")+")")
		}
	}
	if len(parts) > 0 {
		log.Warn("these plugins' hooks cannot run in policy mode (the policy protocol carries no message); they are skipped",
			"plugins", strings.Join(parts, "; "))
	}
}

// policyTestDefaults are the attributes `smtpd policy -test` sends unless
// an argument overrides them: a RCPT request as Postfix 3 sends it.
var policyTestDefaults = wire.Request{
	"request":             "smtpd_access_policy",
	"protocol_state":      "RCPT",
	"protocol_name":       "ESMTP",
	"client_address":      "127.0.0.1",
	"client_name":         "localhost",
	"client_port":         "54321",
	"reverse_client_name": "localhost",
	"server_address":      "127.0.0.1",
	"server_port":         "25",
	"helo_name":           "localhost",
	"sender":              "postmaster@localhost",
	"recipient":           "postmaster@localhost",
	"recipient_count":     "0",
	"queue_id":            "",
	"size":                "0",
	"etrn_domain":         "",
	"stress":              "",
	"sasl_method":         "",
	"sasl_username":       "",
	"sasl_sender":         "",
	"ccert_subject":       "",
	"ccert_issuer":        "",
	"ccert_fingerprint":   "",
	"encryption_protocol": "",
	"encryption_cipher":   "",
	"encryption_keysize":  "0",
	"policy_context":      "",
	"compatibility_level": "3.6",
	"mail_version":        "3.7.11",
}

// policyTest sends one request to the policy service at address and
// prints its action: exit 0 for an action that lets the mail through
// (DUNNO, OK, ...), 1 for a refusal, 2 when there is no answer.
func policyTest(address string, args []string, stdout, stderr io.Writer) int {
	req := maps.Clone(policyTestDefaults)
	var id [6]byte
	rand.Read(id[:])
	req["instance"] = "sluice-test." + hex.EncodeToString(id[:])
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			fmt.Fprintf(stderr, "smtpd policy -test: %q is not name=value (for example recipient=bob@example.org)\n", a)
			return 2
		}
		req[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	action, err := wire.Query(ctx, address, req)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd policy -test: %v\n", err)
		return 2
	}
	fmt.Fprintf(stdout, "action=%s\n", action)
	if wire.Refusal(action) {
		return 1
	}
	return 0
}
