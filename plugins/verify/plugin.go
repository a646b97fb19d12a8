// Package verify refuses, at RCPT, a recipient that the downstream server
// says does not exist, so that a store-and-forward front-end never takes a
// message it could only bounce later (backscatter): the client hears
// about the bad address while it can still act. It is Postfix's
// reject_unverified_recipient (verify(8)) and Haraka's rcpt_to.routes
// check.
//
// At RCPT it asks the downstream, with the method setting:
//
//   - "smtp" or "lmtp": a probe over the downstream client of package
//     queue (MAIL FROM:<probe_sender>, RCPT TO:<recipient>, RSET), over
//     a few connections kept open and reused (see probe.go);
//   - "dovecot": a user lookup over Dovecot's auth-userdb socket (the
//     auth master protocol, see userdb.go).
//
// A refusal for good (5xx, Dovecot's NOTFOUND) refuses the recipient with
// the downstream's own words; a refusal for now (4xx) defers it; a
// downstream that cannot be reached defers it or, with on_unreachable =
// "accept", lets it through. verify never accepts a recipient: an address
// the downstream knows gets no opinion (Declined), and rcptok or relay
// decides, so verify cannot open a relay. Answers for good are cached in
// the store of the [state] table, shared by every smtpd process that
// shares a Redis server.
package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/queue"
	"github.com/sluice-mta/sluice/state"
	"github.com/sluice-mta/sluice/transaction"
)

func init() { hooks.Register("verify", New) }

// Settings are the keys of a [plugins.verify] table.
type Settings struct {
	// Method is how the downstream is asked: "smtp" (default), "lmtp" or
	// "dovecot".
	Method string `toml:"method"`
	// Host is the downstream: "host:port" or "unix:/path/to/socket" (for
	// "dovecot", its auth-userdb socket). Required.
	Host string `toml:"host"`
	// Helo is the name sent in EHLO or LHLO. Default: this machine's name.
	Helo string `toml:"helo"`
	// StartTLS is "off" (default), "opportunistic" or "required" (smtp and
	// lmtp over TCP).
	StartTLS string `toml:"starttls"`
	// ProbeSender is the MAIL FROM of a probe. Default "" (the null
	// sender <>), which no downstream can send a bounce to.
	ProbeSender string `toml:"probe_sender"`
	// Service is the service name a Dovecot lookup names. Default "smtp".
	Service string `toml:"service"`
	// RecipientDelimiter is the characters that start an address
	// extension ("+": alice+news@ is alice@), cut off before a Dovecot
	// lookup. Default "": none. An SMTP or LMTP downstream handles
	// extensions itself.
	RecipientDelimiter string `toml:"recipient_delimiter"`
	// Domains, when set, are the only domains whose recipients are
	// verified (".example.com" matches every subdomain); the others get
	// no opinion. Default: every recipient.
	Domains []string `toml:"domains"`
	// Timeout bounds one check: connecting, the probe or lookup, the
	// answer. Default "10s".
	Timeout time.Duration `toml:"timeout"`
	// OnUnreachable is what happens when the downstream cannot be asked
	// (down, timed out, a refused probe sender, Dovecot's FAIL): "defer"
	// (default: 450 4.4.1) or "accept" (no opinion, logged at WARN).
	OnUnreachable string `toml:"on_unreachable"`
	// PositiveTTL is how long a recipient the downstream accepted is
	// remembered. Default "168h" (7 days); "0s" caches none.
	PositiveTTL time.Duration `toml:"positive_ttl"`
	// NegativeTTL is how long a recipient the downstream refused for good
	// is remembered. Default "3h"; "0s" caches none.
	NegativeTTL time.Duration `toml:"negative_ttl"`
	// MaxConnections bounds the checks in flight at once, so that a burst
	// of clients cannot open more connections to the downstream than it
	// serves. Default 8.
	MaxConnections int `toml:"max_connections"`
	// State is the cache's store, from the top-level [state] table; a
	// [plugins.verify.state] table overrides it for this instance.
	State state.Settings `toml:"state"`
}

