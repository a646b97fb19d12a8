package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/miekg/dns"
)

// cmdDNS serves DNS on a loopback address for the policy chain's row:
// every name is NXDOMAIN (no client of the benchmark is on a block list),
// over UDP and TCP, until -max has passed.
func cmdDNS(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:2953", "where to listen (loopback only)")
	maxd := fs.Duration("max", time.Hour, "stop after this long")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
	})
	errs := make(chan error, 2)
	servers := []*dns.Server{{Addr: *addr, Net: "udp", Handler: handler}, {Addr: *addr, Net: "tcp", Handler: handler}}
	for _, s := range servers {
		go func() { errs <- s.ListenAndServe() }()
	}
	fmt.Printf("dns=%s\n", *addr)
	select {
	case err := <-errs:
		return err
	case <-time.After(*maxd):
	}
	for _, s := range servers {
		s.Shutdown()
	}
	return nil
}
