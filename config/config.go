// Package config loads Sluice's TOML configuration: the server settings,
// the listeners with their ordered plugin lists, and one table per plugin
// instance. Every plugin's table stays undecoded until the plugin decodes it
// into its own settings struct, and every key nobody decoded is an error
// that names the file, the line and the key.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/qmailctl"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/state"
)

// DefaultPath is where smtpd looks for its configuration without -config.
const DefaultPath = "/etc/sluice/smtpd.toml"

// Config is the whole configuration file.
type Config struct {
	// Hostname is announced in the greeting, EHLO and Received headers;
	// a listener may override it. Default: the machine's host name.
	Hostname string `toml:"hostname"`
	// DataDir holds the spool and, by default, the Maildir. Default "./var".
	DataDir string `toml:"data_dir"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `toml:"log_level"`
	// LogFormat is "text" (default: key=value lines) or "json" (one JSON
	// object a line).
	LogFormat string `toml:"log_format"`
	// ControlSocket is the unix socket `smtpd stats` asks (mode 0600).
	// Default "<data_dir>/smtpd.sock"; "off" makes none. See
	// ControlSocketPath.
	ControlSocket string `toml:"control_socket"`
	// Admin is the [admin] table: the HTTP listener of /metrics and
	// /healthz, off unless its address is set.
	Admin Admin `toml:"admin"`
	// HookTimeout bounds one hook's run through a chain. Default 30s.
	HookTimeout Duration `toml:"hook_timeout"`
	// QueueTimeout bounds the queue hook (the handoff of the whole
	// message). Default 10m, RFC 5321's time for the reply to the final dot.
	QueueTimeout Duration `toml:"queue_timeout"`
	// ShutdownTimeout is how long SIGTERM waits for transactions in
	// progress. Default 30s.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// AuthMaxFailures failed AUTH attempts per client IP or user name
	// within AuthFailureWindow lock it out (535 after AuthFailureDelay, then
	// the connection closes). Defaults 5, "15m", "2s".
	AuthMaxFailures   int      `toml:"auth_max_failures"`
	AuthFailureWindow Duration `toml:"auth_failure_window"`
	AuthFailureDelay  Duration `toml:"auth_failure_delay"`
	// MaxSpooling caps the messages the server receives at once, over
	// every listener: the next DATA or BDAT gets 421 4.7.0 and the
	// connection closes. 0 means 200; -1 turns the cap off.
	MaxSpooling int `toml:"max_spooling"`
	// SpoolMemoryBudget caps the message bodies held in memory, summed
	// over every connection; past it messages spool straight to files.
	// Default "64MB"; -1 means no cap.
	SpoolMemoryBudget Bytes `toml:"spool_memory_budget"`
	// DNS is the [dns] table: the servers and timeout every plugin that
	// looks names up shares (see package resolver). A plugin instance's
	// own [plugins.NAME.dns] table overrides it.
	DNS resolver.Settings `toml:"dns"`
	// Qmail is the [qmail] table: a qmail control directory whose files
	// give defaults (see package qmailctl): me for hostname, smtpgreeting
	// for each listener's greeting, databytes for max_message_size,
	// timeoutsmtpd for read_timeout. A key set in this file wins. The
	// qmailcontrol plugin reads the same directory for its checks.
	Qmail qmailctl.Settings `toml:"qmail"`
	// State is the [state] table: the store the policy plugins keep
	// their state in (greylist triplets, counters), a file under data_dir
	// by default or a Redis server (see package state).
	State state.Settings `toml:"state"`
	// Listeners are the [[listener]] blocks.
	Listeners []Listener `toml:"listener"`
	// Plugins are the [plugins.NAME] tables, decoded by the plugins.
	Plugins map[string]toml.Primitive `toml:"plugins"`

	path string
	md   toml.MetaData
	text string
}

// Listener is one [[listener]] block: an address with its own policy.
type Listener struct {
	Name     string `toml:"name"`
	Address  string `toml:"address"`
	Hostname string `toml:"hostname"`
	// Greeting replaces the text of the 220 greeting after the code
	// (default: the hostname and "ESMTP Sluice ready"); a connect plugin
	// that answers with a message of its own still wins.
	Greeting string `toml:"greeting"`
	// Plugins is the chain, in execution order: instance names, each a
	// [plugins.NAME] table or a compiled-in plugin's name.
	Plugins []string `toml:"plugins"`
	// MaxMessageSize caps a message (exactly this size passes): bytes, or
	// a string with a unit ("25MB"). Default 25MB.
	MaxMessageSize Bytes `toml:"max_message_size"`
	// MaxRecipients caps the recipients of one message.
	MaxRecipients int `toml:"max_recipients"`
	// MaxHeaderSize caps the header section ("1MB" by default).
	MaxHeaderSize Bytes `toml:"max_header_size"`
	// HeaderIndexSize and HeaderIndexFields cap the part of the header
	// parsed into fields that plugins see ("100KB" and 1000 by default):
	// what the server keeps of a header in memory. A longer header is not
	// refused; the rest passes through to the queue verbatim, unparsed.
	HeaderIndexSize   Bytes `toml:"header_index_size"`
	HeaderIndexFields int   `toml:"header_index_fields"`
	// SpoolMemory is how much of a message body stays in memory before it
	// spools to a file under data_dir/spool. Default "256KB".
	SpoolMemory Bytes `toml:"spool_memory"`
	// MaxJunkCommands closes the connection (421) after this many NOOP,
	// VRFY, HELP and RSET without a message in between. Default 100.
	MaxJunkCommands int `toml:"max_junk_commands"`
	// MaxLineLength caps a command line in bytes.
	MaxLineLength int `toml:"max_line_length"`
	// ReadTimeout is how long the server waits for the client's next
	// command or the next piece of a message. Default 5m (RFC 5321 4.5.3.2).
	ReadTimeout Duration `toml:"read_timeout"`
	// WriteTimeout bounds each reply. Default 1m.
	WriteTimeout Duration `toml:"write_timeout"`
	// MaxConnections caps concurrent connections on the listener; 0 means 1000.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerIP caps concurrent connections from one IP; 0 means 20.
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MaxConnectionRatePerIP caps the connections one client (an IPv4
	// address or an IPv6 prefix) may open per ConnectionRateWindow; 0
	// means 120 per "1m", -1 turns the limit off.
	MaxConnectionRatePerIP int      `toml:"max_connection_rate_per_ip"`
	ConnectionRateWindow   Duration `toml:"connection_rate_window"`
	// ConnectionRateExceptions are networks ("192.0.2.0/24", "2001:db8::1")
	// the rate limit leaves alone; unset means loopback, [] nobody.
	ConnectionRateExceptions []string `toml:"connection_rate_exceptions"`
	// IPv6Prefix is how many leading bits of an IPv6 address count as one
	// client for max_connections_per_ip and max_connection_rate_per_ip; 0
	// means 64 (one site's /64).
	IPv6Prefix int `toml:"ipv6_prefix"`
	// GreetingDelay holds the greeting back and marks a client that talks
	// first (connection.EarlyTalker: a plugin decides what it means). Default
	// 0: no delay.
	GreetingDelay Duration `toml:"greeting_delay"`
	// MaxErrors closes the connection (421) after this many refused or
	// unknown commands; 0 means 20.
	MaxErrors int `toml:"max_errors"`
	// BareNewline is "reject" (default: 554 5.5.2 and close) or
	// "normalize" (bare CR and LF become CRLF) for bare line ends in DATA.
	BareNewline string `toml:"bare_newline"`
	// MinDataRate is the slowest a message may arrive, in bytes per
	// second, after MinDataRateGrace. Defaults 500 and "60s"; -1 disables.
	MinDataRate      int64    `toml:"min_data_rate"`
	MinDataRateGrace Duration `toml:"min_data_rate_grace"`

	// TLSCertificates are certificate/key pairs (PEM files); the client's
	// SNI name picks one, the first is the default. Reloaded on SIGHUP.
	TLSCertificates []CertPair `toml:"tls_certificates"`
	// TLSSelfSigned makes a throwaway self-signed certificate at start, for
	// local testing only (clients cannot verify it).
	TLSSelfSigned bool `toml:"tls_self_signed"`
	// TLSMinVersion is "1.2" (default) or "1.3".
	TLSMinVersion string `toml:"tls_min_version"`
	// StartTLS is "offer" (default when a certificate is set), "require"
	// (MAIL refused before STARTTLS with 530 5.7.0; AUTH is never offered
	// in plaintext anyway: 538 5.7.11) or "none".
	StartTLS string `toml:"starttls"`
	// ImplicitTLS serves TLS from the first byte (port 465, "submissions").
	ImplicitTLS bool `toml:"implicit_tls"`
	// RequireAuth refuses MAIL before a successful AUTH (530 5.7.0).
	RequireAuth bool `toml:"require_auth"`
	// AuthPlaintextLoopback allows AUTH without TLS from loopback clients.
	AuthPlaintextLoopback bool `toml:"auth_plaintext_loopback"`
	// ReceivedAuthUser names the authenticated user in Received headers.
	ReceivedAuthUser bool `toml:"received_auth_user"`
	// Trace logs every command of the listener's clients and the code of
	// every reply, at DEBUG whatever log_level says; never AUTH's
	// credentials.
	Trace bool `toml:"trace"`

	// ProxyProtocol makes every connection begin with a PROXY protocol
	// header (v1 or v2, as HAProxy's send-proxy and send-proxy-v2 write
	// it): the client's address and port are taken from it. Connections
	// from outside ProxyNetworks, or without a valid header within
	// ProxyHeaderTimeout (default "5s"), are closed.
	ProxyProtocol      bool     `toml:"proxy_protocol"`
	ProxyNetworks      []string `toml:"proxy_networks"`
	ProxyHeaderTimeout Duration `toml:"proxy_header_timeout"`
	// XClientHosts are the clients (CIDR prefixes or addresses) that may
	// send XCLIENT to speak for another client, its authenticated user
	// included. Empty (default): XCLIENT is never offered.
	XClientHosts []string `toml:"xclient_hosts"`
}

// Networks parses a list of CIDR prefixes ("10.0.0.0/8", "2001:db8::/32")
// and single addresses ("127.0.0.1", a /32 or /128). The error names the
// bad entry.
func Networks(entries []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, e := range entries {
		if p, err := netip.ParsePrefix(e); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is not an IP address or CIDR prefix: want \"10.0.0.0/8\", \"127.0.0.1\" or \"2001:db8::/32\"", e)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Admin is the [admin] table: an HTTP listener for monitoring.
type Admin struct {
	// Address is where it listens ("127.0.0.1:9025"); "" (the default)
	// turns it off. Anything but a loopback address needs Token or User
	// and Password.
	Address string `toml:"address"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" or
	// "?token=TOKEN".
	Token string `toml:"token"`
	// User and Password, when set, are accepted as HTTP basic auth.
	User     string `toml:"user"`
	Password string `toml:"password"`
}

