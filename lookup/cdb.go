package lookup

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/qmailctl"
)

// cdbTable is a CDB file, kept open (its reads are ReadAt: safe for
// concurrent use).
type cdbTable struct {
	path string
	db   *qmailctl.CDB
}

func openCDB(path string) (*cdbTable, error) {
	db, err := qmailctl.OpenCDB(path)
	if err != nil {
		return nil, fmt.Errorf("cdb: cannot open the table: %w", err)
	}
	return &cdbTable{path: path, db: db}, nil
}

// Lookup reads key from the file; a read error is an error, not a miss.
func (t *cdbTable) Lookup(_ context.Context, key string) (string, bool, error) {
	v, ok, err := t.db.Get([]byte(key))
	if err != nil {
		return "", false, fmt.Errorf("cdb %s: %w", t.path, err)
	}
	return string(v), ok, nil
}

// Close closes the file.
func (t *cdbTable) Close() error { return t.db.Close() }
