package dnsbl

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/mailaddr"
	"github.com/sluice-mta/sluice/resolver"
)

// ZoneSettings are the keys of one zone table ([[plugins.dnsbl.zones]],
// [[plugins.rhsbl.zones]]).
type ZoneSettings struct {
	// Zone is the list's DNS zone: "zen.spamhaus.org".
	Zone string `toml:"zone"`
	// Codes are the answers that count as a listing, each with its
	// meaning: "127.0.0.2" = "SBL", or a range "127.0.0.4-127.0.0.7" =
	// "XBL". Empty: any answer in 127.0.0.0/8 except 127.255.255.0/24
	// (the lists' error codes) counts.
	Codes map[string]string `toml:"codes"`
	// Message is the reply's text, with {class}, {what}, {zone}, {code},
	// {meaning} and {reason} replaced. Default DefaultMessage.
	Message string `toml:"message"`
	// TXT fetches the list's TXT record of a listing, for {reason}.
	TXT bool `toml:"txt"`
	// Action is what a listing does: "deny" (default), "defer" or
	// "note".
	Action string `toml:"action"`
}

// DefaultMessage is the reply text of a listing when a zone sets none:
// Postfix's ("Service unavailable; Client host [192.0.2.1] blocked using
// zen.example; ...").
const DefaultMessage = "Service unavailable; {class} [{what}] blocked using {zone}; {reason}"

// Action is what a listing in a zone does.
type Action int

// The actions, weakest first.
const (
	// Note only notes the listing.
	Note Action = iota
	// Defer refuses temporarily (451 4.7.1).
	Defer
	// Deny refuses (554 5.7.1).
	Deny
)

var actionNames = [...]string{Note: "note", Defer: "defer", Deny: "deny"}

// String returns the action's setting ("deny").
func (a Action) String() string { return actionNames[a] }

// codeRange is one entry of a zone's codes filter.
type codeRange struct {
	first, last netip.Addr
	meaning     string
}

// zone is one configured list.
type zone struct {
	name    string // "zen.spamhaus.org", lower case, no trailing dot
	codes   []codeRange
	message string
	txt     bool
	action  Action
}

// errorCodes are the answers lists give for a refused query (Spamhaus
// answers 127.255.255.254 to a query through a public resolver): never a
// listing.
var errorCodes = netip.MustParsePrefix("127.255.255.0/24")

var loopback8 = netip.MustParsePrefix("127.0.0.0/8")

// meaning returns whether answer a is a listing under the zone's filter,
// and what it means ("" when the filter gives no meaning).
func (z *zone) meaning(a netip.Addr) (string, bool) {
	if errorCodes.Contains(a) {
		return "", false
	}
	if len(z.codes) == 0 {
		return "", loopback8.Contains(a)
	}
	for _, c := range z.codes {
		if a.Compare(c.first) >= 0 && a.Compare(c.last) <= 0 {
			return c.meaning, true
		}
	}
	return "", false
}

// Lists are a plugin instance's zones with their DNS client and cache. A
// Lists is safe for concurrent use; rhsbl builds one too.
type Lists struct {
	zones []*zone
	dns   *client
	cache *cache
	now   func() time.Time
}

// NewLists checks the zone settings and builds their lookups: through
// the servers of dnsSettings, each answer kept for its TTL but at most
// cacheTTL (0 disables the cache), at most cacheSize answers.
func NewLists(zs []ZoneSettings, dnsSettings resolver.Settings, cacheTTL time.Duration, cacheSize int) (*Lists, error) {
	if len(zs) == 0 {
		return nil, fmt.Errorf("zones: none is set: add a [[plugins.NAME.zones]] table with zone = \"...\"")
	}
	if cacheTTL < 0 {
		return nil, fmt.Errorf("cache_ttl = %v: want a duration such as \"10m\", or \"0s\" for no cache", cacheTTL)
	}
	if cacheSize < 0 {
		return nil, fmt.Errorf("cache_size = %d: want 0 or more", cacheSize)
	}
	l := &Lists{cache: newCache(cacheTTL, cacheSize), now: time.Now}
	for i, s := range zs {
		z, err := newZone(s)
		if err != nil {
			return nil, fmt.Errorf("zones[%d]: %w", i, err)
		}
		for _, o := range l.zones {
			if o.name == z.name {
				return nil, fmt.Errorf("zones[%d]: zone %q is listed twice", i, s.Zone)
			}
		}
		l.zones = append(l.zones, z)
	}
	var err error
	if l.dns, err = newClient(dnsSettings); err != nil {
		return nil, err
	}
	return l, nil
}

