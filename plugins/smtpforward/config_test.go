package smtpforward_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/config"
	_ "github.com/sluice-mta/sluice/plugins/maildir"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
)

// build parses and builds a configuration with one listener running
// rcptok and smtpforward, and the given plugin tables.
func build(t *testing.T, tables string) (map[string]any, error) {
	t.Helper()
	text := `hostname = "mx.example.test"
data_dir = "` + t.TempDir() + `"

[[listener]]
name    = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "smtpforward"]

[plugins.rcptok]
domains = ["example.test"]

` + tables
	cfg, err := config.Parse("smtpd.toml", text)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return cfg.Build()
}

// TestRoutesAreBuiltFromTheConfig: fallback_queue and dsn_queue name queue
// instances that no listener lists; they are built and wired, and a route
// that cannot work is a clear error at start.
func TestRoutesAreBuiltFromTheConfig(t *testing.T) {
	built, err := build(t, `[plugins.smtpforward]
host = "127.0.0.1:10025"
fallback_queue = "postfix"
dsn_queue = "bounces"

[plugins.postfix]
use = "smtpforward"
host = "127.0.0.1:10026"

[plugins.bounces]
use = "maildir"
path = "`+t.TempDir()+`/bounces"
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"smtpforward", "postfix", "bounces"} {
		if built[name] == nil {
			t.Errorf("%s was not built", name)
		}
	}

	for _, tc := range []struct{ tables, want string }{
		{"[plugins.smtpforward]\nfallback_queue = \"smtpforward\"\n", `plugin "smtpforward" routes messages to itself`},
		{"[plugins.smtpforward]\nfallback_queue = \"rcptok\"\n", `plugin "smtpforward" routes messages to "rcptok", which is no queue plugin`},
		{"[plugins.smtpforward]\nfallback_queue = \"nosuch\"\n", `unknown plugin "nosuch"`},
		{"[plugins.smtpforward]\nfallback_queue = \"postfix\"\n\n[plugins.postfix]\nuse = \"smtpforward\"\nfallback_queue = \"smtpforward\"\n", `routes messages to "postfix", which has routes of its own`},
		{"[plugins.spare]\nuse = \"maildir\"\n", `[plugins.spare] is not used by any listener`},
	} {
		_, err := build(t, tc.tables)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "smtpd.toml:") {
			t.Errorf("%q: error %v; want one at smtpd.toml:LINE containing %q", tc.tables, err, tc.want)
		}
	}
}