// Defaults.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultPositiveTTL    = 7 * 24 * time.Hour
	DefaultNegativeTTL    = 3 * time.Hour
	DefaultMaxConnections = 8
)

// Plugin is a verify instance. It is safe for concurrent use.
type Plugin struct {
	checker checker
	target  string // method and host, in cache keys
	domains map[string]bool
	timeout time.Duration
	accept  bool // on_unreachable = "accept"
	posTTL  time.Duration
	negTTL  time.Duration
	slots   chan struct{}
	store   state.Store
	log     *slog.Logger
}

var _ hooks.Rcpt = (*Plugin)(nil)

// checker asks the downstream about one recipient.
type checker interface {
	check(ctx context.Context, rcpt string) answer
	close()
}

// verdict is what the downstream said about a recipient.
type verdict int

const (
	// exists: the downstream would take mail for the recipient.
	exists verdict = iota
	// unknown: refused for good (5xx, NOTFOUND).
	unknown
	// refusedNow: refused for now (4xx).
	refusedNow
	// unreachable: the downstream could not be asked.
	unreachable
)

// answer is a checker's answer: the verdict and, for a refusal, the
// downstream's reply.
type answer struct {
	verdict  verdict
	code     int
	enhanced [3]int
	text     string // the reply's text, without code and enhanced code
	err      error  // why the downstream could not be asked
}

// New builds a verify instance from its settings. It does not connect:
// the downstream may start after Sluice.
func New(decode hooks.Decoder) (*Plugin, error) {
	s := Settings{Method: "smtp", Service: "smtp", Timeout: DefaultTimeout, OnUnreachable: "defer",
		PositiveTTL: DefaultPositiveTTL, NegativeTTL: DefaultNegativeTTL, MaxConnections: DefaultMaxConnections}
	if err := decode(&s); err != nil {
		return nil, err
	}
	p := &Plugin{timeout: s.Timeout, accept: s.OnUnreachable == "accept", posTTL: s.PositiveTTL,
		negTTL: s.NegativeTTL, log: slog.Default()}
	if err := s.check(); err != nil {
		return nil, err
	}
	domains, err := domainSet(s.Domains)
	if err != nil {
		return nil, err
	}
	p.domains = domains
	switch s.Method {
	case "dovecot":
		network, addr := queue.Network(s.Host)
		p.checker = &userdb{network: network, addr: addr, service: s.Service, delimiter: s.RecipientDelimiter}
	default:
		fw := &queue.Forwarder{Addr: s.Host, LMTP: s.Method == "lmtp", ConnectTimeout: s.Timeout}
		fw.StartTLS, _ = queue.ParseTLSMode(s.StartTLS)
		if fw.Helo, err = queue.HeloName(s.Helo); err != nil {
			return nil, err
		}
		p.checker = newProber(fw, s.ProbeSender, min(maxIdle, s.MaxConnections))
	}
	p.target = s.Method + ":" + s.Host
	p.slots = make(chan struct{}, s.MaxConnections)
	if p.store, err = s.State.Open(); err != nil {
		p.checker.close()
		return nil, err
	}
	return p, nil
}

