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
	if want := []string{"connect", "rcpt", "reset_transaction", "deny"}; !slices.Equal(names(reg.Hooks), want) {
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
	got := names(hooks.HooksOf(&everyHook{}))
	want := []string{"connect", "helo", "ehlo", "auth", "mail_pre", "mail", "rcpt_pre", "rcpt", "rcpt_ok", "data", "data_headers_end",
		"received_line", "data_post", "queue_pre", "queue", "queue_post", "reset_transaction", "disconnect",
		"vrfy", "noop", "help", "quit", "unrecognized_command", "deny", "ok"}
	if !slices.Equal(got, want) {
		t.Fatalf("HooksOf(every hook):\n got %v\nwant %v", got, want)
	}
	if got := hooks.HooksOf(&noHooks{}); len(got) != 0 {
		t.Fatalf("HooksOf(no hooks) = %v", got)
	}
	if got := hooks.HooksOf(mailFunc(nil)); !slices.Equal(got, []hooks.Hook{hooks.HookMail}) {
		t.Fatalf("HooksOf(mail only) = %v", got)
	}
}

// names returns the hooks' names.
func names(hs []hooks.Hook) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.String())
	}
	return out
}

func TestHookNamesAndParse(t *testing.T) {
	all := hooks.Hooks()
	if len(all) == 0 || all[0] != hooks.HookConnect || all[len(all)-1] != hooks.HookOK {
		t.Fatalf("Hooks() = %v, want connect first and ok last", all)
	}
	// Every hook has its own name, and ParseHook finds it again.
	seen := map[string]bool{}
	for _, h := range all {
		name := h.String()
		if name == "" || strings.HasPrefix(name, "Hook(") || seen[name] {
			t.Errorf("hook %d: name %q is empty or not unique", int(h), name)
		}
		seen[name] = true
		if got, ok := hooks.ParseHook(name); !ok || got != h {
			t.Errorf("ParseHook(%q) = %v, %v; want %d", name, got, ok, int(h))
		}
		if text, err := h.MarshalText(); err != nil || string(text) != name {
			t.Errorf("%s.MarshalText() = %q, %v", name, text, err)
		}
	}
	// Every hook is recognised: the plugin implementing them all has all.
	if got := hooks.HooksOf(&everyHook{}); !slices.Equal(got, all) {
		t.Errorf("HooksOf(every hook) = %v, want Hooks() = %v", got, all)
	}
	for _, name := range []string{"", "RCPT", "rcpt ", "nosuchhook"} {
		if h, ok := hooks.ParseHook(name); ok {
			t.Errorf("ParseHook(%q) = %v, want no hook", name, h)
		}
	}
	if got := hooks.Hook(0).String(); got != "Hook(0)" {
		t.Errorf("the zero Hook prints %q", got)
	}
	if got := hooks.Hook(200).String(); got != "Hook(200)" {
		t.Errorf("Hook(200) prints %q", got)
	}
}
