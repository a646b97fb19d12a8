package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/transaction"
)

// Routes are where a handoff to a downstream server sends what the
// downstream did not take, once it took the message for at least one
// recipient (so that the client gets 250 and retries nothing):
//
//   - Fallback gets a copy of the message for the recipients refused for
//     now (4xx: over quota, a lookup failure), alone, e.g. smtpforward to
//     the site's MTA, which retries them;
//   - Bounce gets the delivery status notification (RFC 3464) to the
//     sender for the recipients refused for good (5xx) that asked for one.
//
// With no route for a kind of refusal, the whole message is deferred as
// before: the client retries it, and the recipients already delivered may
// get it again (the log says so). A nil *Routes has no routes.
type Routes struct {
	// Fallback and FallbackName are the queue instance for the recipients
	// refused for now; nil for none.
	Fallback     hooks.Queue
	FallbackName string
	// Bounce and BounceName are the queue instance for the delivery status
	// notifications; nil for none.
	Bounce     hooks.Queue
	BounceName string
	// RemoteMTA names the downstream in the notifications (Remote-MTA).
	RemoteMTA string
}

// Take reports whether the routes can take the refused recipients: each
// refused for now needs Fallback, each refused for good Bounce. Forward's
// split argument: the message goes on to the accepted recipients only
// then.
func (r *Routes) Take(refused Outcomes) bool {
	if r == nil {
		return false
	}
	for _, o := range refused {
		if o.Permanent && r.Bounce == nil || !o.Permanent && r.Fallback == nil {
			return false
		}
	}
	return true
}

// Settle turns a handoff's outcomes into the queue hook's result. When no
// recipient was delivered it is Result(err), as for any failed handoff.
// When some were, the recipients refused for now go to Fallback and a
// notification for those refused for good to Bounce, and the result is OK
// with a Detail that says so; if a route is missing or fails, the result
// is a deferral whose log text warns of duplicates (defer rather than
// lose).
func (r *Routes) Settle(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, outs Outcomes, err error) hooks.Result {
	delivered, temporary, permanent := outs.Split()
	if len(delivered) == 0 || err == nil {
		return Result(err)
	}
	var notes []string
	copies := delivered // the recipients a retry of the whole message duplicates
	if len(temporary) > 0 {
		if r == nil || r.Fallback == nil {
			return duplicates(err, delivered, "no fallback_queue for the recipients refused for now")
		}
		ftx := subset(tx, temporary)
		res := r.Fallback.Queue(ctx, c, ftx)
		if res.Code != hooks.OK {
			return duplicates(err, delivered, fmt.Sprintf("fallback_queue %q did not take the recipients refused for now: %d %s: %v", r.FallbackName, res.ReplyCode, res.Msg, res.Err))
		}
		notes = append(notes, fmt.Sprintf("%d refused for now handed to %q", len(temporary), r.FallbackName))
		// They have a copy now too: a deferral below duplicates theirs.
		copies = append(copies[:len(copies):len(copies)], temporary...)
	}
	if len(permanent) > 0 {
		if r == nil || r.Bounce == nil {
			return duplicates(err, copies, "no dsn_queue for the recipients refused for good")
		}
		dsn, berr := Bounce(tx, Report{ReportingMTA: c.Hostname, RemoteMTA: r.RemoteMTA, Arrival: tx.Started, Failed: permanent})
		switch {
		case berr != nil:
			return duplicates(err, copies, fmt.Sprintf("building the delivery status notification failed: %v", berr))
		case dsn == nil:
			notes = append(notes, fmt.Sprintf("%d refused for good, no notification due", len(permanent)))
		default:
			res := r.Bounce.Queue(ctx, c, dsn)
			dsn.Close()
			if res.Code != hooks.OK {
				return duplicates(err, copies, fmt.Sprintf("dsn_queue %q did not take the delivery status notification: %d %s: %v", r.BounceName, res.ReplyCode, res.Msg, res.Err))
			}
			notes = append(notes, fmt.Sprintf("%d refused for good: notification to <%s> handed to %q", len(permanent), tx.Sender, r.BounceName))
		}
	}
	var refused []string
	for _, o := range append(temporary, permanent...) {
		refused = append(refused, fmt.Sprintf("<%s> %s", o.Rcpt, o.Reply))
	}
	return hooks.Result{Code: hooks.OK, Detail: fmt.Sprintf("delivered to %d of %d recipients; %s; refused: %s", len(delivered), len(outs), strings.Join(notes, "; "), strings.Join(refused, ", "))}
}

// NotifySuccess sends, through Bounce, the success notices a downstream
// without DSN cannot send (RFC 3461 section 4.1): for each delivered
// recipient that asked with NOTIFY=SUCCESS, Action "delivered" when the
// downstream is the final one (LMTP), "relayed" otherwise. It returns a
// note for the log ("" when none was due). A notice that cannot be sent
// is only logged: the message itself was delivered.
func (r *Routes) NotifySuccess(ctx context.Context, c *connection.Connection, tx *transaction.Transaction, outs Outcomes, final bool) string {
	// NOTIFY= lives in RcptParams: without any, no notice is due, and the
	// common message costs nothing here.
	if r == nil || r.Bounce == nil || tx.RcptParams == nil {
		return ""
	}
	delivered, _, _ := outs.Split()
	notice, err := SuccessNotice(tx, Report{ReportingMTA: c.Hostname, RemoteMTA: r.RemoteMTA, Arrival: tx.Started, Delivered: delivered, Relayed: !final})
	if err != nil {
		return fmt.Sprintf("building the success notice failed: %v", err)
	}
	if notice == nil {
		return ""
	}
	defer notice.Close()
	res := r.Bounce.Queue(ctx, c, notice)
	if res.Code != hooks.OK {
		return fmt.Sprintf("dsn_queue %q did not take the success notice (NOTIFY=SUCCESS): %d %s: %v", r.BounceName, res.ReplyCode, res.Msg, res.Err)
	}
	return fmt.Sprintf("success notice to <%s> handed to %q", tx.Sender, r.BounceName)
}

// duplicates is the deferral when part of the message was delivered but
// the rest has nowhere to go: the client retries the whole message.
func duplicates(err error, delivered Outcomes, why string) hooks.Result {
	rcpts := make([]string, len(delivered))
	for i, o := range delivered {
		rcpts[i] = "<" + o.Rcpt + ">"
	}
	res := Result(err)
	res.Err = fmt.Errorf("%w; %s, so the client is told to retry and %s will get the message again (possible duplicate)", err, why, strings.Join(rcpts, ", "))
	return res
}

// subset returns a transaction sharing tx's message (header and body) for
// the given recipients only, with their DSN parameters. The caller must
// not Close it: the message is tx's.
func subset(tx *transaction.Transaction, outs Outcomes) *transaction.Transaction {
	sub := &transaction.Transaction{
		ID: tx.ID, Sender: tx.Sender, Params: tx.Params, Header: tx.Header, Body: tx.Body,
		Size: tx.Size, QueueID: tx.QueueID, Started: tx.Started,
	}
	for _, o := range outs {
		sub.Recipients = append(sub.Recipients, o.Rcpt)
		if p, ok := tx.RcptParams[o.Rcpt]; ok {
			if sub.RcptParams == nil {
				sub.RcptParams = map[string]transaction.RcptParams{}
			}
			sub.RcptParams[o.Rcpt] = p
		}
	}
	return sub
}
