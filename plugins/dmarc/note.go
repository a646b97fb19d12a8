package dmarc

import (
	"github.com/emersion/go-msgauth/authres"

	"github.com/sluice-mta/sluice/hooks/notes"
)

// Verdict is the DMARC result of a message.
type Verdict struct {
	// Result is pass, fail, none, temperror or permerror.
	Result authres.ResultValue
	// From is the RFC5322.From domain whose policy was evaluated.
	From string
	// Policy is the published policy that applied: "none",
	// "quarantine" or "reject" (sp= for a subdomain); empty when there
	// is none.
	Policy string
	// Disposition is what the plugin did about a fail: "none",
	// "quarantine" (a header and this note, for a later plugin) or
	// "reject", after the admin's settings. When pct= sampled the message
	// out, the next policy down applied (RFC 7489 6.3): a reject became
	// a quarantine, a quarantine none.
	Disposition string
	// SPFAligned and DKIMAligned say which identifier aligned with From.
	SPFAligned, DKIMAligned bool
	// Reason says why, for the logs and the Authentication-Results
	// comment.
	Reason string
}

// NoteResult holds the message's Verdict once the dmarc plugin has run.
var NoteResult = notes.NewKey[Verdict]("dmarc.result")
