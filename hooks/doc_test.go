package hooks_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/hooks"
)

// TestDocTablesMatchReplies checks doc.go's per-hook tables against
// ReplyFor, so the documentation plugin authors read cannot drift from what
// clients get.
func TestDocTablesMatchReplies(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]hooks.Code{}
	for c := hooks.Declined; c <= hooks.Done; c++ {
		name := map[hooks.Code]string{hooks.Declined: "Declined", hooks.OK: "OK", hooks.Deny: "Deny", hooks.DenySoft: "DenySoft",
			hooks.DenyDisconnect: "DenyDisconnect", hooks.DenySoftDisconnect: "DenySoftDisconnect", hooks.Done: "Done"}[c]
		codes[name] = c
	}
	// Replies the server builds itself rather than ReplyFor.
	serverMade := map[string]bool{"data_post Done": true, "queue_pre Done": true, "queue Done": true}

	heading := regexp.MustCompile(`^// # The (\S+)(?: and (\S+))? hooks?$`)
	row := regexp.MustCompile(`^//\t(\w+(?:, \w+)*)\s{2,}(.+)$`)
	var current []hooks.Hook
	seen := map[hooks.Hook]map[hooks.Code]bool{}
	for i, line := range strings.Split(string(src), "\n") {
		if m := heading.FindStringSubmatch(line); m != nil {
			current = nil
			for _, name := range m[1:] {
				if name == "" {
					continue
				}
				h, ok := hooks.ParseHook(name)
				if !ok {
					t.Fatalf("doc.go:%d: unknown hook %q", i+1, name)
				}
				current = append(current, h)
			}
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil || current == nil {
			continue
		}
		text := m[2]
		for _, name := range strings.Split(m[1], ", ") {
			code, ok := codes[name]
			if !ok {
				t.Fatalf("doc.go:%d: unknown code %q", i+1, name)
			}
			for _, hook := range current {
				if seen[hook] == nil {
					seen[hook] = map[hooks.Code]bool{}
				}
				if seen[hook][code] {
					t.Errorf("doc.go:%d: %s %s listed twice", i+1, hook, name)
				}
				seen[hook][code] = true
				rep := hooks.ReplyFor(hook, hooks.Result{Code: code})
				switch {
				case serverMade[hook.String()+" "+name]:
				case rep.Code == 0:
					if !strings.HasPrefix(text, "no reply") {
						t.Errorf("doc.go:%d: %s %s: doc says %q, ReplyFor gives no reply", i+1, hook, name, text)
					}
				default:
					want := rep.String()
					if rep.Close {
						want += " (closes)"
					}
					if text != want {
						t.Errorf("doc.go:%d: %s %s: doc says %q, ReplyFor gives %q", i+1, hook, name, text, want)
					}
				}
			}
		}
	}
	for _, hook := range []hooks.Hook{hooks.HookConnect, hooks.HookHelo, hooks.HookEhlo, hooks.HookAuth, hooks.HookMailPre, hooks.HookMail,
		hooks.HookRcptPre, hooks.HookRcpt, hooks.HookData, hooks.HookDataHeadersEnd, hooks.HookDataPost, hooks.HookQueuePre,
		hooks.HookQueue, hooks.HookVrfy, hooks.HookNoop, hooks.HookHelp, hooks.HookQuit, hooks.HookUnrecognized} {
		if len(seen[hook]) != len(codes) {
			t.Errorf("doc.go: the %s table covers %d codes, want all %d", hook, len(seen[hook]), len(codes))
		}
	}
}
