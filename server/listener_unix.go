package server

import "syscall"

// errTooManyFiles is accept's error when the process is out of file
// descriptors: a reason to wait, not to stop listening.
var errTooManyFiles = syscall.EMFILE
