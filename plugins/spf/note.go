package spf

import (
	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/hooks/notes"
)

// Verdict is the SPF result of a transaction, kept in the transaction note
// NoteResult for dmarc, authresults and any later plugin.
type Verdict struct {
	// Result is pass, fail, softfail, neutral, none, temperror or
	// permerror (RFC 7208 section 2.6).
	Result authres.ResultValue
	// Identity is the identity that was checked: "mailfrom", or "helo"
	// when the sender is <> (RFC 7208 section 2.4).
	Identity string
	// Domain is the domain whose policy was evaluated: the sender's, or
	// the HELO name.
	Domain string
	// Sender is the address checked: the MAIL FROM address, or
	// "postmaster@" and the HELO name.
	Sender string
	// Reason says why, for the logs and the Authentication-Results
	// comment: the mechanism that matched or the error.
	Reason string
}

// NoteResult holds the transaction's Verdict once the spf plugin has run
// at mail; it is absent when the check was skipped (relay client,
// authenticated user).
var NoteResult = notes.NewKey[Verdict]("spf.result")
