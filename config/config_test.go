package config_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/config"
	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/resolver"
	"github.com/sluice-mta/sluice/transaction"
)

// testPlugin is a tiny plugin with a few typed settings.
type testPlugin struct {
	Zones   []string `toml:"zones"`
	Reject  bool     `toml:"reject"`
	Timeout int      `toml:"timeout"`
}

func (*testPlugin) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Result{}
}

// lazyPlugin never decodes its table.
type lazyPlugin struct{}

func (*lazyPlugin) Noop(context.Context, *connection.Connection) hooks.Result { return hooks.Result{} }

// closerPlugin counts the instances built and closed.
type closerPlugin struct{}

var closerOpen atomic.Int32

func (*closerPlugin) Noop(context.Context, *connection.Connection) hooks.Result {
	return hooks.Result{}
}
func (*closerPlugin) Close() error { closerOpen.Add(-1); return nil }

func init() {
	hooks.Register("configtestcloser", func(decode hooks.Decoder) (*closerPlugin, error) {
		var cfg struct{}
		if err := decode(&cfg); err != nil {
			return nil, err
		}
		closerOpen.Add(1)
		return &closerPlugin{}, nil
	})
	hooks.Register("configtestplugin", func(decode hooks.Decoder) (*testPlugin, error) {
		p := &testPlugin{Timeout: 5}
		if err := decode(p); err != nil {
			return nil, err
		}
		if p.Timeout <= 0 {
			return nil, errors.New("timeout: must be positive")
		}
		return p, nil
	})
	hooks.Register("configtestlazy", func(hooks.Decoder) (*lazyPlugin, error) { return &lazyPlugin{}, nil })
}

const valid = `# Sluice test configuration
hostname = "mx.example.test"
data_dir = "/var/lib/sluice"
log_level = "debug"
hook_timeout = "10s"

[[listener]]
name    = "mx"
address = "127.0.0.1:2525"
plugins = ["strict", "configtestplugin"]
max_message_size = 1048576
read_timeout = "2m"

[[listener]]
name     = "submission"
address  = "127.0.0.1:2587"
hostname = "smtp.example.test"
plugins  = ["lenient", "configtestplugin"]

[plugins.strict]
use    = "configtestplugin"
zones  = ["zen.example.net", "bl.example.org"]
reject = true

[plugins.lenient]
use     = "configtestplugin"
zones   = ["zen.example.net"]
timeout = 30
`