// ControlSocketPath returns the control socket's path, "" when it is off.
func (c *Config) ControlSocketPath() string {
	switch c.ControlSocket {
	case "off":
		return ""
	case "":
		return filepath.Join(c.DataDir, "smtpd.sock")
	}
	return c.ControlSocket
}

// checkAdmin checks the [admin] table.
func (c *Config) checkAdmin() error {
	a := c.Admin
	at := c.at(c.lineOfTable("admin"))
	if (a.User == "") != (a.Password == "") {
		return fmt.Errorf("%s: [admin]: user and password go together: set both, or neither", at)
	}
	if a.Address == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(a.Address)
	if err != nil {
		return fmt.Errorf("%s: [admin] address = %q: want host:port, e.g. \"127.0.0.1:9025\"", at, a.Address)
	}
	ip, _ := netip.ParseAddr(host)
	if !(host == "localhost" || ip.IsLoopback()) && a.Token == "" && a.User == "" {
		return fmt.Errorf("%s: [admin] address = %q is not a loopback address: set token (or user and password) so that only you can read it, or listen on 127.0.0.1", at, a.Address)
	}
	return nil
}

// CertPair is one certificate chain file and its key file.
type CertPair struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// HasTLS reports whether the listener has a certificate.
func (l *Listener) HasTLS() bool { return len(l.TLSCertificates) > 0 || l.TLSSelfSigned }

