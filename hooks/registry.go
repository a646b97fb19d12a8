package hooks

import (
	"fmt"
	"sort"
	"sync"
)

// Decoder decodes a plugin instance's settings (its [plugins.NAME] table)
// into v, a pointer to the plugin's settings struct. An unknown key or a
// wrong type is an error that names the file, line and key.
type Decoder func(v any) error

// Registration is one compiled-in plugin.
type Registration struct {
	// Name is the plugin's name: its folder, package and config name.
	Name string
	// Hooks are the hooks the plugin implements, in firing order.
	Hooks []Hook
	// New builds an instance from its settings. Construction is validation:
	// a bad setting is an error naming the setting.
	New func(decode Decoder) (any, error)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Registration{}
)

// Register makes a plugin available under name; call it from the plugin
// package's init:
//
//	func init() { hooks.Register("rcptok", New) }
//
// where New is func(hooks.Decoder) (*Plugin, error). The hooks the plugin
// implements are read off P's method set, so `smtpd plugins` can list them
// without building an instance. Register panics on a duplicate name or a
// type that implements no hook.
func Register[P any](name string, newPlugin func(Decoder) (P, error)) {
	var zero P
	hooks := HooksOf(any(zero))
	if len(hooks) == 0 {
		panic(fmt.Sprintf("hooks.Register(%q): %T implements no hook", name, zero))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("hooks.Register(%q): registered twice", name))
	}
	registry[name] = Registration{
		Name:  name,
		Hooks: hooks,
		New: func(d Decoder) (any, error) {
			p, err := newPlugin(d)
			if err != nil {
				return nil, err
			}
			return p, nil
		},
	}
}

// Lookup returns the plugin registered under name.
func Lookup(name string) (Registration, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	r, ok := registry[name]
	return r, ok
}

// Registered returns every registered plugin, sorted by name.
func Registered() []Registration {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]Registration, 0, len(registry))
	for _, r := range registry {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
