// Package qmailctl reads qmail's control files with qmail's own rules, so a
// qmail site keeps the files it has: me, rcpthosts, morercpthosts.cdb,
// databytes, smtpgreeting, timeoutsmtpd, badmailfrom, badrcptto and
// localiphost (qmail-smtpd(8), qmail-control(5)).
//
// Config reads the server-wide ones ([qmail] control_dir: the host name,
// the greeting, the size limit, the timeout); the qmailcontrol plugin
// makes qmail-smtpd's checks from the others. Lines qmail would ignore are
// ignored here too, with a warning, never a refusal to start.
package qmailctl

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/mailaddr"
)

// DefaultDir is qmail's control directory.
const DefaultDir = "/var/qmail/control"

// Settings are the keys of the configuration's [qmail] table. A plugin
// that embeds Settings in its own settings gets the table's values as its
// defaults.
type Settings struct {
	// ControlDir is the qmail control directory to read, such as
	// DefaultDir. Empty: none.
	ControlDir string `toml:"control_dir"`
}

// Control is what a control directory says.
type Control struct {
	// Dir is the control directory read.
	Dir string
	// Me is control/me: the host's name; "" when the file is missing.
	Me string
	// SMTPGreeting is control/smtpgreeting (default Me): the 220 line is
	// "220 " + SMTPGreeting + " ESMTP".
	SMTPGreeting string
	// LocalIPHost is control/localiphost (default Me): the domain a
	// recipient at the server's own address literal ([192.0.2.1]) is
	// taken to be.
	LocalIPHost string
	// Databytes is control/databytes: the message size limit; 0 (qmail's
	// default and "no limit") when missing.
	Databytes int64
	// TimeoutSMTPD is control/timeoutsmtpd: how long to wait for the
	// client; 0 when missing (qmail's default is 1200 seconds).
	TimeoutSMTPD time.Duration
	// Rcpthosts holds control/rcpthosts: domains as written by
	// mailaddr.CanonicalDomain, ".domain" entries with their dot.
	Rcpthosts map[string]bool
	// HasRcpthosts is false when the file does not exist. qmail then
	// accepts every recipient (an open relay); Sluice's qmailcontrol
	// plugin refuses to build instead.
	HasRcpthosts bool
	// MoreRcpthosts is control/morercpthosts.cdb, or nil.
	MoreRcpthosts *CDB
	// BadMailFrom and BadRcptTo hold control/badmailfrom and
	// control/badrcptto: addresses and "@domain" entries, lower-cased.
	BadMailFrom, BadRcptTo map[string]bool
	// Warnings name the lines qmail ignores, which were ignored.
	Warnings []string
}

// Read reads the control files of dir. A missing file is the qmail
// default; an unreadable one, or a number that does not parse, is an
// error naming the file.
func Read(dir string) (*Control, error) {
	c, err := ReadServer(dir)
	if err != nil {
		return nil, err
	}
	if err := c.readRcpthosts(); err != nil {
		return nil, err
	}
	if c.BadMailFrom, err = c.addresses("badmailfrom"); err != nil {
		return nil, err
	}
	if c.BadRcptTo, err = c.addresses("badrcptto"); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "morercpthosts.cdb")
	if c.MoreRcpthosts, err = OpenCDB(path); errors.Is(err, fs.ErrNotExist) {
		c.MoreRcpthosts = nil
	} else if err != nil {
		return nil, fmt.Errorf("qmail control file %s: %w", path, err)
	}
	return c, nil
}

// ReadServer reads only the server-wide files of dir: me, smtpgreeting,
// localiphost, databytes and timeoutsmtpd (what config takes as
// defaults); the lists are left for the qmailcontrol plugin's Read.
func ReadServer(dir string) (*Control, error) {
	c := &Control{Dir: dir}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("qmail control directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("qmail control directory %s is not a directory", dir)
	}
	if c.Me, err = c.firstLine("me"); err != nil {
		return nil, err
	}
	if c.SMTPGreeting, err = c.firstLine("smtpgreeting"); err != nil {
		return nil, err
	}
	if c.SMTPGreeting == "" {
		c.SMTPGreeting = c.Me
	}
	if c.LocalIPHost, err = c.firstLine("localiphost"); err != nil {
		return nil, err
	}
	if c.LocalIPHost == "" {
		c.LocalIPHost = c.Me
	}
	if c.Databytes, err = c.number("databytes"); err != nil {
		return nil, err
	}
	secs, err := c.number("timeoutsmtpd")
	if err != nil {
		return nil, err
	}
	c.TimeoutSMTPD = time.Duration(secs) * time.Second
	return c, nil
}

