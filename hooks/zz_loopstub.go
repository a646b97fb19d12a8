package hooks

import (
	"context"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/transaction"
)

// TEMPORARY: replaced by the hooks-api branch.
func (ch *Chain) CarriesDSN() bool { return false }
func (ch *Chain) RcptOK(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, rcpt string) {
}