// Duration is a time.Duration written as a string in the file ("30s").
type Duration struct{ time.Duration }

// UnmarshalText parses "30s", "5m", "1h".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write it like \"30s\" or \"5m\"", string(b))
	}
	d.Duration = v
	return nil
}

// Load reads and checks the file at path. It does not build plugins; see
// Build.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, string(b))
}

// Parse reads a configuration from text; path is used in error messages.
func Parse(path, text string) (*Config, error) {
	c := &Config{path: path, text: text}
	md, err := toml.Decode(text, c)
	if err != nil {
		return nil, c.wrap(err, c, 0)
	}
	c.md = md
	if t := md.Type("plugins"); t != "" && t != "Hash" {
		// The decoder leaves a map it cannot fill empty, without an error.
		return nil, &fileError{path, c.lineOf(toml.Key{"plugins"}), "plugins: expected a table ([plugins.NAME] sections), got " + tableWord(t)}
	}
	if err := c.unknownKeys(func(k toml.Key) bool { return len(k) > 0 && k[0] == "plugins" && len(k) > 2 }); err != nil {
		return nil, err
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// Only keeps the listener named name and the plugin tables its plugins
// use, so that Build builds nothing else: `smtpd stdio` serves one
// connection on one listener's policy. It reports whether the listener
// exists.
func (c *Config) Only(name string) bool {
	for _, l := range c.Listeners {
		if l.Name != name {
			continue
		}
		c.Listeners = []Listener{l}
		for p := range c.Plugins {
			if !slices.Contains(l.Plugins, p) {
				delete(c.Plugins, p)
			}
		}
		return true
	}
	return false
}

// Path returns the file the configuration came from.
func (c *Config) Path() string { return c.path }

func (c *Config) check() error {
	if c.DataDir == "" {
		c.DataDir = "./var"
	}
	if err := c.applyQmail(); err != nil {
		return err
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		c.Hostname = h
	}
	if err := c.DNS.Check(); err != nil {
		return fmt.Errorf("%s: %w", c.at(c.lineOfTable("dns")), err)
	}
	if err := c.State.Check(); err != nil {
		return fmt.Errorf("%s: %w", c.at(c.lineOfTable("state")), err)
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%s: log_level = %q: want debug, info, warn or error", c.at(c.lineOf(toml.Key{"log_level"})), c.LogLevel)
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("%s: log_format = %q: want \"text\" or \"json\"", c.at(c.lineOf(toml.Key{"log_format"})), c.LogFormat)
	}
	if err := c.checkAdmin(); err != nil {
		return err
	}
	if c.MaxSpooling < -1 {
		return fmt.Errorf("%s: max_spooling = %d: want how many messages may be received at once (default 200), or -1 for no cap", c.at(c.lineOf(toml.Key{"max_spooling"})), c.MaxSpooling)
	}
	if c.SpoolMemoryBudget < -1 {
		return fmt.Errorf("%s: spool_memory_budget = %d: want a size (default \"64MB\"), or -1 for no cap", c.at(c.lineOf(toml.Key{"spool_memory_budget"})), c.SpoolMemoryBudget)
	}
	if len(c.Listeners) == 0 {
		return fmt.Errorf("%s: no [[listener]]: add one with name, address and plugins", c.path)
	}
	seen := map[string]bool{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		at := c.at(c.lineOfArrayTable("listener", i))
		where := fmt.Sprintf("%s: listener %d", at, i+1)
		if l.Name == "" {
			return fmt.Errorf("%s: name is missing", where)
		}
		where = fmt.Sprintf("%s: listener %q", at, l.Name)
		if seen[l.Name] {
			return fmt.Errorf("%s: the name is used twice", where)
		}
		seen[l.Name] = true
		if l.Address == "" {
			return fmt.Errorf("%s: address is missing (e.g. \"127.0.0.1:2525\")", where)
		}
		if len(l.Plugins) == 0 {
			return fmt.Errorf("%s: plugins is empty: without a queue plugin no mail can be accepted", where)
		}
		listed := map[string]bool{}
		for _, p := range l.Plugins {
			if listed[p] {
				return fmt.Errorf("%s: plugin %q is listed twice: it would run twice", where, p)
			}
			listed[p] = true
		}
		if l.Hostname == "" {
			l.Hostname = c.Hostname
		}
		switch l.StartTLS {
		case "", "offer", "require", "none":
		default:
			return fmt.Errorf("%s: starttls = %q: want \"offer\", \"require\" or \"none\"", where, l.StartTLS)
		}
		if !l.HasTLS() && (l.StartTLS == "offer" || l.StartTLS == "require" || l.ImplicitTLS) {
			return fmt.Errorf("%s: starttls or implicit_tls needs a certificate: set tls_certificates (or tls_self_signed = true for local testing)", where)
		}
		for _, p := range l.TLSCertificates {
			if p.Cert == "" || p.Key == "" {
				return fmt.Errorf("%s: each tls_certificates entry needs cert and key", where)
			}
		}
		switch l.BareNewline {
		case "", "reject", "normalize":
		default:
			return fmt.Errorf("%s: bare_newline = %q: want \"reject\" or \"normalize\"", where, l.BareNewline)
		}
		if _, err := Networks(l.ProxyNetworks); err != nil {
			return fmt.Errorf("%s: proxy_networks: %w", where, err)
		}
		if l.ProxyProtocol && len(l.ProxyNetworks) == 0 {
			return fmt.Errorf("%s: proxy_protocol = true needs proxy_networks: the addresses of the proxies (HAProxy) allowed to connect, e.g. [\"127.0.0.1/32\", \"10.0.0.0/8\"]", where)
		}
		if !l.ProxyProtocol && len(l.ProxyNetworks) > 0 {
			return fmt.Errorf("%s: proxy_networks is set but proxy_protocol is not: set proxy_protocol = true or remove proxy_networks", where)
		}
		if d := l.ProxyHeaderTimeout.Duration; d < 0 || d > time.Minute {
			return fmt.Errorf("%s: proxy_header_timeout = %q: want a duration from \"1s\" to \"1m\" (default \"5s\")", where, d)
		}
		if _, err := Networks(l.XClientHosts); err != nil {
			return fmt.Errorf("%s: xclient_hosts: %w", where, err)
		}
		if l.IPv6Prefix < 0 || l.IPv6Prefix > 128 {
			return fmt.Errorf("%s: ipv6_prefix = %d: want a prefix length from 1 to 128 (default 64)", where, l.IPv6Prefix)
		}
		if l.MaxConnectionRatePerIP < -1 {
			return fmt.Errorf("%s: max_connection_rate_per_ip = %d: want connections per connection_rate_window (default 120), or -1 for no limit", where, l.MaxConnectionRatePerIP)
		}
		if l.ConnectionRateWindow.Duration < 0 || l.ConnectionRateWindow.Duration > 24*time.Hour {
			return fmt.Errorf("%s: connection_rate_window = %q: want a duration from \"1s\" to \"24h\" (default \"1m\")", where, l.ConnectionRateWindow.Duration)
		}
		for _, n := range l.ConnectionRateExceptions {
			if _, err := ParsePrefix(n); err != nil {
				return fmt.Errorf("%s: connection_rate_exceptions: %w", where, err)
			}
		}
		if l.GreetingDelay.Duration < 0 || l.GreetingDelay.Duration > 5*time.Minute {
			return fmt.Errorf("%s: greeting_delay = %q: want a duration from \"0s\" to \"5m\" (qpsmtpd's earlytalker waits 1 to 5 seconds)", where, l.GreetingDelay.Duration)
		}
		if l.MaxMessageSize < 0 || l.MaxRecipients < 0 || l.MaxHeaderSize < 0 || l.HeaderIndexSize < 0 || l.HeaderIndexFields < 0 || l.MaxLineLength < 0 ||
			l.SpoolMemory < 0 || l.MaxJunkCommands < 0 || l.MaxErrors < 0 || l.MaxConnections < 0 || l.MaxConnectionsPerIP < 0 {
			return fmt.Errorf("%s: limits must not be negative", where)
		}
	}
	return nil
}

// ParsePrefix reads a network ("192.0.2.0/24") or one address ("::1", a
// network of one) as connection_rate_exceptions lists them.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a network: want an address or address/bits, e.g. \"192.0.2.0/24\"", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address: want an address or address/bits, e.g. \"192.0.2.0/24\"", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// fileError is an error that names the file and the line.
type fileError struct {
	path string
	line int
	msg  string
}

func (e *fileError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.path, e.line, e.msg)
	}
	return fmt.Sprintf("%s: %s", e.path, e.msg)
}

