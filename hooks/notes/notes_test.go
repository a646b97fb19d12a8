package notes

import "testing"

func TestTypedGetters(t *testing.T) {
	var n Notes
	Set(&n, "dnsbl.zone", "zen.example.net")
	Set(&n, "karma.score", 3)

	if got := Get[string](&n, "dnsbl.zone"); got != "zen.example.net" {
		t.Fatalf("Get string = %q", got)
	}
	if got, ok := Lookup[string](&n, "karma.score"); ok || got != "" {
		t.Fatalf("Lookup with the wrong type = %q, %v; want zero, false", got, ok)
	}
	if got := Add(&n, "karma.score", -5); got != -2 {
		t.Fatalf("Add = %d, want -2", got)
	}
	if keys := n.Keys(); len(keys) != 2 || keys[0] != "dnsbl.zone" {
		t.Fatalf("Keys = %v", keys)
	}
	n.Clear()
	if n.Value("dnsbl.zone") != nil {
		t.Fatal("Clear left a note behind")
	}
}
