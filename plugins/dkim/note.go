package dkim

import (
	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/hooks/notes"
)

// Signature is the verification result of one DKIM-Signature header.
type Signature struct {
	// Domain is the signing domain (d=), Selector the key's selector
	// (s=), Identifier the agent or user identifier (i=, "@" and the
	// domain when the signature has none).
	Domain, Selector, Identifier string
	// Algorithm is the signature's algorithm (a=): "rsa-sha256",
	// "ed25519-sha256".
	Algorithm string
	// Result is pass, fail, policy, temperror or permerror (RFC 8601
	// section 2.7.1).
	Result authres.ResultValue
	// Reason says why a signature did not pass ("body hash did not
	// verify", "no key for signature").
	Reason string
}

// NoteResults holds one Signature per DKIM-Signature header of the message,
// in header order, once the dkim plugin has run at data_post; an empty
// list means the message was not signed.
var NoteResults = notes.NewKey[[]Signature]("dkim.results")