// at is "path:line", or the path alone when the line is unknown (0).
func (c *Config) at(line int) string {
	if line > 0 {
		return fmt.Sprintf("%s:%d", c.path, line)
	}
	return c.path
}

// unknownKeys reports keys the decoder did not use, except those skip
// accepts: one error per key, or one per table when a whole table is
// unknown.
func (c *Config) unknownKeys(skip func(toml.Key) bool) error {
	var errs []error
	var tables []string
	for _, k := range c.md.Undecoded() {
		if skip(k) {
			continue
		}
		name := k.String()
		if slicesContainsPrefix(tables, name) {
			continue // inside a table already reported
		}
		if t := c.md.Type(k...); t == "Hash" || t == "ArrayHash" {
			tables = append(tables, name)
			if line := c.lineOfTable(name); line > 0 {
				errs = append(errs, &fileError{c.path, line, fmt.Sprintf("unknown table [%s]", name)})
				continue
			}
		}
		errs = append(errs, &fileError{c.path, c.lineOf(k), fmt.Sprintf("unknown key %q", name)})
	}
	return errors.Join(errs...)
}

func slicesContainsPrefix(tables []string, key string) bool {
	for _, t := range tables {
		if strings.HasPrefix(key, t+".") {
			return true
		}
	}
	return false
}