func newZone(s ZoneSettings) (*zone, error) {
	name, ok := Domain(s.Zone)
	if !ok {
		return nil, fmt.Errorf("zone = %q: want a DNS zone such as \"zen.spamhaus.org\"", s.Zone)
	}
	z := &zone{name: name, message: s.Message, txt: s.TXT}
	if z.message == "" {
		z.message = DefaultMessage
	}
	if strings.ContainsAny(z.message, "\r\n") {
		return nil, fmt.Errorf("message = %q: a reply text is one line", s.Message)
	}
	switch s.Action {
	case "", "deny":
		z.action = Deny
	case "defer":
		z.action = Defer
	case "note":
		z.action = Note
	default:
		return nil, fmt.Errorf("action = %q: want \"deny\", \"defer\" or \"note\"", s.Action)
	}
	for k, meaning := range s.Codes {
		first, last, isRange := strings.Cut(k, "-")
		a, err1 := netip.ParseAddr(strings.TrimSpace(first))
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = netip.ParseAddr(strings.TrimSpace(last))
		}
		if err1 != nil || err2 != nil || !a.Is4() || !b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("codes: %q: want an IPv4 answer such as \"127.0.0.2\" or a range \"127.0.0.4-127.0.0.7\"", k)
		}
		if strings.ContainsAny(meaning, "\r\n") {
			return nil, fmt.Errorf("codes: %q = %q: a meaning is one line", k, meaning)
		}
		z.codes = append(z.codes, codeRange{a, b, meaning})
	}
	// Map order is random: sort, so overlapping ranges match the same way
	// every time (the narrower first, as it is the more specific).
	slices.SortFunc(z.codes, func(x, y codeRange) int {
		if c := x.first.Compare(y.first); c != 0 {
			return c
		}
		return x.last.Compare(y.last)
	})
	return z, nil
}

// Domain returns the canonical form of name when it is a domain with at
// least two labels, not an address literal: a zone, or a name worth
// looking up in one.
func Domain(name string) (string, bool) {
	d, ok := mailaddr.CanonicalDomain(name)
	if !ok || strings.HasPrefix(d, "[") || !strings.Contains(d, ".") {
		return "", false
	}
	return d, true
}

// Listing is one zone's listing of a client address or a domain, as the
// notes dnsbl.NoteListings and rhsbl.NoteListings hold it.
type Listing struct {
	// Zone is the list: "zen.spamhaus.org".
	Zone string
	// Name is what is listed: the client's IP address, or the domain.
	Name string
	// Codes are the list's answers that passed the zone's codes filter:
	// 127.0.0.2, 127.0.0.4.
	Codes []netip.Addr
	// Meanings are the filter's words for those codes, without repeats:
	// "SBL", "XBL". Empty when the filter names none.
	Meanings []string
	// Reason is the list's TXT record, when the zone has txt = true and
	// the list has one.
	Reason string
	// Action is what the zone's setting makes of it.
	Action Action
}

// Result is one zone's answer for one name: a listing, nothing, or a
// failure.
type Result struct {
	// Zone is the zone asked.
	Zone string
	// Listing is set when the name is listed.
	Listing *Listing
	// Err is set when the lookup failed (timeout, SERVFAIL, an answer in
	// 127.255.255.0/24).
	Err error

	z *zone
}