// check validates the settings that need no parsing.
func (s Settings) check() error {
	switch s.Method {
	case "smtp", "lmtp", "dovecot":
	default:
		return fmt.Errorf("method = %q: want \"smtp\", \"lmtp\" or \"dovecot\"", s.Method)
	}
	if err := checkHost(s.Host); err != nil {
		return err
	}
	mode, err := queue.ParseTLSMode(s.StartTLS)
	switch {
	case err != nil:
		return fmt.Errorf("starttls = %w", err)
	case mode != queue.TLSOff && (s.Method == "dovecot" || strings.HasPrefix(s.Host, "unix:")):
		return fmt.Errorf("starttls = %q: only for method \"smtp\" or \"lmtp\" over TCP", s.StartTLS)
	case s.Timeout < time.Millisecond:
		return fmt.Errorf("timeout = %v: want a duration such as \"10s\" (a bare number is nanoseconds)", s.Timeout)
	case s.OnUnreachable != "defer" && s.OnUnreachable != "accept":
		return fmt.Errorf("on_unreachable = %q: want \"defer\" (450 4.4.1) or \"accept\" (let the recipient through)", s.OnUnreachable)
	case s.PositiveTTL < 0 || s.NegativeTTL < 0:
		return fmt.Errorf("positive_ttl = %v, negative_ttl = %v: want durations such as \"168h\" and \"3h\", or \"0s\" to cache nothing", s.PositiveTTL, s.NegativeTTL)
	case s.MaxConnections < 1:
		return fmt.Errorf("max_connections = %d: want at least 1", s.MaxConnections)
	case strings.ContainsAny(s.ProbeSender, "<> \t\r\n") || s.ProbeSender != "" && !strings.Contains(s.ProbeSender, "@"):
		return fmt.Errorf("probe_sender = %q: want an address without brackets (\"double-bounce@example.test\") or \"\" for <>", s.ProbeSender)
	case s.Service == "" || strings.ContainsFunc(s.Service, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("service = %q: want a name like \"smtp\", without white space", s.Service)
	case strings.ContainsAny(s.RecipientDelimiter, "@ \t\r\n"):
		return fmt.Errorf("recipient_delimiter = %q: want characters such as \"+\" or \"+-\"", s.RecipientDelimiter)
	}
	return nil
}

// checkHost validates the host setting, which is required
// (queue.CheckHost).
func checkHost(host string) error {
	if host == "" {
		return errors.New(`host = "": required: the downstream, "host:port" ("127.0.0.1:25") or "unix:/path/to/socket"`)
	}
	return queue.CheckHost(host, "127.0.0.1:25")
}

// domainSet returns the domains in canonical form, a wildcard entry
// keeping its leading dot; nil for none.
func domainSet(list []string) (map[string]bool, error) {
	if len(list) == 0 {
		return nil, nil
	}
	set := make(map[string]bool, len(list))
	for _, d := range list {
		dot := strings.HasPrefix(d, ".")
		c, ok := mailaddr.CanonicalDomain(strings.TrimPrefix(d, "."))
		if !ok || strings.Contains(d, "@") {
			return nil, fmt.Errorf("domains: %q is not a domain (want \"example.test\", or \".example.test\" for its subdomains)", d)
		}
		if dot {
			c = "." + c
		}
		set[c] = true
	}
	return set, nil
}

// Close closes the idle downstream connections and releases the store.
func (p *Plugin) Close() error {
	p.checker.close()
	return p.store.Close()
}

// Rcpt refuses a recipient the downstream does not know; it never accepts
// one.
func (p *Plugin) Rcpt(ctx context.Context, _ *connection.Connection, _ *transaction.Transaction, rcpt string) hooks.Result {
	local, domain, ok := mailaddr.Split(rcpt)
	if !ok || local == "" {
		return hooks.Result{} // <postmaster> and the like: not ours to judge
	}
	canon, valid := mailaddr.CanonicalDomain(domain)
	if !valid {
		canon = mailaddr.LowerASCII(domain)
	}
	if p.domains != nil && !p.inDomains(canon, valid) {
		return hooks.Result{}
	}
	key := "verify:" + p.target + "|" + local + "@" + canon
	if a, ok := p.cached(ctx, key); ok {
		return p.result(rcpt, a, "cached")
	}
	a := p.ask(ctx, rcpt)
	p.remember(ctx, key, a)
	return p.result(rcpt, a, "asked")
}

// inDomains reports whether the canonical domain is one to verify.
func (p *Plugin) inDomains(canon string, valid bool) bool {
	if !valid {
		return false
	}
	if p.domains[canon] {
		return true
	}
	for suffix := range mailaddr.ParentSuffixes(canon) {
		if p.domains[suffix] {
			return true
		}
	}
	return false
}

// ask runs one check, within max_connections and timeout.
func (p *Plugin) ask(ctx context.Context, rcpt string) answer {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return answer{verdict: unreachable, err: fmt.Errorf("all %d max_connections busy: %w", cap(p.slots), ctx.Err())}
	}
	defer func() { <-p.slots }()
	return p.checker.check(ctx, rcpt)
}

