package authfile

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// The argon2id parameters HashPassword uses: 64 MiB of memory, 3 passes,
// 4 lanes, a 16-byte salt and a 32-byte key (RFC 9106's second recommended
// option, and the defaults of Dovecot's ARGON2ID scheme but for the lanes).
const (
	ArgonMemory  = 64 * 1024 // KiB
	ArgonTime    = 3
	ArgonThreads = 4
	ArgonSaltLen = 16
	ArgonKeyLen  = 32
)

// verifier checks a password against one stored hash in constant time.
type verifier interface {
	verify(password string) bool
}

// bcryptHash is a "$2a$", "$2b$" or "$2y$" hash.
type bcryptHash []byte

func (h bcryptHash) verify(password string) bool {
	return bcrypt.CompareHashAndPassword(h, []byte(password)) == nil
}

// argonHash is a parsed "$argon2id$v=19$m=..,t=..,p=..$salt$key" string.
type argonHash struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

func (h *argonHash) verify(password string) bool {
	k := argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(k, h.key) == 1
}

// parseHash reads one stored hash; the error says what is wrong without
// repeating the hash.
func parseHash(s string) (verifier, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		// bcrypt.Cost checks the version, the cost and the length; its
		// errors may quote the hash, so they are not passed on.
		if _, err := bcrypt.Cost([]byte(s)); err != nil || len(s) != 60 {
			return nil, errors.New("malformed bcrypt hash: want $2b$<cost>$ and 53 characters of salt and hash")
		}
		return bcryptHash(s), nil
	case strings.HasPrefix(s, "$argon2id$"):
		h, err := parseArgon2id(s)
		if err != nil {
			return nil, fmt.Errorf("malformed argon2id hash: %v", err)
		}
		return h, nil
	}
	// Name the scheme, never the rest: the field may be a password.
	what := "not a hash (a plain-text password?)"
	if i := strings.IndexByte(s[min(1, len(s)):], '$'); strings.HasPrefix(s, "$") && i >= 0 && i <= 16 {
		what = fmt.Sprintf("unknown password scheme %q", s[:i+2])
	} else if j := strings.IndexByte(s, '}'); strings.HasPrefix(s, "{") && j >= 0 && j <= 24 {
		what = fmt.Sprintf("unknown password scheme %q (write the hash without the Dovecot scheme prefix)", s[:j+1])
	}
	return nil, fmt.Errorf("%s: want bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$v=19$...); `smtpd passwd` writes argon2id", what)
}

// parseArgon2id reads the PHC string format of the reference
// implementation: $argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>, salt and key
// in unpadded standard base64.
func parseArgon2id(s string) (*argonHash, error) {
	f := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(f) != 6 {
		return nil, errors.New(`want $argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>`)
	}
	if f[2] != "v=19" {
		return nil, fmt.Errorf("version %q: only v=19 is supported", f[2])
	}
	h := &argonHash{}
	var seen [3]bool
	for _, kv := range strings.Split(f[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("parameter %q: want m=<KiB>,t=<passes>,p=<lanes>", kv)
		}
		switch k {
		case "m":
			h.memory, seen[0] = uint32(n), true
		case "t":
			h.time, seen[1] = uint32(n), true
		case "p":
			if n > 255 {
				return nil, fmt.Errorf("p=%d: at most 255 lanes", n)
			}
			h.threads, seen[2] = uint8(n), true
		default:
			return nil, fmt.Errorf("unknown parameter %q", k)
		}
	}
	switch {
	case seen != [3]bool{true, true, true}:
		return nil, errors.New("want the three parameters m, t and p")
	case h.time < 1 || h.threads < 1:
		return nil, errors.New("t and p must be at least 1")
	case h.memory < 8*uint32(h.threads):
		return nil, fmt.Errorf("m=%d: want at least 8 KiB per lane", h.memory)
	case h.memory > 4*1024*1024:
		return nil, fmt.Errorf("m=%d: more than 4 GiB per check", h.memory)
	}
	var err error
	if h.salt, err = base64.RawStdEncoding.Strict().DecodeString(f[4]); err != nil || len(h.salt) < 8 {
		return nil, errors.New("salt: want at least 8 bytes in unpadded base64")
	}
	if h.key, err = base64.RawStdEncoding.Strict().DecodeString(f[5]); err != nil || len(h.key) < 16 {
		return nil, errors.New("key: want at least 16 bytes in unpadded base64")
	}
	return h, nil
}

// HashPassword returns the argon2id hash of password in the PHC string
// format ($argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>) with a fresh random
// 16-byte salt: the form `smtpd passwd` writes into the password file.
// Dovecot's ARGON2ID scheme reads the same string.
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	salt := make([]byte, ArgonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, ArgonTime, ArgonMemory, ArgonThreads, ArgonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, ArgonMemory, ArgonTime, ArgonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// CheckUser reports why user cannot be a password file entry: empty, with a
// ':' or a control character (newline, NUL), with surrounding white space,
// or starting with '#' (a comment).
func CheckUser(user string) error {
	switch {
	case user == "":
		return errors.New("empty user name")
	case strings.ContainsRune(user, ':'):
		return fmt.Errorf("user name %q contains ':'", user)
	case strings.ContainsFunc(user, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("user name %q contains a control character (newline, tab, NUL)", user)
	case strings.TrimSpace(user) != user:
		return fmt.Errorf("user name %q starts or ends with white space", user)
	case strings.HasPrefix(user, "#"):
		return fmt.Errorf("user name %q starts with '#' (a comment)", user)
	}
	return nil
}

// SetPassword sets user's password in the password file at path: it
// replaces the user's line, or appends one, keeping every other line and
// comment as it was. The new file replaces the old one atomically (a
// temporary file in the same folder, fsync, rename, fsync of the folder)
// with the old file's mode and owner; a file that does not exist is created
// with mode 0600. It refuses a user name CheckUser refuses, an empty
// password, and an existing file that the authfile plugin would refuse.
//
// Two SetPassword calls on the same file at once may lose one update: run
// one `smtpd passwd` at a time.
func SetPassword(path, user, password string) error {
	if err := CheckUser(user); err != nil {
		return err
	}
	if password == "" {
		return errors.New("empty password")
	}
	old, err := os.ReadFile(path)
	var info fs.FileInfo
	switch {
	case err == nil:
		if info, err = os.Stat(path); err != nil {
			return err
		}
		if _, err := parseFile(path, old); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	default:
		return err
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return err
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}

	var out bytes.Buffer
	replaced := false
	sc := bufio.NewScanner(bytes.NewReader(old))
	sc.Buffer(nil, maxLine)
	for sc.Scan() {
		line := sc.Text()
		if u, _, ok := splitEntry(line); ok && u == user {
			if replaced {
				continue // parseFile refuses duplicates; belt and braces
			}
			line, replaced = user+":"+hash, true
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !replaced {
		out.WriteString(user + ":" + hash + "\n")
	}
	return writeAtomic(path, out.Bytes(), info)
}

// writeAtomic replaces path with data: temporary file, fsync, rename,
// fsync of the folder. old is the replaced file's info, nil for a new file.
func writeAtomic(path string, data []byte, old fs.FileInfo) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	mode := fs.FileMode(0o600)
	if old != nil {
		mode = old.Mode().Perm()
		if st, ok := old.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid()) {
			if err := tmp.Chown(int(st.Uid), int(st.Gid)); err != nil {
				return fmt.Errorf("keep the owner of %s: %w", path, err)
			}
		}
	}
	if err = tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil // the rename is done; only its durability is unsure
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
