package wire

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Query sends one request to the policy service at address ("host:port"
// or "unix:/path"), as Postfix's smtpd does, and returns the action of its
// answer. ctx bounds the whole exchange.
func Query(ctx context.Context, address string, req Request) (string, error) {
	network, addr := "tcp", address
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		network, addr = "unix", path
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	} else {
		nc.SetDeadline(time.Now().Add(time.Minute))
	}
	if _, err := req.WriteTo(nc); err != nil {
		return "", fmt.Errorf("sending the request to %s: %w", address, err)
	}
	action, err := ReadAction(bufio.NewReader(nc))
	if err == io.EOF {
		return "", fmt.Errorf("reading the answer of %s: the server closed the connection without an answer", address)
	}
	if err != nil {
		return "", fmt.Errorf("reading the answer of %s: %w", address, err)
	}
	return action, nil
}

// Refusal reports whether a policy action refuses what was asked: REJECT,
// DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, or a 4xx or 5xx reply.
// DUNNO, OK and the actions that let the mail through (PREPEND, WARN,
// FILTER, HOLD, DISCARD, REDIRECT, ...) are not.
func Refusal(action string) bool {
	word, _, _ := strings.Cut(strings.TrimSpace(action), " ")
	switch strings.ToUpper(word) {
	case "REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT":
		return true
	}
	return len(word) == 3 && (word[0] == '4' || word[0] == '5') && word[1] >= '0' && word[1] <= '9' && word[2] >= '0' && word[2] <= '9'
}