func TestHeaderLimits(t *testing.T) {
	c := parse(t, "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"+
		"max_header_size = \"2MB\"\nheader_index_size = \"64KB\"\nheader_index_fields = 200\n")
	if l := c.Listeners[0]; l.MaxHeaderSize != 2<<20 || l.HeaderIndexSize != 64<<10 || l.HeaderIndexFields != 200 {
		t.Fatalf("max_header_size %d, header_index_size %d, header_index_fields %d", l.MaxHeaderSize, l.HeaderIndexSize, l.HeaderIndexFields)
	}
	// Unset, they are 0: the server's defaults (transaction.HeaderLimits).
	c = parse(t, "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n")
	if l := c.Listeners[0]; l.HeaderIndexSize != 0 || l.HeaderIndexFields != 0 {
		t.Fatalf("unset: header_index_size %d, header_index_fields %d", l.HeaderIndexSize, l.HeaderIndexFields)
	}
}

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Parse("smtpd.toml", text)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestValidConfig(t *testing.T) {
	c := parse(t, valid)
	if c.Hostname != "mx.example.test" || c.DataDir != "/var/lib/sluice" || c.LogLevel != "debug" || c.HookTimeout.Duration != 10*time.Second {
		t.Fatalf("top level: %+v", c)
	}
	if len(c.Listeners) != 2 {
		t.Fatalf("listeners: %d", len(c.Listeners))
	}
	mx, sub := c.Listeners[0], c.Listeners[1]
	if mx.Name != "mx" || mx.Address != "127.0.0.1:2525" || mx.MaxMessageSize != 1<<20 || mx.ReadTimeout.Duration != 2*time.Minute {
		t.Fatalf("mx: %+v", mx)
	}
	if !slices.Equal(mx.Plugins, []string{"strict", "configtestplugin"}) {
		t.Fatalf("mx plugins (config order): %v", mx.Plugins)
	}
	if mx.Hostname != "mx.example.test" || sub.Hostname != "smtp.example.test" {
		t.Fatalf("hostnames: mx %q (inherits), submission %q (own)", mx.Hostname, sub.Hostname)
	}
	for inst, want := range map[string]string{"strict": "configtestplugin", "lenient": "configtestplugin", "configtestplugin": "configtestplugin"} {
		if got := c.PluginFor(inst); got != want {
			t.Errorf("PluginFor(%q) = %q, want %q", inst, got, want)
		}
	}
	built, err := c.Build()
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if len(built) != 3 {
		t.Fatalf("built %d instances, want 3 (strict, lenient, configtestplugin once)", len(built))
	}
	strict, lenient, plain := built["strict"].(*testPlugin), built["lenient"].(*testPlugin), built["configtestplugin"].(*testPlugin)
	if strict == lenient || strict == nil || lenient == nil || plain == nil {
		t.Fatalf("instances: %v %v %v", strict, lenient, plain)
	}
	if !slices.Equal(strict.Zones, []string{"zen.example.net", "bl.example.org"}) || !strict.Reject || strict.Timeout != 5 {
		t.Fatalf("strict = %+v", strict)
	}
	if !slices.Equal(lenient.Zones, []string{"zen.example.net"}) || lenient.Reject || lenient.Timeout != 30 {
		t.Fatalf("lenient = %+v", lenient)
	}
	if plain.Zones != nil || plain.Timeout != 5 {
		t.Fatalf("an instance with no table gets the defaults: %+v", plain)
	}
}

