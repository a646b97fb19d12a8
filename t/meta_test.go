package t_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEveryPluginIsCompiledInDocumentedAndItsExampleLoads checks each
// plugins/NAME folder: listed in cmd/smtpd/plugins.go, registered as NAME,
// a README titled NAME whose TOML examples pass `smtpd check`.
func TestEveryPluginIsCompiledInDocumentedAndItsExampleLoads(t *testing.T) {
	list, err := os.ReadFile(filepath.Join(rootDir, "cmd", "smtpd", "plugins.go"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(smtpdBin, "plugins").CombinedOutput()
	if err != nil {
		t.Fatalf("smtpd plugins: %v\n%s", err, out)
	}
	registered := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			registered[f[0]] = true
		}
	}
	dirs, err := os.ReadDir(filepath.Join(rootDir, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	tomlBlock := regexp.MustCompile("(?s)```toml\n(.*?)```")
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		name := d.Name()
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(string(list), `"github.com/sluice-mta/sluice/plugins/`+name+`"`) {
				t.Errorf("plugins/%s is not imported in cmd/smtpd/plugins.go", name)
			}
			if !registered[name] {
				t.Errorf("plugins/%s does not register itself as %q (smtpd plugins lists %v)", name, name, registered)
			}
			readme, err := os.ReadFile(filepath.Join(rootDir, "plugins", name, "README.md"))
			if err != nil {
				t.Fatalf("plugins/%s has no README.md", name)
			}
			if !strings.HasPrefix(string(readme), "# "+name) {
				t.Errorf("plugins/%s/README.md must start with \"# %s\"", name, name)
			}
			blocks := tomlBlock.FindAllStringSubmatch(string(readme), -1)
			if len(blocks) == 0 {
				t.Fatalf("plugins/%s/README.md has no ```toml example", name)
			}
			for i, b := range blocks {
				cfg := b[1]
				if !strings.Contains(cfg, "[[listener]]") {
					cfg = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nplugins = [\"" + name + "\"]\n\n" + cfg
				}
				path := writeFile(t, t.TempDir(), "example.toml", cfg)
				cmd := exec.Command(smtpdBin, "check", "-config", path)
				cmd.Dir = t.TempDir()
				out, err := cmd.CombinedOutput()
				if err != nil && strings.Contains(string(out), "no such file or directory") {
					// The example names a real file (a password file, a
					// certificate) that only exists on the admin's machine;
					// its keys were still checked before the file was opened.
					t.Logf("plugins/%s/README.md example %d names a file that does not exist here: %s", name, i+1, out)
					continue
				}
				if err != nil {
					t.Errorf("plugins/%s/README.md example %d does not load: %v\n%s\n--- config:\n%s", name, i+1, err, out, cfg)
				}
			}
		})
	}
}
