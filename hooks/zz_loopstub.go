package hooks

import (
	"context"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// TEMPORARY: replaced by the hooks-api branch.
func (ch *Chain) CarriesDSN() bool {
	for _, e := range ch.queue {
		d, ok := any(e.p).(interface{ CarriesDSN() bool })
		if !ok || !d.CarriesDSN() {
			return false
		}
	}
	return len(ch.queue) > 0
}
func (ch *Chain) RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) {
}
