package transaction_test

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/transaction"
)

func readMessage(t *testing.T, msg string) *transaction.Transaction {
	t.Helper()
	tx := transaction.New(t.TempDir(), 16)
	br := bufio.NewReader(strings.NewReader(msg))
	if err := tx.ReadHeader(br, transaction.HeaderLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(tx.Body, br); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close() })
	return tx
}

func message(t *testing.T, tx *transaction.Transaction) string {
	t.Helper()
	b, err := io.ReadAll(tx.Message())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReplaceBody(t *testing.T) {
	tx := readMessage(t, "Subject: hi\r\n\r\nold body, long enough to go to the file\r\n")
	if err := tx.ReplaceBody(strings.NewReader("new body\r\n")); err != nil {
		t.Fatal(err)
	}
	if got, want := message(t, tx), "Subject: hi\r\n\r\nnew body\r\n"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if got := tx.MessageSize(); got != int64(len("Subject: hi\r\n\r\nnew body\r\n")) {
		t.Errorf("MessageSize = %d", got)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("filter died") }

func TestReplaceKeepsTheOriginalOnError(t *testing.T) {
	const orig = "Subject: hi\r\n\r\nbody\r\n"
	tx := readMessage(t, orig)
	if err := tx.ReplaceBody(io.MultiReader(strings.NewReader("half"), failingReader{})); err == nil || !strings.Contains(err.Error(), "filter died") {
		t.Errorf("ReplaceBody error = %v, want the reader's", err)
	}
	if err := tx.ReplaceMessage(io.MultiReader(strings.NewReader("Subject: x\r\n"), failingReader{}), transaction.HeaderLimits{}); err == nil {
		t.Error("ReplaceMessage succeeded on a failing reader")
	}
	big := "X: " + strings.Repeat("a", 200) + "\r\n\r\nb\r\n"
	if err := tx.ReplaceMessage(strings.NewReader(big), transaction.HeaderLimits{MaxBytes: 100}); !errors.Is(err, transaction.ErrHeaderTooLong) {
		t.Errorf("ReplaceMessage error = %v, want ErrHeaderTooLong", err)
	}
	if got := message(t, tx); got != orig {
		t.Errorf("message after failed replacements = %q, want %q", got, orig)
	}
}

func TestReplaceMessage(t *testing.T) {
	tx := readMessage(t, "Subject: hi\r\nFrom: a@example.org\r\n\r\nbody\r\n")
	const repl = "Subject: [SPAM] hi\r\nFrom: a@example.org\r\nX-Filter: yes\r\n\r\nnew body\r\nline two\r\n"
	if err := tx.ReplaceMessage(strings.NewReader(repl), transaction.HeaderLimits{}); err != nil {
		t.Fatal(err)
	}
	if got := message(t, tx); got != repl {
		t.Errorf("message = %q, want %q", got, repl)
	}
	if got := tx.Header.Get("Subject"); got != "[SPAM] hi" {
		t.Errorf("Subject = %q", got)
	}
	if got := tx.Header.Get("X-Filter"); got != "yes" {
		t.Errorf("X-Filter = %q", got)
	}
}

func TestInsertAndChange(t *testing.T) {
	tx := readMessage(t, "A: 1\r\nB: 2\r\nA: 3\r\n\r\nbody\r\n")
	tx.Header.Insert(0, "Top", "t")
	tx.Header.Insert(2, "Mid", "m")
	tx.Header.Insert(99, "End", "e")
	if !tx.Header.Change("a", 2, "three") || !tx.Header.Change("B", 1, "") || tx.Header.Change("A", 3, "x") {
		t.Error("Change reported the wrong fields")
	}
	if got, want := message(t, tx), "Top: t\r\nA: 1\r\nMid: m\r\nA: three\r\nEnd: e\r\n\r\nbody\r\n"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}
