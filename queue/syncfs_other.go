//go:build !linux

package queue

import (
	"errors"
	"os"
)

// errNoSyncfs says syncfs(2) is not available here.
var errNoSyncfs = errors.New("syncfs is not available")

// syncfs is Linux only; elsewhere the data round fsyncs each file.
func syncfs(*os.File) error { return errNoSyncfs }
