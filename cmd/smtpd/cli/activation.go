package cli

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sluice-mta/sluice/server"
)

// inherit gives each listener of cfg the socket systemd passed for it
// (socket activation: the LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES
// variables of sd_listen_fds(3)), and reports how many it gave. A socket
// is a listener's when its name (the socket unit's FileDescriptorName=)
// is the listener's name, or else when its local address is the
// listener's address (the same port, and the same IP or both unspecified:
// ":25", "0.0.0.0:25" and "[::]:25" are one). A listener with no socket
// binds its address as without systemd. A passed socket that is no
// listener's, or a second one for a listener, is an error naming it; on
// error every passed socket is closed.
func inherit(cfg *server.Config) (int, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return 0, nil
	}
	var lns []net.Listener
	fail := func(err error) (int, error) {
		for _, ln := range lns {
			ln.Close()
		}
		for _, f := range files {
			f.Close()
		}
		return 0, err
	}
	for _, f := range files {
		ln, err := net.FileListener(f)
		if err != nil {
			return fail(fmt.Errorf("socket activation: passed descriptor %d (%q) is not a listening stream socket: %w (use ListenStream= in the socket unit)", f.Fd(), f.Name(), err))
		}
		f.Close()
		files = files[1:]
		lns = append(lns, ln)
		i := listenerFor(cfg.Listeners, f.Name(), ln.Addr())
		if i < 0 {
			return fail(fmt.Errorf("socket activation: the passed socket %q on %s matches no [[listener]] by name or address (listeners: %s); name a listener in the socket unit's FileDescriptorName= or give it this address",
				f.Name(), ln.Addr(), listenerNames(cfg.Listeners)))
		}
		lc := &cfg.Listeners[i]
		if lc.Listener != nil {
			return fail(fmt.Errorf("socket activation: listener %q got two passed sockets, %s and %s; give it one (ListenStream=25 takes IPv4 and IPv6 in one socket)",
				lc.Name, lc.Listener.Addr(), ln.Addr()))
		}
		lc.Listener = ln
	}
	return len(lns), nil
}

// listenerFor returns the index of the listener a passed socket named name
// on addr belongs to, or -1: by name first, then by address.
func listenerFor(ls []server.ListenerConfig, name string, addr net.Addr) int {
	for i, l := range ls {
		if l.Name == name {
			return i
		}
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return -1
	}
	sock := ta.AddrPort()
	for i, l := range ls {
		if sameAddress(l.Address, sock) {
			return i
		}
	}
	return -1
}

// sameAddress reports whether a configured "host:port" is the socket's
// address: the same port, and the same IP or both unspecified.
func sameAddress(configured string, sock netip.AddrPort) bool {
	host, port, err := net.SplitHostPort(configured)
	if err != nil {
		return false
	}
	p, err := net.LookupPort("tcp", port) // a number, or a name in /etc/services
	if err != nil || uint16(p) != sock.Port() {
		return false
	}
	sockIP := sock.Addr().Unmap()
	if host == "" {
		return sockIP.IsUnspecified()
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false // a host name: match by FileDescriptorName= instead
	}
	ip = ip.Unmap()
	return ip == sockIP || ip.IsUnspecified() && sockIP.IsUnspecified()
}

func listenerNames(ls []server.ListenerConfig) string {
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = fmt.Sprintf("%q on %s", l.Name, l.Address)
	}
	return strings.Join(names, ", ")
}

// notify tells systemd (Type=notify) the service's state: READY=1,
// RELOADING=1, STOPPING=1. Without NOTIFY_SOCKET (not under systemd) it
// does nothing; a failure to tell is logged by the caller.
func notify(state string) error {
	_, err := daemon.SdNotify(false, state)
	if err != nil {
		return fmt.Errorf("telling systemd %s: %w", strings.SplitN(state, "\n", 2)[0], err)
	}
	return nil
}