// result turns an answer into the hook's result. how ("asked" or
// "cached") goes to the log.
func (p *Plugin) result(rcpt string, a answer, how string) hooks.Result {
	switch a.verdict {
	case unknown:
		return refusal(hooks.Deny, [3]int{5, 1, 1}, 550, 553, a, "<"+rcpt+">: Recipient address rejected: User unknown",
			fmt.Sprintf("verify %s %s: %d", how, p.target, a.code))
	case refusedNow:
		return refusal(hooks.DenySoft, [3]int{4, 1, 1}, 450, 452, a, "<"+rcpt+">: Recipient address rejected: try again later",
			fmt.Sprintf("verify %s %s: %d", how, p.target, a.code))
	case unreachable:
		err := fmt.Errorf("verify: cannot ask %s about <%s>: %w", p.target, rcpt, a.err)
		if p.accept {
			p.log.Warn("verify: recipient let through unverified (on_unreachable = \"accept\")", "rcpt", rcpt, "err", err)
			return hooks.Result{}
		}
		return hooks.Result{Code: hooks.DenySoft, ReplyCode: 450, Enhanced: [3]int{4, 4, 1},
			Msg: "<" + rcpt + ">: Recipient address verification failed: the mailbox server is unreachable; try again later", Err: err}
	}
	return hooks.Result{}
}

// refusal is a refusal with the downstream's words: its reply code when
// it lies in [low, high], its enhanced code when of enhanced's class, and
// its text, else the defaults (enhanced, low, msg).
func refusal(code hooks.Code, enhanced [3]int, low, high int, a answer, msg, detail string) hooks.Result {
	r := hooks.Result{Code: code, ReplyCode: low, Enhanced: enhanced, Msg: a.text, Detail: detail}
	if a.code >= low && a.code <= high {
		r.ReplyCode = a.code
	}
	if a.enhanced[0] == enhanced[0] {
		r.Enhanced = a.enhanced
	}
	if r.Msg == "" {
		r.Msg = msg
	}
	return r
}

// Cached values: "ok", or "no", the code, the enhanced code and the text,
// tab-separated.
func (p *Plugin) cached(ctx context.Context, key string) (answer, bool) {
	v, ok, err := p.store.Get(ctx, key)
	if err != nil {
		// The cache only saves a lookup: ask the downstream instead.
		p.log.Warn("verify: cannot read the cache", "key", key, "err", err)
		return answer{}, false
	}
	if !ok {
		return answer{}, false
	}
	if string(v) == "ok" {
		return answer{verdict: exists}, true
	}
	f := strings.SplitN(string(v), "\t", 4)
	if len(f) != 4 || f[0] != "no" {
		return answer{}, false
	}
	a := answer{verdict: unknown, text: f[3]}
	a.code, _ = strconv.Atoi(f[1])
	fmt.Sscanf(f[2], "%d.%d.%d", &a.enhanced[0], &a.enhanced[1], &a.enhanced[2])
	return a, true
}

// remember caches an answer for good; answers for now are not cached.
func (p *Plugin) remember(ctx context.Context, key string, a answer) {
	var v string
	var ttl time.Duration
	switch a.verdict {
	case exists:
		v, ttl = "ok", p.posTTL
	case unknown:
		v, ttl = fmt.Sprintf("no\t%d\t%d.%d.%d\t%s", a.code, a.enhanced[0], a.enhanced[1], a.enhanced[2], a.text), p.negTTL
	default:
		return
	}
	if ttl == 0 {
		return
	}
	if err := p.store.Set(ctx, key, []byte(v), ttl); err != nil && !errors.Is(err, context.Canceled) {
		p.log.Warn("verify: cannot write the cache", "key", key, "err", err)
	}
}
