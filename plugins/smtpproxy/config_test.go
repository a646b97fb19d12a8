package smtpproxy_test

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/config"
	_ "github.com/sluice-mta/sluice/plugins/smtpforward"
)

// TestProxyCannotBeARoute: a route runs only its queue hook, so smtpproxy
// (whose downstream session lives from MAIL to the disconnect hook) as a
// fallback_queue would open a downstream connection per client
// connection that nothing ever closes. The configuration refuses it.
func TestProxyCannotBeARoute(t *testing.T) {
	text := `hostname = "mx.example.test"
data_dir = "` + t.TempDir() + `"

[[listener]]
name    = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "dovecot"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.dovecot]
use = "smtpforward"
lmtp = true
host = "127.0.0.1:24"
fallback_queue = "proxy"

[plugins.proxy]
use = "smtpproxy"
host = "127.0.0.1:10026"
`
	cfg, err := config.Parse("smtpd.toml", text)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	built, err := cfg.Build()
	const want = `plugin "dovecot" routes messages to "proxy", which needs its mail, rcpt, data, reset_transaction, disconnect hooks`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "smtpd.toml:") {
		t.Fatalf("Build: %v (built %d); want an error at smtpd.toml:LINE containing %q", err, len(built), want)
	}
}
