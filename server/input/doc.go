// Package input reads what an SMTP client sends: the connection's read
// buffer (Buffer), filled by the poller's own read so that an idle
// connection holds no buffer, and the message after DATA (Dot) or BDAT
// (Chunks).
//
// Both message readers apply the listener's bare-newline policy, so the
// queue only ever sees CRLF lines, and both read straight from the
// connection's buffer: the bytes are copied once, into the reader the
// server's Message reads from.
package input
