package hooks_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// regPlugin hooks connect, rcpt, reset and the deny observer, declared out
// of firing order on purpose.
type regPlugin struct{ Zone string }

func (*regPlugin) Denied(context.Context, *connection.Connection, hooks.Decision) {}
func (*regPlugin) Reset(context.Context, *connection.Connection, *transaction.Transaction) {
}
func (*regPlugin) Rcpt(context.Context, *connection.Connection, *transaction.Transaction, string) hooks.Result {
	return hooks.Result{}
}
func (*regPlugin) Connect(context.Context, *connection.Connection) hooks.Result {
	return hooks.Result{}
}

type noHooks struct{}

func (noHooks) Close() error { return nil }

func init() {
	hooks.Register("hookstestregplugin", func(decode hooks.Decoder) (*regPlugin, error) {
		p := &regPlugin{Zone: "default"}
		if err := decode(p); err != nil {
			return nil, err
		}
		if p.Zone == "" {
			return nil, errors.New("zone: must not be empty")
		}
		return p, nil
	})
}

func TestRegisterAndLookup(t *testing.T) {
	reg, ok := hooks.Lookup("hookstestregplugin")
	if !ok {
		t.Fatal("Lookup did not find the registered plugin")
	}
	if want := []string{"connect", "rcpt", "reset_transaction", "deny"}; !slices.Equal(reg.Hooks, want) {
		t.Fatalf("Hooks = %v, want %v (firing order)", reg.Hooks, want)
	}
	p, err := reg.New(func(v any) error { v.(*regPlugin).Zone = "zen.example.net"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if p.(*regPlugin).Zone != "zen.example.net" {
		t.Fatalf("New did not use the decoder: %+v", p)
	}
	// Construction is validation: the constructor's error comes back, and
	// no half-built plugin with it.
	p, err = reg.New(func(v any) error { v.(*regPlugin).Zone = ""; return nil })
	if err == nil || p != nil {
		t.Fatalf("New with a bad setting = %v, %v; want nil and an error", p, err)
	}
	boom := errors.New("unknown key")
	if _, err := reg.New(func(any) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("New with a failing decoder = %v, want the decoder's error", err)
	}
	if _, ok := hooks.Lookup("nosuchplugin"); ok {
		t.Fatal("Lookup found an unregistered name")
	}
	all := hooks.Registered()
	if !slices.IsSortedFunc(all, func(a, b hooks.Registration) int { return strings.Compare(a.Name, b.Name) }) {
		t.Fatal("Registered is not sorted by name")
	}
	if !slices.ContainsFunc(all, func(r hooks.Registration) bool { return r.Name == "hookstestregplugin" }) {
		t.Fatal("Registered lacks the plugin")
	}
}

func mustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		v := recover()
		if v == nil {
			t.Fatalf("no panic, want one containing %q", want)
		}
		if s, _ := v.(string); !strings.Contains(s, want) {
			t.Fatalf("panic %v, want it to contain %q", v, want)
		}
	}()
	f()
}

func TestRegisterPanics(t *testing.T) {
	mustPanic(t, "registered twice", func() {
		hooks.Register("hookstestregplugin", func(hooks.Decoder) (*regPlugin, error) { return &regPlugin{}, nil })
	})
	mustPanic(t, "implements no hook", func() {
		hooks.Register("hookstestnohooks", func(hooks.Decoder) (*noHooks, error) { return &noHooks{}, nil })
	})
	if _, ok := hooks.Lookup("hookstestnohooks"); ok {
		t.Fatal("a plugin with no hook was registered anyway")
	}
	// The original registration survives the duplicate attempt.
	if reg, _ := hooks.Lookup("hookstestregplugin"); len(reg.Hooks) != 4 {
		t.Fatalf("the duplicate replaced the first registration: %+v", reg)
	}
}

func TestHooksOfFiringOrder(t *testing.T) {
	got := hooks.HooksOf(&everyHook{})
	want := []string{"connect", "helo", "ehlo", "auth", "mail_pre", "mail", "rcpt_pre", "rcpt", "data", "data_headers_end",
		"received_line", "data_post", "queue_pre", "queue", "queue_post", "reset_transaction", "disconnect",
		"vrfy", "noop", "help", "quit", "unrecognized_command", "deny", "ok"}
	if !slices.Equal(got, want) {
		t.Fatalf("HooksOf(every hook):\n got %v\nwant %v", got, want)
	}
	if got := hooks.HooksOf(&noHooks{}); len(got) != 0 {
		t.Fatalf("HooksOf(no hooks) = %v", got)
	}
	if got := hooks.HooksOf(mailFunc(nil)); !slices.Equal(got, []string{"mail"}) {
		t.Fatalf("HooksOf(mail only) = %v", got)
	}
}
