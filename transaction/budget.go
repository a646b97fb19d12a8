package transaction

import "sync/atomic"

// Budget caps the memory that spools hold together: the bytes of message
// bodies kept in memory across every transaction that shares it (a
// server's listeners, say). A spool that would go past it moves to its
// temporary file at once, as it does past its own threshold: spilling to
// disk is better than refusing the message, and memory stays bounded
// however many messages arrive at once.
//
// A Budget is safe for concurrent use. Its zero value and a nil *Budget
// count nothing and never refuse.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes; limit <= 0 means no limit
// (the bytes are still counted).
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// Limit returns the budget's size in bytes; 0 means unlimited.
func (b *Budget) Limit() int64 {
	if b == nil || b.limit < 0 {
		return 0
	}
	return b.limit
}

// Used returns how many bytes spools hold in memory against the budget
// now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// reserve takes n bytes, or nothing and false when that would pass the
// limit.
func (b *Budget) reserve(n int64) bool {
	if b == nil {
		return true
	}
	if b.limit <= 0 {
		b.used.Add(n)
		return true
	}
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// release gives n bytes back.
func (b *Budget) release(n int64) {
	if b != nil && n != 0 {
		b.used.Add(-n)
	}
}
