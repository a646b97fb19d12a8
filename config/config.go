// Package config loads Sluice's TOML configuration: the server settings,
// the listeners with their ordered plugin lists, and one table per plugin
// instance. Every plugin's table stays undecoded until the plugin decodes it
// into its own settings struct, and every key nobody decoded is an error
// that names the file, the line and the key.
package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sluice-mta/sluice/hooks"
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
	// HookTimeout bounds one hook's run through a chain. Default 30s.
	HookTimeout Duration `toml:"hook_timeout"`
	// ShutdownTimeout is how long SIGTERM waits for transactions in
	// progress. Default 30s.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
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
	// Plugins is the chain, in execution order: instance names, each a
	// [plugins.NAME] table or a compiled-in plugin's name.
	Plugins []string `toml:"plugins"`
	// MaxMessageSize caps a message in bytes (exactly this size passes).
	MaxMessageSize int64 `toml:"max_message_size"`
	// MaxRecipients caps the recipients of one message.
	MaxRecipients int `toml:"max_recipients"`
	// MaxHeaderSize caps the header section in bytes.
	MaxHeaderSize int64 `toml:"max_header_size"`
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
	// MaxErrors closes the connection (421) after this many refused or
	// unknown commands; 0 means 20.
	MaxErrors int `toml:"max_errors"`
	// BareNewline is "reject" (default: 554 5.5.2 and close) or
	// "normalize" (bare CR and LF become CRLF) for bare line ends in DATA.
	BareNewline string `toml:"bare_newline"`
}

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
		return nil, c.wrap(err)
	}
	c.md = md
	if err := c.unknownKeys(func(k toml.Key) bool { return len(k) > 0 && k[0] == "plugins" && len(k) > 2 }); err != nil {
		return nil, err
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// Path returns the file the configuration came from.
func (c *Config) Path() string { return c.path }

func (c *Config) check() error {
	if c.DataDir == "" {
		c.DataDir = "./var"
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		c.Hostname = h
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%s: log_level = %q: want debug, info, warn or error", c.path, c.LogLevel)
	}
	if len(c.Listeners) == 0 {
		return fmt.Errorf("%s: no [[listener]]: add one with name, address and plugins", c.path)
	}
	seen := map[string]bool{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		where := fmt.Sprintf("%s: listener %d", c.path, i+1)
		if l.Name == "" {
			return fmt.Errorf("%s: name is missing", where)
		}
		where = fmt.Sprintf("%s: listener %q", c.path, l.Name)
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
		if l.Hostname == "" {
			l.Hostname = c.Hostname
		}
		switch l.BareNewline {
		case "", "reject", "normalize":
		default:
			return fmt.Errorf("%s: bare_newline = %q: want \"reject\" or \"normalize\"", where, l.BareNewline)
		}
		if l.MaxMessageSize < 0 || l.MaxRecipients < 0 || l.MaxHeaderSize < 0 || l.MaxLineLength < 0 {
			return fmt.Errorf("%s: limits must not be negative", where)
		}
	}
	return nil
}

// unknownKeys reports keys the decoder did not use, except those skip
// accepts.
func (c *Config) unknownKeys(skip func(toml.Key) bool) error {
	var msgs []string
	for _, k := range c.md.Undecoded() {
		if skip(k) {
			continue
		}
		msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %q", c.path, c.lineOf(k), k.String()))
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "\n"))
	}
	return nil
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
	headerRe := regexp.MustCompile(`^\s*\[\[?\s*([^\]]+?)\s*\]\]?`)
	current := ""
	for i, line := range strings.Split(c.text, "\n") {
		if m := headerRe.FindStringSubmatch(line); m != nil {
			current = m[1]
			continue
		}
		if keyRe.MatchString(line) && (table == "" || tableMatches(current, table)) {
			return i + 1
		}
	}
	return 0
}

// lineOfTable finds the line of a [table] header. 0 when not found.
func (c *Config) lineOfTable(table string) int {
	re := regexp.MustCompile(`^\s*\[\s*` + regexp.QuoteMeta(table) + `\s*\]`)
	for i, line := range strings.Split(c.text, "\n") {
		if re.MatchString(line) {
			return i + 1
		}
	}
	return 0
}

func tableMatches(header, table string) bool {
	return header == table || strings.HasPrefix(table, header+".") || strings.TrimSuffix(header, ".") == table
}

func (c *Config) wrap(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d: %s", c.path, pe.Position.Line, pe.Message)
	}
	return fmt.Errorf("%s: %w", c.path, err)
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

// Decoder returns the decoder for one instance's table. It rejects keys the
// plugin's settings struct does not have.
func (c *Config) Decoder(instance string) hooks.Decoder {
	return func(v any) error {
		p, ok := c.Plugins[instance]
		if !ok {
			return nil // no table: the plugin's defaults
		}
		if err := c.md.PrimitiveDecode(p, v); err != nil {
			return fmt.Errorf("[plugins.%s]: %w", instance, c.wrap(err))
		}
		return c.unknownKeys(func(k toml.Key) bool {
			mine := len(k) >= 3 && k[0] == "plugins" && k[1] == instance
			return !mine || (len(k) == 3 && k[2] == "use")
		})
	}
}

// Build constructs every plugin instance the listeners name, once each,
// and returns them by instance name. An unknown plugin, a bad setting or an
// unused [plugins.X] table is an error.
func (c *Config) Build() (map[string]any, error) {
	built := map[string]any{}
	for _, l := range c.Listeners {
		for _, name := range l.Plugins {
			if _, done := built[name]; done {
				continue
			}
			pname := c.PluginFor(name)
			reg, ok := hooks.Lookup(pname)
			if !ok {
				return nil, fmt.Errorf("%s: listener %q: unknown plugin %q (`smtpd plugins` lists the compiled-in ones)", c.path, l.Name, pname)
			}
			p, err := reg.New(c.Decoder(name))
			if err != nil {
				return nil, fmt.Errorf("%s: plugin %q: %w", c.path, name, err)
			}
			built[name] = p
		}
	}
	for name := range c.Plugins {
		if _, used := built[name]; !used {
			return nil, fmt.Errorf("%s:%d: [plugins.%s] is not used by any listener: add it to a plugins list or remove it", c.path, c.lineOfTable("plugins."+name), name)
		}
	}
	return built, nil
}

// DecodeString decodes TOML text into v, rejecting unknown keys. Tests and
// hooks/hookstest use it to build a plugin from a snippet.
func DecodeString(text string, v any) error {
	md, err := toml.Decode(text, v)
	if err != nil {
		c := &Config{path: "settings"}
		return c.wrap(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("unknown key %q", und[0].String())
	}
	return nil
}