// lineOf finds the line that defines key (the decoder does not report
// positions for keys it did not use). 0 when not found.
func (c *Config) lineOf(k toml.Key) int {
	if len(k) == 0 {
		return 0
	}
	last := regexp.QuoteMeta(k[len(k)-1])
	table := ""
	if len(k) > 1 {
		table = strings.Join(k[:len(k)-1], ".")
	}
	keyRe := regexp.MustCompile(`^\s*"?` + last + `"?\s*=`)
	current := ""
	for i, line := range strings.Split(c.text, "\n") {
		if m := headerRe.FindStringSubmatch(line); m != nil {
			current = m[1]
			continue
		}
		if !keyRe.MatchString(line) {
			continue
		}
		// A top-level key comes before the first table header.
		if (table == "" && current == "") || (table != "" && tableMatches(current, table)) {
			return i + 1
		}
	}
	return 0
}

var headerRe = regexp.MustCompile(`^\s*\[\[?\s*([^\]]+?)\s*\]\]?`)

// lineOfTable finds the line of a [table] or [[table]] header. 0 when not
// found.
func (c *Config) lineOfTable(table string) int {
	return c.lineOfArrayTable(table, 0)
}

// lineOfArrayTable finds the line of the n-th (from 0) header of table. 0
// when not found.
func (c *Config) lineOfArrayTable(table string, n int) int {
	re := regexp.MustCompile(`^\s*\[\[?\s*` + regexp.QuoteMeta(table) + `\s*\]`)
	for i, line := range strings.Split(c.text, "\n") {
		if re.MatchString(line) {
			if n == 0 {
				return i + 1
			}
			n--
		}
	}
	return 0
}

