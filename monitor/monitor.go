// Package monitor is what an operator sees of a running server: a live
// feed of what happens on every connection (Event, Bus), and the figures
// since start (Snapshot: connections, transactions, results, latency per
// hook and per plugin). The server publishes to it; the control socket
// (`smtpd stats`), the Prometheus exposition and the live web view on the
// admin listener read from it.
package monitor

import (
	"sync"
	"time"
)

// Event kinds, in the order they happen on a connection.
const (
	KindConnect    = "connect"    // a client connected (Remote)
	KindHelo       = "helo"       // HELO or EHLO (Helo)
	KindTLS        = "tls"        // TLS started (TLS: its version)
	KindAuth       = "auth"       // AUTH succeeded (User)
	KindMail       = "mail"       // MAIL accepted (Sender)
	KindRcpt       = "rcpt"       // RCPT accepted (Rcpt)
	KindHook       = "hook"       // a plugin decided something other than DECLINED (Hook, Plugin, Code, Reply)
	KindQueued     = "queued"     // the message was queued (Plugin, QueueID)
	KindTxEnd      = "tx_end"     // a transaction ended (Result, Reply)
	KindDisconnect = "disconnect" // the connection closed
)

// Results of a transaction (Event.Result, Snapshot.Messages).
const (
	ResultAccepted = "accepted" // queued: the client got 250
	ResultDeferred = "deferred" // refused for now (4xx)
	ResultRefused  = "refused"  // refused for good (5xx)
	ResultAborted  = "aborted"  // the client left or reset before the end of data, with a recipient accepted
)

// Event is one thing that happened on a connection. Only the fields its
// Kind names are set, beside the connection's own (Time, Listener, Conn,
// Remote).
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Listener string    `json:"listener"`
	Conn     string    `json:"conn"`
	Remote   string    `json:"remote"`
	Tx       string    `json:"tx,omitempty"`

	Helo    string   `json:"helo,omitempty"`
	TLS     string   `json:"tls,omitempty"`
	User    string   `json:"user,omitempty"`
	Sender  string   `json:"sender,omitempty"`
	Rcpt    string   `json:"rcpt,omitempty"`
	Hook    string   `json:"hook,omitempty"`
	Plugin  string   `json:"plugin,omitempty"`
	Code    string   `json:"code,omitempty"`  // hooks.Code's name: OK, DENY, DENYSOFT...
	Reply   string   `json:"reply,omitempty"` // the reply the client got, "550 5.7.1 ..."
	QueueID string   `json:"queue_id,omitempty"`
	Result  string   `json:"result,omitempty"` // Result* for tx_end
	Size    int64    `json:"size,omitempty"`
	Rcpts   []string `json:"rcpts,omitempty"` // tx_end: every accepted recipient

	Duration time.Duration `json:"duration_ns,omitempty"` // hook: the plugin's time; tx_end, disconnect: since start
}

// Bus hands events to subscribers and keeps the latest ones for a page
// that opens late. Publishing never blocks: a subscriber that does not
// keep up loses events (and learns it from a gap in Seq). The zero value
// is not usable; see NewBus.
type Bus struct {
	mu     sync.Mutex
	seq    uint64
	recent []Event // a ring of the latest events
	next   int
	full   bool
	subs   map[chan Event]struct{}
}

// NewBus returns a Bus that keeps the latest keep events.
func NewBus(keep int) *Bus {
	if keep <= 0 {
		keep = 1000
	}
	return &Bus{recent: make([]Event, keep), subs: map[chan Event]struct{}{}}
}

// Publish numbers e, keeps it and hands it to every subscriber with room.
func (b *Bus) Publish(e Event) {
	if b == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	e.Seq = b.seq
	b.recent[b.next] = e
	b.next++
	if b.next == len(b.recent) {
		b.next, b.full = 0, true
	}
	for ch := range b.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

// Subscribe returns a channel of the events published from now on, with
// room for buf of them, and the function that ends the subscription.
func (b *Bus) Subscribe(buf int) (<-chan Event, func()) {
	ch := make(chan Event, max(buf, 1))
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
		})
	}
}

// Recent returns the kept events, oldest first.
func (b *Bus) Recent() []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.full {
		return append([]Event(nil), b.recent[:b.next]...)
	}
	return append(append([]Event(nil), b.recent[b.next:]...), b.recent[:b.next]...)
}

// Latency sums up the durations of one hook or one plugin since start.
type Latency struct {
	Name  string        `json:"name"` // the hook ("rcpt"), or "plugin/hook" ("rcptok/rcpt")
	Count uint64        `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Outcome counts the transactions that ended one way: by result, and for
// refusals the plugin and code that decided.
type Outcome struct {
	Result string `json:"result"`           // Result*
	Plugin string `json:"plugin,omitempty"` // the deciding plugin ("" when the server itself refused)
	Code   string `json:"code,omitempty"`   // the SMTP reply code, "550"
	Count  uint64 `json:"count"`
}

// Snapshot is the server's figures since start.
type Snapshot struct {
	Started          time.Time `json:"started"`
	ConnectionsOpen  int64     `json:"connections_open"`
	ConnectionsTotal uint64    `json:"connections_total"`
	Transactions     uint64    `json:"transactions"`
	Messages         []Outcome `json:"messages"`
	Hooks            []Latency `json:"hooks"`
	Plugins          []Latency `json:"plugins"`
}