// Close closes morercpthosts.cdb, if Read opened it.
func (c *Control) Close() error {
	if c.MoreRcpthosts != nil {
		return c.MoreRcpthosts.Close()
	}
	return nil
}

// lines returns the lines of a control file, trailing spaces and tabs
// removed, empty lines dropped (qmail's control_readfile); nil when the
// file does not exist.
func (c *Control) lines(name string) ([]string, bool, error) {
	path := filepath.Join(c.Dir, name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("qmail control file: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimRight(sc.Text(), " \t\r"); l != "" {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, false, fmt.Errorf("qmail control file %s: %w", path, err)
	}
	return out, true, nil
}

func (c *Control) firstLine(name string) (string, error) {
	ls, _, err := c.lines(name)
	if err != nil || len(ls) == 0 {
		return "", err
	}
	return strings.TrimSpace(ls[0]), nil
}

func (c *Control) number(name string) (int64, error) {
	s, err := c.firstLine(name)
	if err != nil || s == "" {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("qmail control file %s: %q is not a number", filepath.Join(c.Dir, name), s)
	}
	return n, nil
}

func (c *Control) warn(name string, n int, line, why string) {
	c.Warnings = append(c.Warnings, fmt.Sprintf("%s:%d: %q ignored: %s", filepath.Join(c.Dir, name), n, line, why))
}

// readRcpthosts reads rcpthosts: "example.com" matches that domain,
// ".example.com" every subdomain (qmail's rules). Lines qmail's matching
// can never hit (wildcards, addresses, '#' comments) are ignored.
func (c *Control) readRcpthosts() error {
	ls, ok, err := c.lines("rcpthosts")
	if err != nil {
		return err
	}
	c.HasRcpthosts = ok
	c.Rcpthosts = map[string]bool{}
	for i, l := range ls {
		d := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(d, "#"):
			c.warn("rcpthosts", i+1, l, "qmail has no comments in rcpthosts: the line never matches")
			continue
		case strings.HasPrefix(d, "*"):
			c.warn("rcpthosts", i+1, l, "qmail has no wildcards: write \""+strings.TrimPrefix(d, "*")+"\" to match every subdomain")
			continue
		case strings.ContainsAny(d, "@ \t"):
			c.warn("rcpthosts", i+1, l, "not a domain")
			continue
		}
		dot := strings.HasPrefix(d, ".")
		canon, ok := mailaddr.CanonicalDomain(strings.TrimPrefix(d, "."))
		if !ok {
			c.warn("rcpthosts", i+1, l, "not a valid domain")
			continue
		}
		if dot {
			canon = "." + canon
		}
		c.Rcpthosts[canon] = true
	}
	return nil
}

// addresses reads badmailfrom or badrcptto: an address, or "@domain" for
// every address at that domain, compared without regard to ASCII case.
func (c *Control) addresses(name string) (map[string]bool, error) {
	ls, _, err := c.lines(name)
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for i, l := range ls {
		a := strings.TrimSpace(l)
		if !strings.Contains(a, "@") {
			c.warn(name, i+1, l, "neither an address nor @domain")
			continue
		}
		m[mailaddr.LowerASCII(a)] = true
	}
	return m, nil
}

// Allowed reports whether a recipient's domain is in rcpthosts or
// morercpthosts.cdb, by qmail's rules: the domain itself, or any of its
// parents written with a leading dot. domain is in canonical form
// (mailaddr.CanonicalDomain).
func (c *Control) Allowed(domain string) (bool, error) {
	if ok, err := c.has(domain); ok || err != nil {
		return ok, err
	}
	for suffix := range mailaddr.ParentSuffixes(domain) {
		if ok, err := c.has(suffix); ok || err != nil {
			return ok, err
		}
	}
	return false, nil
}

// has looks key up in rcpthosts, then in morercpthosts.cdb.
func (c *Control) has(key string) (bool, error) {
	if c.Rcpthosts[key] {
		return true, nil
	}
	if c.MoreRcpthosts == nil {
		return false, nil
	}
	return c.MoreRcpthosts.Has([]byte(key))
}

// Listed reports whether addr is in a badmailfrom or badrcptto list: the
// address itself or "@" and its domain.
func Listed(list map[string]bool, addr string) bool {
	if len(list) == 0 {
		return false
	}
	a := mailaddr.LowerASCII(addr)
	if list[a] {
		return true
	}
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		return list[a[at:]]
	}
	return false
}
