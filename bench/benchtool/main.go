// Command benchtool is the Go half of `make bench` (bench/run.sh drives it).
// Every network subcommand talks only to a loopback address and stops after
// a bounded number of messages or connections and a time limit.
//
//	benchtool lat    -addr 127.0.0.1:P -n N -c S -size B [-per-conn K] [-timeout D]
//	                 closed-loop SMTP client: per-message latency percentiles
//	benchtool watch  -sid SID -stop FILE [-max D]
//	                 peak RSS (and PSS) summed over the processes of a session
//	benchtool cpu    -sid SID      CPU seconds used by a session's processes
//	benchtool pids   -sid SID      the pids of a session, one per line
//	benchtool idle   -addr A -pid P -n N
//	                 N idle connections, the server's RSS, then how long the N+1st waits for 220
//	benchtool big    -addr A -pid P -size B
//	                 one message of B bytes; the server's RSS growth while it arrives
//	benchtool report -tsv FILE     the comparison table with ratios and the targets
//	benchtool dns    -addr 127.0.0.1:P [-max D]
//	                 a DNS server answering NXDOMAIN to every name (the policy chain's block lists)
//
// Output is one line of key=value pairs (report prints tables).
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"lat": cmdLat, "watch": cmdWatch, "cpu": cmdCPU, "pids": cmdPids,
		"idle": cmdIdle, "big": cmdBig, "report": cmdReport, "dns": cmdDNS,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchtool lat|watch|cpu|pids|idle|big|report|dns [flags] (see the package comment)")
	os.Exit(2)
}

// loopbackOnly refuses any address that is not on this machine's loopback.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing %q: benchtool only talks to loopback addresses", addr)
	}
	return nil
}
