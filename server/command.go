package server

import "github.com/sluice-mta/sluice/hooks"

// commands is the one table of verbs the state machine knows: each runs a
// Session method with the command's raw argument. A verb not in it goes
// to the unrecognized_command hook.
var commands map[string]func(*Session, string) hooks.Reply

func init() {
	// Built in init: the methods refer back to the table (through Command).
	commands = map[string]func(*Session, string) hooks.Reply{
		"HELO":     (*Session).Helo,
		"EHLO":     (*Session).Ehlo,
		"MAIL":     (*Session).Mail,
		"RCPT":     (*Session).Rcpt,
		"DATA":     (*Session).Data,
		"BDAT":     (*Session).Bdat,
		"RSET":     (*Session).Rset,
		"NOOP":     (*Session).Noop,
		"VRFY":     (*Session).Vrfy,
		"HELP":     (*Session).Help,
		"QUIT":     (*Session).Quit,
		"STARTTLS": (*Session).StartTLS,
		"AUTH":     (*Session).Auth,
		"XCLIENT":  (*Session).XClient,
	}
}
