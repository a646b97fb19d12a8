package cli

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/sluice-mta/sluice/plugins/authfile"
)

// DefaultPasswdPath is where `smtpd passwd` writes without -file.
const DefaultPasswdPath = "/etc/sluice/passwd"

// passwd adds a user to an authfile password file, or changes its
// password. The password is read from the terminal without echo (asked
// twice), or from the first line of standard input when it is not a
// terminal, so scripts can pipe it in; it never appears in argv.
func passwd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("file", DefaultPasswdPath, "password file (the authfile plugin's path)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: smtpd passwd [-file FILE] USER\n\nSets USER's password in FILE (argon2id), creating the file (mode 0600) if needed.\nThe password is asked for on the terminal, or read from the first line of standard input.\n")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	user := fs.Arg(0)
	if err := authfile.CheckUser(user); err != nil {
		fmt.Fprintf(stderr, "smtpd passwd: %v\n", err)
		return 1
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "smtpd passwd: %v\n", err)
		return 1
	}
	if err := authfile.SetPassword(*path, user, pw); err != nil {
		fmt.Fprintf(stderr, "smtpd passwd: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "password set for %s in %s\n", user, *path)
	return 0
}

func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the two passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("no password on standard input")
	}
	return pw, nil
}