func TestDefaults(t *testing.T) {
	c := parse(t, "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n")
	if c.DataDir != "./var" || c.Hostname == "" || c.Listeners[0].Hostname != c.Hostname {
		t.Fatalf("defaults: data_dir %q hostname %q listener hostname %q", c.DataDir, c.Hostname, c.Listeners[0].Hostname)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtpd.toml")
	if err := os.WriteFile(path, []byte(valid), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil || c.Path() != path {
		t.Fatalf("Load = %v, %v", c, err)
	}
	if _, err := config.Load(path + ".missing"); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	// Errors name the file that was loaded.
	os.WriteFile(path, []byte("bogus = 1\n"+valid), 0o600)
	if _, err := config.Load(path); err == nil || !strings.Contains(err.Error(), path+":1: unknown key") {
		t.Fatalf("Load error = %v", err)
	}
}

// lineOf returns the 1-based line of the first line of text containing s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%q not in the text", s)
	return 0
}

// insert puts line into valid right after the line containing after.
func insert(after, line string) string {
	i := strings.Index(valid, after)
	j := i + strings.Index(valid[i:], "\n") + 1
	return valid[:j] + line + "\n" + valid[j:]
}

// loadErr parses and builds text, returning the first error.
func loadErr(text string) error {
	c, err := config.Parse("smtpd.toml", text)
	if err != nil {
		return err
	}
	_, err = c.Build()
	return err
}

func wantErr(t *testing.T, err error, patterns ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one matching %q", patterns)
	}
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(err.Error()) {
			t.Fatalf("error %q does not match %q", err, p)
		}
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name string
		text string
		line string // the line the error must name
		want []string
	}{
		{"top level", insert("log_level", `hostnmae = "typo"`), `hostnmae =`, []string{`unknown key "hostnmae"`}},
		{"top level, a typo of a known key", strings.Replace(valid, "hook_timeout", "hook_timout", 1), `hook_timout`, []string{`unknown key "hook_timout"`}},
		{"listener", insert("max_message_size", `max_rcpts = 5`), `max_rcpts`, []string{`unknown key "listener.max_rcpts"`}},
		{"second listener", insert(`hostname = "smtp.example.test"`, `adress = "x"`), `adress`, []string{`"listener.adress"`}},
		{"plugin table", insert(`reject = true`, `rejekt = false`), `rejekt`, []string{`unknown key "plugins.strict.rejekt"`}},
		{"second instance of the same plugin", insert(`timeout = 30`, `zone = "x"`), `zone = "x"`, []string{`"plugins.lenient.zone"`}},
		{"unknown table", valid + "\n[limits]\nmax = 1\n", `[limits]`, []string{`unknown table \[limits\]`}},
		{"plugin sub-table", valid + "\n[plugins.strict.extra]\nx = 1\n", `[plugins.strict.extra]`, []string{`unknown table \[plugins.strict.extra\]`}},
		{"plugin that never decodes", insert(`max_message_size`, "") + "\n[plugins.configtestlazy]\nsetting = 1\n",
			`setting = 1`, []string{`unknown key "plugins.configtestlazy.setting"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := tc.text
			if tc.name == "plugin that never decodes" {
				text = strings.Replace(text, `plugins = ["strict", "configtestplugin"]`, `plugins = ["strict", "configtestplugin", "configtestlazy"]`, 1)
			}
			err := loadErr(text)
			line := lineOf(t, text, tc.line)
			wantErr(t, err, append([]string{`^smtpd\.toml:` + itoa(line) + `: `}, tc.want...)...)
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("one mistake, several errors: %q", err)
			}
			if strings.Count(err.Error(), "smtpd.toml") != 1 {
				t.Fatalf("the file is named more than once: %q", err)
			}
		})
	}
}

func TestSeveralUnknownKeysAreAllReported(t *testing.T) {
	text := insert("log_level", "a1 = 1\na2 = 2")
	err := loadErr(text)
	wantErr(t, err, `smtpd\.toml:`+itoa(lineOf(t, text, "a1 ="))+`: unknown key "a1"`, `smtpd\.toml:`+itoa(lineOf(t, text, "a2 ="))+`: unknown key "a2"`)
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestWrongTypes(t *testing.T) {
	tests := []struct {
		name, text, line string
		want             []string
	}{
		{"string for an int in a listener", strings.Replace(valid, "max_message_size = 1048576", `max_recipients = "many"`, 1),
			`max_recipients =`, []string{`listener\.max_recipients: expected an integer, got a string$`}},
		{"a size that is not a size", strings.Replace(valid, "max_message_size = 1048576", `max_message_size = "1.5 parsecs"`, 1),
			`max_message_size =`, []string{`max_message_size`, `want a whole number of bytes`}},
		{"string for an int in a plugin", strings.Replace(valid, "timeout = 30", `timeout = "30"`, 1),
			`timeout = "30"`, []string{`plugins\.lenient\.timeout: expected an integer, got a string$`}},
		{"string for a bool in a plugin", strings.Replace(valid, `reject = true`, `reject = "yes"`, 1),
			`reject = "yes"`, []string{`plugins\.strict\.reject: expected true or false, got a string$`}},
		{"bad duration", strings.Replace(valid, `read_timeout = "2m"`, `read_timeout = "2 minutes"`, 1),
			`read_timeout`, []string{`read_timeout`, `"2 minutes" is not a duration`}},
		{"number for a duration", strings.Replace(valid, `hook_timeout = "10s"`, `hook_timeout = 10`, 1),
			`hook_timeout`, []string{`hook_timeout`, `not a duration`}},
		{"syntax error", strings.Replace(valid, `name    = "mx"`, `name    = "mx`, 1),
			`name    = "mx`, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := loadErr(tc.text)
			wantErr(t, err, append([]string{`^smtpd\.toml:` + itoa(lineOf(t, tc.text, tc.line)) + `: `}, tc.want...)...)
			if strings.Count(err.Error(), "smtpd.toml") != 1 || strings.Contains(err.Error(), "toml: line") {
				t.Fatalf("unclear error: %q", err)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"unregistered plugin", strings.Replace(valid, `plugins  = ["lenient", "configtestplugin"]`, `plugins  = ["lenient", "nosuchplugin"]`, 1),
			[]string{`^smtpd\.toml:` + itoa(lineOf(t, valid, `name     = "submission"`)-1) + `: listener "submission"`, `unknown plugin "nosuchplugin"`}},
		{"use names an unregistered plugin", strings.Replace(valid, `use     = "configtestplugin"`, `use     = "nosuchplugin"`, 1),
			[]string{`smtpd\.toml:` + itoa(lineOf(t, valid, `[plugins.lenient]`)), `\[plugins.lenient\]`, `use = "nosuchplugin"`, `unknown plugin "nosuchplugin"`}},
		{"unused table", valid + "\n[plugins.spare]\nuse = \"configtestplugin\"\n",
			[]string{`smtpd\.toml:` + itoa(strings.Count(valid, "\n")+2) + `: \[plugins.spare\] is not used by any listener`}},
		{"constructor refuses a setting", strings.Replace(valid, "timeout = 30", "timeout = -1", 1),
			[]string{`smtpd\.toml:` + itoa(lineOf(t, valid, `[plugins.lenient]`)) + `: `, `plugin "lenient"`, `timeout: must be positive`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse("smtpd.toml", tc.text)
			if err != nil {
				t.Fatalf("Parse: %v (the mistake is only found by Build)", err)
			}
			_, err = c.Build()
			wantErr(t, err, tc.want...)
		})
	}
}

func TestCheckErrors(t *testing.T) {
	listener := func(body string) string { return "[[listener]]\n" + body }
	tests := []struct {
		name, text string
		want       []string
	}{
		{"no listener", `hostname = "x"`, []string{`no \[\[listener\]\]`}},
		{"missing name", listener("address = \":25\"\nplugins = [\"configtestplugin\"]\n"), []string{`^smtpd\.toml:1: listener 1: name is missing`}},
		{"missing address", "hostname = \"x\"\n" + listener("name = \"mx\"\nplugins = [\"configtestplugin\"]\n"), []string{`^smtpd\.toml:2: listener "mx": address is missing`}},
		{"missing plugins", listener("name = \"mx\"\naddress = \":25\"\n"), []string{`^smtpd\.toml:1: listener "mx": plugins is empty`}},
		{"empty plugins", listener("name = \"mx\"\naddress = \":25\"\nplugins = []\n"), []string{`listener "mx": plugins is empty`}},
		{"same name twice", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n") + listener("name = \"mx\"\naddress = \":26\"\nplugins = [\"configtestplugin\"]\n"),
			[]string{`^smtpd\.toml:5: listener "mx": the name is used twice`}},
		{"plugin listed twice", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\", \"configtestplugin\"]\n"),
			[]string{`listener "mx": plugin "configtestplugin" is listed twice`}},
		{"negative limit", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nmax_recipients = -1\n"), []string{`listener "mx": limits must not be negative`}},
		{"negative header index", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nheader_index_fields = -1\n"), []string{`listener "mx": limits must not be negative`}},
		{"dns server by name", "[dns]\nservers = [\"ns1.example\"]\n" + listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"),
			[]string{`^smtpd\.toml:1: dns: servers: "ns1.example" is not an IP address`}},
		{"bad connection rate", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nmax_connection_rate_per_ip = -5\n"),
			[]string{`listener "mx": max_connection_rate_per_ip = -5: want connections per connection_rate_window \(default 120\), or -1 for no limit`}},
		{"bad rate exception", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nconnection_rate_exceptions = [\"10.0.0.0/33\"]\n"),
			[]string{`listener "mx": connection_rate_exceptions: "10.0.0.0/33" is not a network`}},
		{"bad max_spooling", "max_spooling = -2\n" + listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"),
			[]string{`^smtpd\.toml:1: max_spooling = -2: want how many messages may be received at once`}},
		{"proxy_protocol without proxy_networks", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nproxy_protocol = true\n"),
			[]string{`listener "mx": proxy_protocol = true needs proxy_networks`}},
		{"proxy_networks without proxy_protocol", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nproxy_networks = [\"127.0.0.1\"]\n"),
			[]string{`listener "mx": proxy_networks is set but proxy_protocol is not`}},
		{"bad proxy network", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nproxy_protocol = true\nproxy_networks = [\"10.0.0.0/33\"]\n"),
			[]string{`listener "mx": proxy_networks: "10.0.0.0/33" is not an IP address or CIDR prefix`}},
		{"bad xclient host", listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\nxclient_hosts = [\"rig.example\"]\n"),
			[]string{`listener "mx": xclient_hosts: "rig.example" is not an IP address or CIDR prefix`}},
		{"bad log level", "log_level = \"loud\"\n" + listener("name = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"), []string{`log_level = "loud"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("smtpd.toml", tc.text)
			wantErr(t, err, tc.want...)
		})
	}
}

func TestDecodeString(t *testing.T) {
	var p testPlugin
	if err := config.DecodeString("zones = [\"a\"]\nreject = true\n", &p); err != nil || !p.Reject || len(p.Zones) != 1 {
		t.Fatalf("DecodeString = %v, %+v", err, p)
	}
	err := config.DecodeString("zones = [\"a\"]\nrejekt = true\n", &p)
	wantErr(t, err, `settings:2: unknown key "rejekt"`)
	err = config.DecodeString("timeout = \"x\"\n", &p)
	wantErr(t, err, `^settings:1: timeout: expected an integer, got a string$`)
	err = config.DecodeString("reject = false\nzones = \"a\"\n", &p)
	wantErr(t, err, `^settings:2: zones: expected a list of strings, got a string$`)
}

// TestWrongTypesSayWhatWasExpected: a value of the wrong type is reported
// as what the key expects, in words, with file:line and the key, never in
// Go's terms (slice, int64, destination).
func TestWrongTypesSayWhatWasExpected(t *testing.T) {
	listener := "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"
	table := listener + "[plugins.configtestplugin]\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		// The global section.
		{"global: string for an int", "auth_max_failures = \"5\"\n" + listener, `^smtpd\.toml:1: auth_max_failures: expected an integer, got a string$`},
		{"global: int for a string", "log_level = \"info\"\nhostname = 5\n" + listener, `^smtpd\.toml:2: hostname: expected a string, got an integer$`},
		{"global: list for a duration", "hook_timeout = [\"30s\"]\n" + listener, `^smtpd\.toml:1: hook_timeout: expected a duration such as "30s", got a list$`},
		{"global: int for the plugins table", "plugins = 5\n" + listener, `^smtpd\.toml:1: plugins: expected a table \(\[plugins\.NAME\] sections\), got an integer$`},
		// A listener.
		{"listener: string for a list", "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = \"configtestplugin\"\n", `^smtpd\.toml:4: listener\.plugins: expected a list of strings, got a string$`},
		{"listener: int in a list of strings", "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\", 2]\n", `^smtpd\.toml:4: listener\.plugins: expected a list of strings, got a list holding an integer$`},
		{"listener: int for a bool", listener + "require_auth = 1\n", `^smtpd\.toml:5: listener\.require_auth: expected true or false, got an integer$`},
		{"listener: list for a size", listener + "max_message_size = [1]\n", `^smtpd\.toml:5: listener\.max_message_size: expected a size such as "25MB" or a number of bytes, got a list$`},
		{"listener: string for a list of tables", listener + "tls_certificates = \"cert.pem\"\n", `^smtpd\.toml:5: listener\.tls_certificates: expected a list of tables, got a string$`},
		// A plugin's table, decoded by the plugin.
		{"plugin: string for a list", table + "zones = \"zen.example.net\"\n", `^smtpd\.toml:6: plugins\.configtestplugin\.zones: expected a list of strings, got a string$`},
		{"plugin: string for an int", table + "timeout = \"30s\"\n", `^smtpd\.toml:6: plugins\.configtestplugin\.timeout: expected an integer, got a string$`},
		{"plugin: int for a bool", table + "reject = 1\n", `^smtpd\.toml:6: plugins\.configtestplugin\.reject: expected true or false, got an integer$`},
		{"plugin: int in a list of strings", table + "zones = [\"a\", 1]\n", `^smtpd\.toml:6: plugins\.configtestplugin\.zones: expected a list of strings, got a list holding an integer$`},
		{"plugin: a value for the table", listener + "[plugins]\nconfigtestplugin = 5\n", `^smtpd\.toml:6: plugins\.configtestplugin: expected a table, got an integer$`},
		{"enforce not a bool", table + "enforce = \"no\"\n", `^smtpd\.toml:6: \[plugins\.configtestplugin\] enforce = no: must be true or false`},
		{"instance with use", "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"strict\"]\n[plugins.strict]\nuse = \"configtestplugin\"\nreject = \"yes\"\n", `^smtpd\.toml:7: plugins\.strict\.reject: expected true or false, got a string$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := loadErr(tc.text)
			wantErr(t, err, tc.want)
			for _, goTerm := range []string{"incompatible", "destination", "slice", "int64", "[]any", "boolean", " toml: "} {
				if strings.Contains(err.Error(), goTerm) {
					t.Errorf("error %q uses Go's terms (%q)", err, goTerm)
				}
			}
		})
	}
}

// TestDurationNamedStringSettings: a plugin's duration kept as a string
// ("connect_timeout") is described as a duration.
func TestDurationNamedStringSettings(t *testing.T) {
	var s struct {
		ConnectTimeout string `toml:"connect_timeout"`
		Window         string `toml:"window"`
		Name           string `toml:"name"`
	}
	wantErr(t, config.DecodeString("connect_timeout = 30\n", &s), `^settings:1: connect_timeout: expected a duration such as "30s", got an integer$`)
	wantErr(t, config.DecodeString("window = 60\n", &s), `^settings:1: window: expected a duration such as "30s", got an integer$`)
	wantErr(t, config.DecodeString("name = true\n", &s), `^settings:1: name: expected a string, got true or false$`)
}

func TestFailedBuildClosesWhatItBuilt(t *testing.T) {
	for _, tc := range []struct{ name, plugins, tables string }{
		{"unknown plugin after it", `["c1", "nosuchplugin"]`, ""},
		{"bad setting after it", `["c1", "configtestplugin"]`, "[plugins.configtestplugin]\ntimeout = -1\n"},
		{"unknown key in its own table", `["c1"]`, "[plugins.c1]\nuse = \"configtestcloser\"\nbogus = 1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = " + tc.plugins + "\n" + tc.tables
			if !strings.Contains(tc.tables, "[plugins.c1]") {
				text += "[plugins.c1]\nuse = \"configtestcloser\"\n"
			}
			before := closerOpen.Load()
			c := parse(t, text)
			if _, err := c.Build(); err == nil {
				t.Fatal("Build succeeded")
			}
			if open := closerOpen.Load() - before; open != 0 {
				t.Fatalf("%d instances left open after a failed Build", open)
			}
		})
	}
	// A successful Build leaves them open for the chains.
	before := closerOpen.Load()
	built, err := parse(t, "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestcloser\"]\n").Build()
	if err != nil || closerOpen.Load()-before != 1 {
		t.Fatalf("Build = %v, %v; open %d", built, err, closerOpen.Load()-before)
	}
	built["configtestcloser"].(*closerPlugin).Close()
}

