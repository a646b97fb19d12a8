package queue

import (
	"time"

	"github.com/sluice-mta/sluice/transaction"
)

// Report describes a delivery status notification to build (stub until
// dsn.go lands).
type Report struct {
	ReportingMTA string
	RemoteMTA    string
	Arrival      time.Time
	Failed       []Outcome
}

// Bounce is a stub.
func Bounce(tx *transaction.Transaction, r Report) (*transaction.Transaction, error) { return nil, nil }
