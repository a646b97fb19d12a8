package transaction

import "os"

// createUnlinked returns a read-write file in dir that has no name: on
// Linux an O_TMPFILE file, which never has one, so a process killed at any
// moment leaves nothing in dir. Where the kernel or the filesystem has no
// O_TMPFILE it falls back to a named temporary file removed at once (a
// crash between the two leaves one spool-* file behind).
func createUnlinked(dir string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if oTmpfile != 0 {
		if f, err := os.OpenFile(dir, oTmpfile|os.O_RDWR, 0o600); err == nil {
			return f, nil
		}
		// No O_TMPFILE here (EOPNOTSUPP, or EISDIR from a kernel that
		// predates it), or dir is unusable, which CreateTemp then reports.
	}
	f, err := os.CreateTemp(dir, "spool-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}
