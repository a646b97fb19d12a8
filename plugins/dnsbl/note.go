package dnsbl

import "github.com/sluice-mta/sluice/hooks/notes"

// NoteListings is the connection note of the zones that list the client,
// with their codes, in zone order, set when the lookups are collected (at
// the hook of check_at). Every listing is noted, whatever its action;
// a second dnsbl instance adds its own. Absent when the client was
// skipped (relay, authenticated, whitelisted) or is listed nowhere.
var NoteListings = notes.NewKey[[]Listing]("dnsbl.listings")

// NoteFailed is the connection note of the zones whose lookup failed (a
// timeout, SERVFAIL, a refused query), in zone order.
var NoteFailed = notes.NewKey[[]string]("dnsbl.failed")