func tableMatches(header, table string) bool {
	return header == table || strings.HasPrefix(table, header+".") || strings.TrimSuffix(header, ".") == table
}

// decodeErrRe matches the errors the TOML decoder returns for a value of
// the wrong type, which carry their position only in their text.
var decodeErrRe = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)

// wrap turns a TOML error into "path:line: key: message". dst is the
// value being decoded, the root of the keys after their first skip parts
// (["plugins", NAME] for a plugin's table): a value of the wrong type is
// then reported as what dst expects there ("expected a list of strings,
// got a string"), not in Go's terms.
func (c *Config) wrap(err error, dst any, skip int) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.LastKey != "" && pe.Position.Line == c.lineOfKeyString(pe.LastKey) {
			msg = pe.LastKey + ": " + msg
		}
		return &fileError{c.path, pe.Position.Line, msg}
	}
	if m := decodeErrRe.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &fileError{c.path, line, m[2] + ": " + plainType(m[3], m[2], dst, skip)}
	}
	return fmt.Errorf("%s: %w", c.path, err)
}

// lineOfKeyString is lineOf for a dotted key as the decoder reports it.
func (c *Config) lineOfKeyString(key string) int {
	return c.lineOf(toml.Key(strings.Split(key, ".")))
}

// PluginFor returns the compiled-in plugin name behind an instance name:
// the table's use = "..." when it has one, else the instance name itself.
func (c *Config) PluginFor(instance string) string {
	if p, ok := c.Plugins[instance]; ok {
		var u struct {
			Use string `toml:"use"`
		}
		c.md.PrimitiveDecode(p, &u)
		if u.Use != "" {
			return u.Use
		}
	}
	return instance
}

// Enforces reports whether an instance's refusals apply: true unless its
// table says enforce = false (observe-only: the chain logs and notes what
// the plugin would have refused, and goes on).
func (c *Config) Enforces(instance string) bool {
	b, isBool := c.enforce(instance).(bool)
	return !isBool || b
}

// checkEnforce reports an enforce key that is not a boolean.
func (c *Config) checkEnforce(instance string) error {
	v := c.enforce(instance)
	if _, isBool := v.(bool); v != nil && !isBool {
		return fmt.Errorf("%s: [plugins.%s] enforce = %v: must be true or false (false runs the plugin observe-only: it logs what it would refuse)",
			c.at(c.lineOfKeyString("plugins."+instance+".enforce")), instance, v)
	}
	return nil
}

// enforce returns the value of an instance's enforce key, nil when it has
// none.
func (c *Config) enforce(instance string) any {
	p, ok := c.Plugins[instance]
	if !ok {
		return nil
	}
	var e struct {
		Enforce any `toml:"enforce"`
	}
	c.md.PrimitiveDecode(p, &e)
	return e.Enforce
}