// Pending is the lookups of one name in every zone of a Lists, started
// by Start and collected by Wait.
type Pending struct {
	done    chan struct{}
	results []Result
}

// closedDone is the done channel of a Pending answered from the cache.
var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Start starts the lookups of name (a reversed IP address as
// ReverseIP gives, or a domain) in every zone, in the background, until
// they end or ctx is cancelled. Answers in the cache are used at once.
func (l *Lists) Start(ctx context.Context, name, shown string) *Pending {
	p := &Pending{results: make([]Result, len(l.zones))}
	var missing []int
	now := l.now()
	for i, z := range l.zones {
		if r, ok := l.fromCache(z, name, shown, now); ok {
			p.results[i] = r
		} else {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		p.done = closedDone
		return p
	}
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		for _, i := range missing {
			wg.Go(func() { p.results[i] = l.lookup(ctx, l.zones[i], name, shown) })
		}
		wg.Wait()
	}()
	return p
}

// Running reports whether some lookups have not ended yet.
func (p *Pending) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Wait returns the results, one per zone in the configured order, once
// every lookup has ended; ok is false when ctx ended first.
func (p *Pending) Wait(ctx context.Context) (results []Result, ok bool) {
	select {
	case <-p.done:
		return p.results, true
	case <-ctx.Done():
		return nil, false
	}
}

func qname(z *zone, name string) string { return name + "." + z.name + "." }

// fromCache answers from the cache alone, when it holds the A answer and,
// for a listing in a zone with txt, the TXT one.
func (l *Lists) fromCache(z *zone, name, shown string, now time.Time) (Result, bool) {
	q := qname(z, name)
	rrs, ok := l.cache.get("A "+q, now)
	if !ok {
		return Result{}, false
	}
	r := l.result(z, shown, rrs)
	if r.Listing != nil && z.txt {
		txt, ok := l.cache.get("TXT "+q, now)
		if !ok {
			return Result{}, false
		}
		r.Listing.Reason = reason(txt)
	}
	return r, true
}

// lookup asks the zone about name: its A records, then, for a listing in
// a zone with txt, its TXT record.
func (l *Lists) lookup(ctx context.Context, z *zone, name, shown string) Result {
	q := qname(z, name)
	a, err := l.dns.query(ctx, q, dns.TypeA)
	if err != nil {
		return Result{Zone: z.name, Err: err, z: z}
	}
	r := l.result(z, shown, a.rrs)
	if r.Err == nil {
		l.cache.put("A "+q, a, l.now())
	}
	if r.Listing != nil && z.txt {
		// The TXT record only words the reply: without it the listing
		// stands, with the filter's meaning in its place.
		if t, err := l.dns.query(ctx, q, dns.TypeTXT); err == nil {
			r.Listing.Reason = reason(t.rrs)
			l.cache.put("TXT "+q, t, l.now())
		}
	}
	return r
}

// result reads an A answer through the zone's filter.
func (l *Lists) result(z *zone, shown string, rrs []dns.RR) Result {
	r := Result{Zone: z.name, z: z}
	var li *Listing
	for _, rr := range rrs {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(a.A.To4())
		if errorCodes.Contains(ip) {
			r.Err = fmt.Errorf("%s refused the query (answer %v): it may not answer the resolver used, or wants a key", z.name, ip)
			return r
		}
		m, ok := z.meaning(ip)
		if !ok {
			continue
		}
		if li == nil {
			li = &Listing{Zone: z.name, Name: shown, Action: z.action}
		}
		li.Codes = append(li.Codes, ip)
		if m != "" && !slices.Contains(li.Meanings, m) {
			li.Meanings = append(li.Meanings, m)
		}
	}
	r.Listing = li
	return r
}

// reason joins the TXT records of a listing into one line of printable
// ASCII, at most 200 bytes: it goes into an SMTP reply, and a list's
// record is not ours to trust.
func reason(rrs []dns.RR) string {
	var b strings.Builder
	for _, rr := range rrs {
		t, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		for _, s := range t.Txt {
			// miekg/dns keeps a string in zone-file form: a byte that
			// is not printable is \DDD, a quote or backslash \" or \\.
			for i := 0; i < len(s); i++ {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
						n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
						c = byte(min(n, 255))
						i += 3
					} else {
						c = s[i+1]
						i++
					}
				}
				if c < 0x20 || c > 0x7e {
					c = ' '
				}
				b.WriteByte(c)
			}
		}
	}
	s := strings.Join(strings.Fields(b.String()), " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// Verdict is what a set of results comes to: the listings, the zones
// whose lookup failed, and the reply of the strongest listing (the first
// in zone order among those of the strongest action), or a declining
// Result.
type Verdict struct {
	Listings []Listing
	Failed   []Result
	Reply    hooks.Result
}

// Judge reads results for a reply. class and what word it: "Client host"
// and "192.0.2.1", "Sender address" and "alice@example.com".
func Judge(results []Result, class, what string) Verdict {
	var v Verdict
	var top *Result
	for i := range results {
		r := &results[i]
		switch {
		case r.Err != nil:
			v.Failed = append(v.Failed, *r)
		case r.Listing != nil:
			v.Listings = append(v.Listings, *r.Listing)
			if r.Listing.Action > Note && (top == nil || r.Listing.Action > top.Listing.Action) {
				top = r
			}
		}
	}
	if top == nil {
		return v
	}
	li := top.Listing
	text := expand(top.z.message, func(key string) (string, bool) {
		switch key {
		case "class":
			return class, true
		case "what":
			return what, true
		case "zone":
			return li.Zone, true
		case "code":
			return li.Codes[0].String(), true
		case "meaning":
			return strings.Join(li.Meanings, ", "), true
		case "reason":
			return listingReason(li), true
		}
		return "", false
	})
	detail := fmt.Sprintf("listed=%s zone=%s codes=%v", li.Name, li.Zone, li.Codes)
	if li.Action == Deny {
		v.Reply = hooks.Result{Code: hooks.Deny, ReplyCode: 554, Enhanced: [3]int{5, 7, 1}, Msg: text, Detail: detail}
	} else {
		v.Reply = hooks.Result{Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 7, 1}, Msg: text, Detail: detail}
	}
	return v
}

