package notes_test

import (
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks/notes"
)

// The keys a plugin "dnsbl" would export, package-level, for the plugins
// that read its notes.
var (
	// NoteZone (connection, string) is the zone that listed the client.
	NoteZone = notes.NewKey[string]("dnsbl.zone")
	// NoteListed (connection, bool) is true when a zone listed the client.
	NoteListed = notes.NewKey[bool]("dnsbl.listed")
	// NoteScore (connection, int) is a counter several plugins add to.
	NoteScore = notes.NewKey[int]("naughty.score")
)

// A plugin sets its notes through its keys; another reads them through the
// same exported keys. Reading dnsbl.zone as an int would not compile.
func Example() {
	var c connection.Connection

	// The dnsbl plugin, at connect.
	NoteZone.Set(&c.Notes, "zen.example.net")
	NoteListed.Set(&c.Notes, true)
	notes.Add(&c.Notes, NoteScore, 5)

	// Another plugin, at rcpt.
	if NoteListed.Get(&c.Notes) {
		fmt.Println("listed by", NoteZone.Get(&c.Notes))
	}
	score := notes.Add(&c.Notes, NoteScore, 2)
	fmt.Println("score", score)
	if _, ok := notes.NewKey[string]("spf.result").Lookup(&c.Notes); !ok {
		fmt.Println("spf.result is not set")
	}

	// Dumping every note, untyped, by name.
	for _, name := range c.Notes.Keys() {
		fmt.Printf("%s=%v\n", name, c.Notes.Value(name))
	}
	// Output:
	// listed by zen.example.net
	// score 7
	// spf.result is not set
	// dnsbl.listed=true
	// dnsbl.zone=zen.example.net
	// naughty.score=7
}

func TestKey(t *testing.T) {
	var n notes.Notes
	if got, ok := NoteZone.Lookup(&n); ok || got != "" {
		t.Fatalf("Lookup on empty notes = %q, %v; want \"\", false", got, ok)
	}
	NoteZone.Set(&n, "zen.example.net")
	if got, ok := NoteZone.Lookup(&n); !ok || got != "zen.example.net" {
		t.Fatalf("Lookup = %q, %v", got, ok)
	}
	NoteZone.Set(&n, "bl.example.net")
	if got := NoteZone.Get(&n); got != "bl.example.net" {
		t.Fatalf("Get after a second Set = %q", got)
	}
	if NoteZone.Name() != "dnsbl.zone" || fmt.Sprint(NoteZone) != "dnsbl.zone" {
		t.Fatalf("Name = %q, printed as %q", NoteZone.Name(), fmt.Sprint(NoteZone))
	}

	// Two keys of one name and different types: the reader of the wrong
	// type sees nothing rather than a converted value.
	other := notes.NewKey[int]("dnsbl.zone")
	if got, ok := other.Lookup(&n); ok || got != 0 {
		t.Fatalf("Lookup with another type = %d, %v; want 0, false", got, ok)
	}

	NoteZone.Delete(&n)
	if _, ok := NoteZone.Lookup(&n); ok || n.Value("dnsbl.zone") != nil {
		t.Fatal("Delete left the note")
	}
	NoteZone.Delete(&n) // deleting what is not there is fine
}

func TestAdd(t *testing.T) {
	var n notes.Notes
	if got := notes.Add(&n, NoteScore, -5); got != -5 {
		t.Fatalf("Add on an unset counter = %d, want -5", got)
	}
	if got := notes.Add(&n, NoteScore, 3); got != -2 || NoteScore.Get(&n) != -2 {
		t.Fatalf("Add = %d, Get = %d; want -2", got, NoteScore.Get(&n))
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				notes.Add(&n, NoteScore, 1)
			}
		})
	}
	wg.Wait()
	if got := NoteScore.Get(&n); got != 798 {
		t.Fatalf("after 800 concurrent Adds: %d, want 798", got)
	}
}

func TestKeysValueClear(t *testing.T) {
	var n notes.Notes
	NoteZone.Set(&n, "zen.example.net")
	NoteListed.Set(&n, true)
	if keys := n.Keys(); strings.Join(keys, ",") != "dnsbl.listed,dnsbl.zone" {
		t.Fatalf("Keys = %v", keys)
	}
	if v := n.Value("dnsbl.listed"); v != true {
		t.Fatalf("Value = %v", v)
	}
	n.Clear()
	if len(n.Keys()) != 0 || n.Value("dnsbl.zone") != nil {
		t.Fatal("Clear left a note behind")
	}
}

func TestNewKeyRefusesBadNames(t *testing.T) {
	for _, name := range []string{"", "zone", ".zone", "dnsbl.", "dnsbl zone.x", "dnsbl.zo\nne"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewKey(%q) did not panic", name)
				}
			}()
			notes.NewKey[string](name)
		}()
	}
	// A key name may have more dots after the plugin's name.
	if k := notes.NewKey[string]("smtpforward.remote.id"); k.Name() != "smtpforward.remote.id" {
		t.Errorf("Name = %q", k.Name())
	}
}

// TestTypeMismatchDoesNotCompile type-checks code that reads a string note
// as an int, and one that stores an int under a string key: both must be
// compile errors, which is the point of typed keys.
func TestTypeMismatchDoesNotCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks from source")
	}
	const prelude = `package p

import "github.com/sluice-mta/sluice/hooks/notes"

var zone = notes.NewKey[string]("dnsbl.zone")
var hops = notes.NewKey[int]("loop.hops")

func f(n *notes.Notes) {
`
	fset := token.NewFileSet()
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	check := func(body string) error {
		f, err := parser.ParseFile(fset, "p.go", prelude+body+"\n}\n", 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conf.Check("p", fset, []*ast.File{f}, nil)
		return err
	}
	if err := check(`var s string = zone.Get(n); _ = s; notes.Add(n, hops, 1)`); err != nil {
		t.Fatalf("well-typed code does not type-check: %v", err)
	}
	for _, body := range []string{
		`var i int = zone.Get(n); _ = i`,
		`zone.Set(n, 3)`,
		`notes.Add(n, zone, 1)`,
		`n.Set("dnsbl.zone", 3)`, // no untyped setter
	} {
		if err := check(body); err == nil {
			t.Errorf("%s: type-checks; want a compile error", body)
		} else {
			t.Logf("%s: %v", body, err)
		}
	}
}
