package queue

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// errNoSyncfs says syncfs(2) cannot be relied on here.
var errNoSyncfs = errors.New("syncfs is not available")

// syncfsReports is whether syncfs(2) returns write-back errors: Linux
// before 5.8 always returned 0, so a failed write would go unnoticed and
// the message be acknowledged; there the data round fsyncs each file.
var syncfsReports = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
})

// kernelAtLeast parses the "6.1.0-18-amd64" form of a kernel release.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	maj, err1 := strconv.Atoi(parts[0])
	digits := parts[1]
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	min, err2 := strconv.Atoi(digits)
	if err1 != nil || err2 != nil {
		return false
	}
	return maj > major || maj == major && min >= minor
}

// syncfs writes back every dirty page and inode of the file system that
// holds f and commits its journal: one call makes all the files written
// there durable.
func syncfs(f *os.File) error {
	if !syncfsReports() {
		return errNoSyncfs
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := sc.Control(func(fd uintptr) { serr = unix.Syncfs(int(fd)) }); err != nil {
		return err
	}
	if errors.Is(serr, unix.ENOSYS) {
		return errNoSyncfs
	}
	if serr != nil {
		return &os.SyscallError{Syscall: "syncfs", Err: serr}
	}
	return nil
}

// openUnnamed opens a new file without a name in dir (O_TMPFILE): it
// exists only for this descriptor until linkUnnamed gives it one, and
// vanishes if the process dies first. Where the kernel or the file system
// has no O_TMPFILE the error wraps errNoUnnamed.
func openUnnamed(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EISDIR), errors.Is(err, unix.EINVAL):
		return nil, fmt.Errorf("%w: %s: %v", errNoUnnamed, dir, err)
	case err != nil:
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// errNoUnnamed says unnamed files (O_TMPFILE) are not available.
var errNoUnnamed = errors.New("unnamed files (O_TMPFILE) are not supported")

// linkUnnamed gives an openUnnamed file the name path; like link(2) it
// never replaces an existing file. It goes through /proc/self/fd, which
// needs no privilege (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
func linkUnnamed(f *os.File, path string) error {
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("maildir: link %s: the name is already taken: %w", path, &os.LinkError{Op: "link", Old: f.Name(), New: path, Err: err})
		}
		return fmt.Errorf("maildir: link %s: %w", path, &os.LinkError{Op: "link", Old: f.Name(), New: path, Err: err})
	}
	return nil
}
