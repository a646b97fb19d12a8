package transaction

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// On Linux the spool file is made with O_TMPFILE: it never has a name, so
// a process killed at any instant (even between creating and unlinking a
// named file) leaves nothing in the spool directory. /proc shows such a
// file as "DIR/#INODE (deleted)"; a named one removed after the fact keeps
// its old name there, "DIR/spool-N (deleted)".
func TestSpoolFileNeverHasAName(t *testing.T) {
	dir := t.TempDir()
	s := NewSpool(dir, 1)
	defer s.Close()
	s.Write([]byte("past the threshold"))
	if s.InMemory() {
		t.Fatal("still in memory past the threshold")
	}
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", s.file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(target, dir+"/#") || strings.Contains(target, "spool-") {
		t.Fatalf("the spool file is %q: it had a name (want an O_TMPFILE file, %s/#INODE)", target, dir)
	}
}
