package cli

import (
	"net/netip"
	"strings"
	"testing"
)

// TestClientFromEnv: what tcpserver and tcprules put in the environment
// becomes the connection's addresses, names and per-client settings; an
// unset RELAYCLIENT is not an empty one.
func TestClientFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	info, err := clientFromEnv(env(map[string]string{
		"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "40001", "TCPLOCALIP": "::ffff:198.51.100.25", "TCPLOCALPORT": "25",
		"TCPREMOTEHOST": "mail.example.net", "TCPREMOTEINFO": "alice", "RELAYCLIENT": "", "DATABYTES": "2000",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if info.Remote != netip.MustParseAddrPort("192.0.2.7:40001") || info.Local != netip.MustParseAddrPort("198.51.100.25:25") ||
		info.RemoteHost != "mail.example.net" || info.RemoteInfo != "alice" || !info.Relay || info.RcptSuffix != "" || info.MaxMessageSize != 2000 {
		t.Errorf("info = %+v", info)
	}
	info, err = clientFromEnv(env(map[string]string{"RELAYCLIENT": "@fixme.example"}))
	if err != nil || !info.Relay || info.RcptSuffix != "@fixme.example" || info.Remote.IsValid() {
		t.Errorf("RELAYCLIENT with a suffix: %+v, %v", info, err)
	}
	if info, _ = clientFromEnv(env(nil)); info.Relay {
		t.Error("no RELAYCLIENT, yet the client may relay")
	}
	for vars, want := range map[string]string{
		"TCPREMOTEIP=not-an-ip": `TCPREMOTEIP="not-an-ip" is not an IP address`,
		"TCPREMOTEPORT=99999":   `TCPREMOTEPORT="99999" is not a port number`,
		"DATABYTES=lots":        `DATABYTES="lots": want a number of bytes`,
	} {
		k, v, _ := strings.Cut(vars, "=")
		m := map[string]string{"TCPREMOTEIP": "192.0.2.7", k: v}
		if _, err := clientFromEnv(env(m)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", vars, err, want)
		}
	}
}