// expand replaces each {key} of template that value knows; the rest stays
// as written.
func expand(template string, value func(key string) (string, bool)) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(template, '{')
		j := strings.IndexByte(template[i+1:], '}')
		if i < 0 || j < 0 {
			b.WriteString(template)
			return b.String()
		}
		j += i + 1
		if v, ok := value(template[i+1 : j]); ok {
			b.WriteString(template[:i])
			b.WriteString(v)
		} else {
			b.WriteString(template[:j+1])
		}
		template = template[j+1:]
	}
}

// listingReason is {reason}: the TXT record, else the meanings, else the
// first code.
func listingReason(li *Listing) string {
	switch {
	case li.Reason != "":
		return li.Reason
	case len(li.Meanings) > 0:
		return "listed as " + strings.Join(li.Meanings, ", ")
	default:
		return "listed as " + li.Codes[0].String()
	}
}

// FailureReply is the reply when lookups failed and the plugin defers on
// failure: 451 4.4.3, naming the first zone that failed.
func FailureReply(failed []Result, class, what string) hooks.Result {
	return hooks.Result{
		Code: hooks.DenySoft, ReplyCode: 451, Enhanced: [3]int{4, 4, 3},
		Msg:    fmt.Sprintf("Service temporarily unavailable; cannot check %s [%s] against %s; try again later", strings.ToLower(class), what, failed[0].Zone),
		Detail: fmt.Sprintf("dns_failure=%v", failed[0].Err),
	}
}
