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

var errNoUnnamed = errors.New("unnamed files are Linux only")

// openUnnamed is Linux only; elsewhere messages are written to tmp/.
func openUnnamed(string) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(*os.File, string) error { return errNoUnnamed }
