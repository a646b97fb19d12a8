package lookup

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/sluice-mta/sluice/mailaddr"
)

// Local answers "is this domain, or this address, ours?", as Valvula's
// is_local_domain and is_local_address do: plugins ask it before they let
// a rule act on mail that is not for this site. Its domains come from
// tables (rcptok's domains, a lookup table) and from a Postfix main.cf.
// The zero Local has no domain.
type Local struct {
	domains []Table
}

// AddDomains adds a table of domains (".example.com" entries match every
// subdomain).
func (l *Local) AddDomains(t Table) { l.domains = append(l.domains, t) }

// Empty reports whether no table was added.
func (l *Local) Empty() bool { return len(l.domains) == 0 }

// IsLocalDomain reports whether domain is one of ours. An error means a
// table could not answer: the caller defers.
func (l *Local) IsLocalDomain(ctx context.Context, domain string) (bool, error) {
	for _, t := range l.domains {
		_, _, ok, err := MatchDomain(ctx, t, domain)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// IsLocalAddress reports whether addr (local@domain) is at one of our
// domains.
func (l *Local) IsLocalAddress(ctx context.Context, addr string) (bool, error) {
	_, domain, ok := mailaddr.Split(addr)
	if !ok {
		return false, nil
	}
	return l.IsLocalDomain(ctx, domain)
}

// Close closes the tables.
func (l *Local) Close() error {
	var first error
	for _, t := range l.domains {
		if err := Close(t); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// PostfixDomains reads the domains a Postfix main.cf calls local or
// relayed (mydestination, virtual_mailbox_domains, virtual_alias_domains
// and relay_domains), for a Sluice in front of that Postfix. Supported:
// literal names, $name and ${name} expansions of parameters set in the
// same file (myhostname and mydomain must be set there when used), and
// texthash:/path, hash:/path (its text source file /path is read, not
// /path.db) and /path references (one name a line, first column). Any
// other table type (mysql:, pgsql:, ldap:, cdb:, ...) is an error naming
// it: configure that table in Sluice directly.
func PostfixDomains(path string) (Table, error) {
	params, err := readMainCf(path)
	if err != nil {
		return nil, err
	}
	t := &memory{m: map[string]string{}}
	for _, name := range []string{"mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains"} {
		v, ok := params[name]
		if !ok {
			if name != "mydestination" {
				continue
			}
			v = "$myhostname, localhost.$mydomain, localhost" // Postfix's default
		}
		items, err := expand(params, v, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, name, err)
		}
		for _, it := range items {
			if err := postfixItem(t, it); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", path, name, err)
			}
		}
	}
	return t, nil
}

// readMainCf reads name = value lines; a line starting with a blank
// continues the previous one; '#' at the start of a line is a comment.
func readMainCf(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("postfix main.cf: %w", err)
	}
	params := map[string]string{}
	last := ""
	for n, l := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(l)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if last == "" {
				return nil, fmt.Errorf("%s:%d: a continuation line with no parameter before it", path, n+1)
			}
			params[last] += " " + trimmed
			continue
		}
		name, value, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want name = value", path, n+1)
		}
		last = strings.TrimSpace(name)
		params[last] = strings.TrimSpace(value)
	}
	return params, nil
}

// expand splits a value at commas and blanks and expands $name and
// ${name}.
func expand(params map[string]string, v string, depth int) ([]string, error) {
	if depth > 10 {
		return nil, fmt.Errorf("parameters expand into each other in a loop")
	}
	var out []string
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if !strings.Contains(f, "$") {
			out = append(out, f)
			continue
		}
		var (
			b      strings.Builder
			failed error
		)
		s := f
		for s != "" {
			i := strings.IndexByte(s, '$')
			if i < 0 {
				b.WriteString(s)
				break
			}
			b.WriteString(s[:i])
			s = s[i+1:]
			var name string
			if strings.HasPrefix(s, "{") {
				j := strings.IndexByte(s, '}')
				if j < 0 {
					return nil, fmt.Errorf("%q: an unclosed ${", f)
				}
				name, s = s[1:j], s[j+1:]
			} else {
				j := strings.IndexFunc(s, func(r rune) bool {
					return !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
				})
				if j < 0 {
					j = len(s)
				}
				name, s = s[:j], s[j:]
			}
			val, ok := params[name]
			if !ok {
				failed = fmt.Errorf("$%s is not set in the file (Sluice does not know Postfix's built-in defaults: set it in main.cf)", name)
				break
			}
			sub, err := expand(params, val, depth+1)
			if err != nil {
				return nil, err
			}
			b.WriteString(strings.Join(sub, " "))
		}
		if failed != nil {
			return nil, failed
		}
		more, err := expand(params, b.String(), depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// postfixItem adds one item of a domain list: a name, a file, or a table.
func postfixItem(t *memory, it string) error {
	kind, path, isTable := strings.Cut(it, ":")
	switch {
	case strings.HasPrefix(it, "/"):
		return postfixFile(t, it)
	case isTable && (kind == "texthash" || kind == "hash" || kind == "btree"):
		return postfixFile(t, path)
	case isTable && !strings.HasPrefix(it, "["):
		return fmt.Errorf("%q: Postfix %s: tables are not read (supported: literal names, texthash:, hash: through its text source, and /file lists); configure that table in Sluice directly", it, kind)
	}
	d, ok := mailaddr.CanonicalDomain(it)
	if !ok {
		return fmt.Errorf("%q is not a domain", it)
	}
	t.m[d] = ""
	return nil
}

// postfixFile reads the first column of a Postfix text table or list.
func postfixFile(t *memory, path string) error {
	lines, err := readLines(path)
	if err != nil {
		return err
	}
	for _, l := range lines {
		k, _ := splitEntry(l.text)
		d, ok := mailaddr.CanonicalDomain(strings.TrimPrefix(k, "."))
		if !ok {
			return fmt.Errorf("%s:%d: %q is not a domain", path, l.n, k)
		}
		if strings.HasPrefix(k, ".") {
			d = "." + d
		}
		t.m[d] = ""
	}
	return nil
}