func TestUnusedTableIsRefusedBeforeAnythingIsBuilt(t *testing.T) {
	before := closerOpen.Load()
	text := "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestcloser\"]\n[plugins.b]\nx = 1\n[plugins.a]\ny = 2\n"
	_, err := parse(t, text).Build()
	wantErr(t, err, `^smtpd\.toml:7: \[plugins\.a\] is not used`)
	if closerOpen.Load() != before {
		t.Fatal("a plugin was built for a configuration that has an unused table")
	}
}

// dnsPlugin has the shared resolver settings.
type dnsPlugin struct {
	DNS  resolver.Settings `toml:"dns"`
	Zone string            `toml:"zone"`
}

func (*dnsPlugin) Noop(context.Context, *connection.Connection) hooks.Result { return hooks.Result{} }

func init() {
	hooks.Register("configtestdns", func(decode hooks.Decoder) (*dnsPlugin, error) {
		p := &dnsPlugin{}
		return p, decode(p)
	})
}

// TestSharedDNSSettings: the top-level [dns] table reaches every plugin
// whose settings have a resolver.Settings field; an instance's own dns
// table overrides it for that instance only.
func TestSharedDNSSettings(t *testing.T) {
	c, err := config.Parse("smtpd.toml", `
[dns]
servers = ["127.0.0.1:5353"]
timeout = "2s"

[[listener]]
name = "mx"
address = ":25"
plugins = ["a", "b", "c"]

[plugins.a]
use = "configtestdns"

[plugins.b]
use = "configtestdns"
zone = "b"
[plugins.b.dns]
servers = ["[::1]:53"]

[plugins.c]
use = "configtestdns"
[plugins.c.dns]
timeout = "1s"
`)
	if err != nil {
		t.Fatal(err)
	}
	built, err := c.Build()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]resolver.Settings{
		"a": {Servers: []string{"127.0.0.1:5353"}, Timeout: 2 * time.Second},
		"b": {Servers: []string{"[::1]:53"}, Timeout: 2 * time.Second},
		"c": {Servers: []string{"127.0.0.1:5353"}, Timeout: time.Second},
	} {
		got := built[name].(*dnsPlugin).DNS
		if !slices.Equal(got.Servers, want.Servers) || got.Timeout != want.Timeout {
			t.Errorf("plugin %s: dns = %+v, want %+v", name, got, want)
		}
	}
	if c.DNS.Servers[0] != "127.0.0.1:5353" {
		t.Errorf("an instance's override changed the shared table: %v", c.DNS.Servers)
	}
}

