package server

import (
	"errors"
	"io"
	"strings"

	"github.com/sluice-mta/sluice/server/command"
)

// The message as the client sends it is read by package input: after
// DATA's 354, lines up to the one holding only "." (input.Dot); after
// BDAT, chunks of announced sizes (input.Chunks), whose sequence of BDAT
// commands nextChunk reads here.

// BareNewline is the policy for a bare LF or bare CR inside a message, as
// Postfix's smtpd_forbid_bare_newline.
type BareNewline string

const (
	// BareNewlineReject answers 554 5.5.2 and closes the connection;
	// nothing is queued.
	BareNewlineReject BareNewline = "reject"
	// BareNewlineNormalize turns every bare LF and bare CR into CRLF, so the
	// queue only ever sees CRLF lines.
	BareNewlineNormalize BareNewline = "normalize"
)

// errInterrupted: a command other than BDAT came before BDAT LAST.
var errInterrupted = errors.New("BDAT sequence interrupted by another command")

// nextChunk answers the BDAT chunk just read and reads the next command:
// a BDAT goes on with the message (its size and whether it is the last);
// another command ends it (errInterrupted), kept in c.pending for the
// loop, or in c.endedBy when it is a BDAT whose reply ends the sequence.
func (c *conn) nextChunk(size int64) (int64, bool, error) {
	s := c.sess
	c.reply(s.chunkReceived(size))
	line, err := c.readLine()
	if errors.Is(err, io.EOF) {
		return 0, false, io.ErrUnexpectedEOF // the client's end of stream never ends a message
	}
	if err != nil {
		return 0, false, err
	}
	if verb, _ := command.Split(strings.TrimRight(line, "\r\n")); verb != "BDAT" {
		c.log.Info("BDAT sequence ended by another command before BDAT LAST; message dropped", "command", verb)
		c.pending = line
		return 0, false, errInterrupted
	}
	if rep := s.Command(line); rep.Code != 0 {
		c.endedBy = rep
		return 0, false, errInterrupted
	}
	return s.chunk.size, s.chunk.last, nil
}
