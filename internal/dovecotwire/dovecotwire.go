// Package dovecotwire holds the line-level pieces of Dovecot's auth
// protocols (auth-client, auth-master/userdb) that the dovecotauth and
// verify plugins share: reading a bounded line, tab-escaping a
// parameter, and clipping what Dovecot sent for a log line.
package dovecotwire

import (
	"bufio"
	"errors"
	"strings"
)

// MaxLine is the longest line accepted from Dovecot.
const MaxLine = 64 * 1024

// ReadLine reads one LF-terminated line without the LF; a line longer
// than MaxLine is an error.
func ReadLine(r *bufio.Reader) (string, error) {
	var line []byte
	for {
		chunk, more, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		line = append(line, chunk...)
		if len(line) > MaxLine {
			return "", errors.New("line too long")
		}
		if !more {
			return string(line), nil
		}
	}
}

// Clip shortens what Dovecot sent for a log line.
func Clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// Escape applies Dovecot's tab-escaping to a parameter: \001 escapes
// itself, NUL, TAB, CR and LF, which would otherwise end the parameter.
func Escape(s string) string {
	if !strings.ContainsAny(s, "\x00\x01\t\r\n") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case 0:
			b.WriteString("\x010")
		case 1:
			b.WriteString("\x011")
		case '\t':
			b.WriteString("\x01t")
		case '\r':
			b.WriteString("\x01r")
		case '\n':
			b.WriteString("\x01n")
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
