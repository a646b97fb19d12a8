package queue

import "fmt"

// Outcome is what became of one recipient at a handoff to a downstream
// server: delivered, refused for now (4xx), or refused for good (5xx).
// LMTP gives one per recipient after the message; SMTP gives one per RCPT
// before it (and the final reply covers the accepted ones).
type Outcome struct {
	// Rcpt is the recipient as it stands in the transaction.
	Rcpt string
	// Delivered means the downstream took responsibility for this
	// recipient's copy.
	Delivered bool
	// Permanent means the downstream refused the recipient with a 5xx
	// reply: retrying cannot help. Only meaningful when !Delivered.
	Permanent bool
	// Code is the downstream's reply code (250, 452, 550...); 0 when the
	// recipient got no reply (the connection broke first).
	Code int
	// Enhanced is the reply's RFC 3463 status code, e.g. {5, 1, 1};
	// {0, 0, 0} when the reply had none.
	Enhanced [3]int
	// Reply is the downstream's reply on one line, as it was on the wire
	// ("550 5.1.1 <nobody@example.test>: Recipient address rejected"),
	// printable ASCII, at most 300 bytes of text. It is safe to show to
	// the client and to put in a delivery status notification.
	Reply string
}

// Status returns the RFC 3463 status code for the outcome: the reply's
// enhanced code, or one derived from the reply code (2.0.0, 4.0.0, 5.0.0).
func (o Outcome) Status() string {
	e := o.Enhanced
	if e[0] == 0 {
		switch {
		case o.Delivered:
			e = [3]int{2, 0, 0}
		case o.Permanent:
			e = [3]int{5, 0, 0}
		default:
			e = [3]int{4, 0, 0}
		}
	}
	return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
}

// Outcomes are the per-recipient results of one handoff, in the order of
// the transaction's recipients.
type Outcomes []Outcome

// Split returns the recipients by what became of them: delivered, refused
// for now (temporary), refused for good (permanent).
func (os Outcomes) Split() (delivered, temporary, permanent []Outcome) {
	for _, o := range os {
		switch {
		case o.Delivered:
			delivered = append(delivered, o)
		case o.Permanent:
			permanent = append(permanent, o)
		default:
			temporary = append(temporary, o)
		}
	}
	return delivered, temporary, permanent
}
