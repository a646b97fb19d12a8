package saslogin_test

import (
	"errors"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/sluice-mta/sluice/server/saslogin"
)

type step struct {
	response  []byte
	challenge string
	done      bool
}

func run(t *testing.T, verify func(user, password string) error, steps []step) error {
	t.Helper()
	s := saslogin.New(verify)
	var err error
	for i, st := range steps {
		var challenge []byte
		var done bool
		challenge, done, err = s.Next(st.response)
		if string(challenge) != st.challenge || done != st.done {
			t.Fatalf("step %d (%q): got %q done=%v, want %q done=%v", i, st.response, challenge, done, st.challenge, st.done)
		}
	}
	return err
}

func TestLoginAsksForUserThenPassword(t *testing.T) {
	var gotUser, gotPassword string
	verify := func(user, password string) error { gotUser, gotPassword = user, password; return nil }
	err := run(t, verify, []step{{nil, "Username:", false}, {[]byte("alice"), "Password:", false}, {[]byte("s3cret"), "", true}})
	if err != nil || gotUser != "alice" || gotPassword != "s3cret" {
		t.Fatalf("err=%v user=%q password=%q; want nil alice s3cret", err, gotUser, gotPassword)
	}
}

func TestLoginInitialResponseIsTheUser(t *testing.T) {
	var gotUser string
	verify := func(user, _ string) error { gotUser = user; return nil }
	if err := run(t, verify, []step{{[]byte("bob"), "Password:", false}, {[]byte("pw"), "", true}}); err != nil || gotUser != "bob" {
		t.Fatalf("err=%v user=%q; want nil bob", err, gotUser)
	}
}

func TestLoginReportsTheVerifyError(t *testing.T) {
	bad := errors.New("bad credentials")
	err := run(t, func(string, string) error { return bad }, []step{{nil, "Username:", false}, {[]byte("a"), "Password:", false}, {[]byte("b"), "", true}})
	if !errors.Is(err, bad) {
		t.Fatalf("err = %v, want %v", err, bad)
	}
}

func TestLoginRefusesAResponseAfterTheEnd(t *testing.T) {
	s := saslogin.New(func(string, string) error { return nil })
	for _, r := range [][]byte{[]byte("u"), []byte("p")} {
		if _, _, err := s.Next(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, done, err := s.Next([]byte("more")); !done || !errors.Is(err, sasl.ErrUnexpectedClientResponse) {
		t.Fatalf("done=%v err=%v; want true, ErrUnexpectedClientResponse", done, err)
	}
}