// Decoder returns the decoder for one instance's table. It rejects keys the
// plugin's settings struct does not have.
func (c *Config) Decoder(instance string) hooks.Decoder {
	return func(v any) error {
		c.setShared(v)
		p, ok := c.Plugins[instance]
		if !ok {
			return nil // no table: the plugin's defaults
		}
		if err := c.md.PrimitiveDecode(p, v); err != nil {
			return c.wrap(err, v, 2)
		}
		return c.unknownIn(instance)
	}
}

// applyQmail reads the [qmail] control directory, when there is one, and
// takes its files as defaults for what this file leaves unset.
func (c *Config) applyQmail() error {
	if c.Qmail.ControlDir == "" {
		return nil
	}
	q, err := qmailctl.ReadServer(c.Qmail.ControlDir)
	if err != nil {
		return fmt.Errorf("%s: [qmail]: %w", c.at(c.lineOfTable("qmail")), err)
	}
	if c.Hostname == "" {
		c.Hostname = q.Me
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Greeting == "" && q.SMTPGreeting != "" {
			l.Greeting = q.SMTPGreeting + " ESMTP"
		}
		if l.MaxMessageSize == 0 && q.Databytes > 0 {
			l.MaxMessageSize = Bytes(q.Databytes)
		}
		if l.ReadTimeout.Duration == 0 && q.TimeoutSMTPD > 0 {
			l.ReadTimeout.Duration = q.TimeoutSMTPD
		}
	}
	return nil
}

// StateStore returns the [state] table's settings, with data_dir, and
// whether the file has a [state] table at all. The server keeps its own
// state (the AUTH failure counts) in the store only when it has one, so
// that a configuration that uses no state creates no file.
func (c *Config) StateStore() (state.Settings, bool) {
	st := c.State
	st.Addrs = slices.Clone(st.Addrs)
	st.DataDir = c.DataDir
	return st, c.md.IsDefined("state")
}

// setShared sets the fields of the struct v points to (a plugin's
// settings) that have the type of a shared table, [dns] (resolver.Settings),
// [state] (state.Settings, with data_dir) or [qmail] (qmailctl.Settings,
// usually embedded), to that table's
// values, before the plugin's own table, which may override them, is
// decoded.
func (c *Config) setShared(v any) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return
	}
	rv = rv.Elem()
	for i := range rv.NumField() {
		f := rv.Field(i)
		if !f.CanSet() {
			continue
		}
		switch f.Type() {
		case reflect.TypeFor[resolver.Settings]():
			dns := c.DNS
			dns.Servers = slices.Clone(dns.Servers)
			f.Set(reflect.ValueOf(dns))
		case reflect.TypeFor[state.Settings]():
			st := c.State
			st.Addrs = slices.Clone(st.Addrs)
			st.DataDir = c.DataDir
			f.Set(reflect.ValueOf(st))
		case reflect.TypeFor[qmailctl.Settings]():
			if c.Qmail.ControlDir != "" {
				f.Set(reflect.ValueOf(c.Qmail))
			}
		}
	}
}

// unknownIn reports the keys of instance's table that were not decoded.
func (c *Config) unknownIn(instance string) error {
	return c.unknownKeys(func(k toml.Key) bool {
		mine := len(k) >= 3 && k[0] == "plugins" && k[1] == instance
		return !mine || (len(k) == 3 && (k[2] == "use" || k[2] == "enforce"))
	})
}

