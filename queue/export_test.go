package queue

import (
	"io"

	"github.com/sluice-mta/sluice/transaction"
)

// Convert7BitWalk is Write7Bit without its shortcut for a message without
// 8-bit bytes: the converting walk runs whatever the message holds, so a
// test can check that the walk leaves a converted message as it is.
func Convert7BitWalk(w io.Writer, tx *transaction.Transaction) (int64, error) {
	scan := newWalker(tx.Message(), nil, nil)
	if err := scan.run(); err != nil {
		return 0, err
	}
	return convert7Bit(w, tx, scan.leaves)
}
