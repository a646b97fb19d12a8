package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the /debug/pprof/ handlers on http.DefaultServeMux
	"os"
)

// With SLUICE_PPROF=127.0.0.1:6060 in the environment, smtpd serves Go's
// profiler on that loopback address (for `go tool pprof
// http://127.0.0.1:6060/debug/pprof/profile?seconds=10`, see
// docs/performance.md). Only loopback addresses are accepted: the
// profiler shows memory contents and must never face the network.
func init() {
	addr := os.Getenv("SLUICE_PPROF")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(os.Stderr, "smtpd: SLUICE_PPROF=%q: want a loopback address and port, e.g. 127.0.0.1:6060\n", addr)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "smtpd: SLUICE_PPROF: %v\n", err)
		os.Exit(2)
	}
	go http.Serve(ln, nil)
}