// Build constructs every plugin instance the listeners name, once each,
// and the queue instances their routes name (hooks.Router), and returns
// them by instance name. An unknown plugin, a bad setting, a bad route or
// an unused [plugins.X] table is an error; then the instances already
// built are closed (those that are io.Closers), so a failed reload leaks
// nothing.
func (c *Config) Build() (map[string]any, error) {
	built := map[string]any{}
	complete := false
	defer func() {
		if !complete {
			for _, p := range built {
				if cl, ok := p.(io.Closer); ok {
					cl.Close()
				}
			}
		}
	}()
	for i, l := range c.Listeners {
		for _, name := range l.Plugins {
			if _, done := built[name]; done {
				continue
			}
			where := func() string { return fmt.Sprintf("%s: listener %q", c.at(c.lineOfArrayTable("listener", i)), l.Name) }
			if err := c.buildOne(built, name, fmt.Sprintf("listener %q", l.Name), where); err != nil {
				return nil, err
			}
		}
	}
	if err := c.buildRoutes(built); err != nil {
		return nil, err
	}
	unused := []string{}
	for name := range c.Plugins {
		if _, ok := built[name]; !ok {
			unused = append(unused, name)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		name := unused[0]
		return nil, fmt.Errorf("%s: [plugins.%s] is not used by any listener: add it to a plugins list or remove it", c.at(c.lineOfTable("plugins."+name)), name)
	}
	complete = true
	return built, nil
}

// buildOne constructs the instance name into built. user says who asked
// for it ("listener \"mx\"", "the fallback_queue of \"lmtp\""); where
// locates that request for an unknown plugin's error.
func (c *Config) buildOne(built map[string]any, name, user string, where func() string) error {
	if err := c.checkEnforce(name); err != nil {
		return err
	}
	pname := c.PluginFor(name)
	reg, ok := hooks.Lookup(pname)
	if !ok {
		if pname != name {
			return fmt.Errorf("%s: [plugins.%s] (%s): use = %q: unknown plugin %q (`smtpd plugins` lists the compiled-in ones)",
				c.at(c.lineOfTable("plugins."+name)), name, user, pname, pname)
		}
		return fmt.Errorf("%s: unknown plugin %q (`smtpd plugins` lists the compiled-in ones)", where(), pname)
	}
	p, err := reg.New(c.Decoder(name))
	if err == nil {
		built[name] = p
		// Keys a plugin that never called decode left behind.
		err = c.unknownIn(name)
	}
	if err != nil {
		var fe *fileError
		switch {
		case errors.As(err, &fe) && strings.HasPrefix(err.Error(), c.path+":"):
			return err // names the file, the line and the key
		case errors.As(err, &fe):
			return fmt.Errorf("plugin %q: %w", name, err)
		}
		return fmt.Errorf("%s: plugin %q: %w", c.at(c.lineOfTable("plugins."+name)), name, err)
	}
	return nil
}

// buildRoutes builds the queue instances the routers among built name
// (hooks.Router) and hands them over. A route must be a queue plugin and
// no router itself, so that routes cannot loop.
func (c *Config) buildRoutes(built map[string]any) error {
	var routers []string
	for name, p := range built {
		if _, ok := p.(hooks.Router); ok {
			routers = append(routers, name)
		}
	}
	sort.Strings(routers)
	for _, name := range routers {
		r := built[name].(hooks.Router)
		at := c.at(c.lineOfTable("plugins." + name))
		routes := map[string]hooks.Queue{}
		for _, to := range r.Routes() {
			if to == name {
				return fmt.Errorf("%s: plugin %q routes messages to itself: name another queue plugin instance", at, name)
			}
			if _, ok := built[to]; !ok {
				if err := c.buildOne(built, to, fmt.Sprintf("a route of %q", name), func() string { return fmt.Sprintf("%s: plugin %q: a route", at, name) }); err != nil {
					return err
				}
			}
			q, ok := built[to].(hooks.Queue)
			if !ok {
				return fmt.Errorf("%s: plugin %q routes messages to %q, which is no queue plugin (maildir, qmailqueue, smtpforward, lmtp are)", at, name, to)
			}
			if others := otherHooks(built[to]); others != "" {
				return fmt.Errorf("%s: plugin %q routes messages to %q, which needs its %s hooks: a route runs only its queue hook (name a maildir, qmailqueue, smtpforward or lmtp instance)", at, name, to, others)
			}
			if _, ok := built[to].(hooks.Router); ok && len(built[to].(hooks.Router).Routes()) > 0 {
				return fmt.Errorf("%s: plugin %q routes messages to %q, which has routes of its own: a route must end somewhere (name a queue instance without fallback_queue or dsn_queue)", at, name, to)
			}
			routes[to] = q
		}
		if err := r.SetRoutes(routes); err != nil {
			return fmt.Errorf("%s: plugin %q: %w", at, name, err)
		}
	}
	return nil
}

// otherHooks names, comma-separated, the hooks p implements besides
// queue, which never run for a route: a route is called at its queue
// hook alone, so a plugin that keeps state from MAIL to the disconnect
// (smtpproxy's downstream session) would leak it.
func otherHooks(p any) string {
	var names []string
	for _, h := range hooks.HooksOf(p) {
		if h != hooks.HookQueue {
			names = append(names, h.String())
		}
	}
	return strings.Join(names, ", ")
}

// DecodeString decodes TOML text into v, rejecting unknown keys. Tests and
// hooks/hookstest use it to build a plugin from a snippet.
func DecodeString(text string, v any) error {
	c := &Config{path: "settings", text: text}
	md, err := toml.Decode(text, v)
	if err != nil {
		return c.wrap(err, v, 0)
	}
	c.md = md
	return c.unknownKeys(func(toml.Key) bool { return false })
}