// TestOnly: `smtpd stdio` keeps one listener and its plugin tables, so
// Build builds nothing another listener needs (and finds no unused table).
func TestOnly(t *testing.T) {
	c, err := config.Parse("smtpd.toml", `
[[listener]]
name = "mx"
address = ":25"
plugins = ["a"]

[[listener]]
name = "submission"
address = ":587"
plugins = ["b"]

[plugins.a]
use = "configtestdns"
zone = "a"

[plugins.b]
use = "configtestdns"
zone = "b"
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Only("nope") {
		t.Fatal(`Only("nope") found a listener`)
	}
	if !c.Only("submission") || len(c.Listeners) != 1 || c.Listeners[0].Name != "submission" {
		t.Fatalf("Only(submission): listeners %+v", c.Listeners)
	}
	built, err := c.Build()
	if err != nil {
		t.Fatal(err)
	}
	if len(built) != 1 || built["b"].(*dnsPlugin).Zone != "b" {
		t.Errorf("built %v, want only b", built)
	}
}

// TestQmailControlDefaults: a [qmail] control directory gives defaults
// for what the file leaves unset (me, smtpgreeting, databytes,
// timeoutsmtpd) and a key set in the file wins.
func TestQmailControlDefaults(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"me": "mx.example.com\n", "smtpgreeting": "greetings.example.com\n",
		"databytes": "1000000\n", "timeoutsmtpd": "120\n", "rcpthosts": "example.com\n*.example.net\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := config.Parse("smtpd.toml", fmt.Sprintf(`
[qmail]
control_dir = %q

[[listener]]
name = "smtp"
address = ":25"
plugins = ["configtestplugin"]

[[listener]]
name = "other"
address = ":26"
plugins = ["configtestplugin"]
greeting = "other.example.com ESMTP"
max_message_size = "5M"
read_timeout = "1m"
`, dir))
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "mx.example.com" {
		t.Errorf("hostname %q, want control/me", c.Hostname)
	}
	smtp, other := c.Listeners[0], c.Listeners[1]
	if smtp.Greeting != "greetings.example.com ESMTP" || smtp.MaxMessageSize != 1000000 || smtp.ReadTimeout.Duration != 2*time.Minute || smtp.Hostname != "mx.example.com" {
		t.Errorf("listener smtp: greeting %q, max_message_size %d, read_timeout %v, hostname %q", smtp.Greeting, smtp.MaxMessageSize, smtp.ReadTimeout.Duration, smtp.Hostname)
	}
	if other.Greeting != "other.example.com ESMTP" || other.MaxMessageSize != 5<<20 || other.ReadTimeout.Duration != time.Minute {
		t.Errorf("listener other: the file's own keys must win: %q %d %v", other.Greeting, other.MaxMessageSize, other.ReadTimeout.Duration)
	}
	// rcpthosts' wildcard line is the qmailcontrol plugin's to warn about
	// (qmailctl's tests): the server-wide defaults load past it.
	_, err = config.Parse("smtpd.toml", "[qmail]\ncontrol_dir = \"/nonexistent/qmail/control\"\n[[listener]]\nname = \"a\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n")
	wantErr(t, err, `^smtpd\.toml:1: \[qmail\]: qmail control directory: stat /nonexistent/qmail/control: no such file or directory`)
}

// TestEnforce: enforce = false is read per instance, and is no key the
// plugin's own settings must know.
func TestEnforce(t *testing.T) {
	text := "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"watch\", \"configtestplugin\"]\n" +
		"[plugins.watch]\nuse = \"configtestplugin\"\nenforce = false\n[plugins.configtestplugin]\nenforce = true\n"
	c, err := config.Parse("smtpd.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build(); err != nil {
		t.Fatalf("Build: %v", err)
	}
	if c.Enforces("watch") {
		t.Error("Enforces(watch) = true with enforce = false")
	}
	if !c.Enforces("configtestplugin") {
		t.Error("Enforces(configtestplugin) = false with enforce = true")
	}
	if !c.Enforces("absent") {
		t.Error("Enforces of an instance without a table = false, want the default true")
	}
}

// TestStateStore: the [state] table's settings come with data_dir, and
// whether the file has the table, even an empty one.
func TestStateStore(t *testing.T) {
	const listener = "[[listener]]\nname = \"mx\"\naddress = \":25\"\nplugins = [\"configtestplugin\"]\n"
	for text, want := range map[string]bool{
		"data_dir = \"/srv/x\"\n" + listener:                                    false,
		"data_dir = \"/srv/x\"\n" + listener + "[state]\n":                      true,
		"data_dir = \"/srv/x\"\n" + listener + "[state]\nbackend = \"redis\"\n": true,
	} {
		c, err := config.Parse("smtpd.toml", text)
		if err != nil {
			t.Fatal(err)
		}
		st, ok := c.StateStore()
		if ok != want || st.DataDir != "/srv/x" {
			t.Errorf("%q: StateStore() = %+v, %v; want data_dir /srv/x, %v", text, st, ok, want)
		}
	}
}
