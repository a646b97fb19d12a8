package config

import (
	"encoding"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// badTypeRe matches the TOML decoder's message for a value of the wrong
// type, which names Go types ("TOML value has type string; destination has
// type slice").
var badTypeRe = regexp.MustCompile(`^incompatible types: TOML value has type (.+); destination has type (.+)$`)

// notTableRe matches its message for a value where a table (a struct) was
// expected ("type mismatch for config.Listener: expected table but found
// int64").
var notTableRe = regexp.MustCompile(`^type mismatch for .+: expected table but found (.+)$`)

var (
	durationType     = reflect.TypeOf(Duration{})
	timeDurationType = reflect.TypeOf(time.Duration(0))
	bytesType        = reflect.TypeOf(Bytes(0))
	primitiveType    = reflect.TypeOf(toml.Primitive{})
	textUnmarshaler  = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// plainType rewrites the decoder's type-mismatch message msg about key
// (dotted, as the decoder names it) into words: "expected a list of
// strings, got a string". The expected type is looked up in dst, the value
// being decoded into, along key without its first skip parts (the
// "plugins.NAME" above a plugin's table); the decoder's own word for it is
// the fallback. Any other message is returned as it is.
func plainType(msg, key string, dst any, skip int) string {
	var gotWord, dstWord string
	if m := badTypeRe.FindStringSubmatch(msg); m != nil {
		gotWord, dstWord = m[1], m[2]
	} else if m := notTableRe.FindStringSubmatch(msg); m != nil {
		gotWord, dstWord = m[1], "map"
	} else {
		return msg
	}
	parts := strings.Split(key, ".")
	last := parts[len(parts)-1]
	want := ""
	if t := typeAt(reflect.TypeOf(dst), parts, skip); t != nil {
		want, _ = describe(t, last)
		if (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && dstWord != "slice" && want != "" {
			// The list itself is fine: one of its elements is not.
			return "expected " + want + ", got a list holding " + tomlWord(gotWord)
		}
	}
	if want == "" {
		want = decoderWord(dstWord)
	}
	return "expected " + want + ", got " + tomlWord(gotWord)
}

// typeAt is the Go type the value at key decodes into, starting from t
// after the first skip parts of key; nil when it cannot be told.
func typeAt(t reflect.Type, key []string, skip int) reflect.Type {
	if t == nil || skip > len(key) {
		return nil
	}
	key = key[skip:]
	for {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if len(key) == 0 {
			return t
		}
		switch t.Kind() {
		case reflect.Struct:
			if t == primitiveType || isText(t) {
				return nil // decoded later, or from one string
			}
			f, ok := fieldByKey(t, key[0])
			if !ok {
				return nil
			}
			t, key = f, key[1:]
		case reflect.Map:
			t, key = t.Elem(), key[1:]
		case reflect.Slice, reflect.Array:
			// An array of tables: the decoder's key does not count the
			// element.
			t = t.Elem()
			if k := derefKind(t); k != reflect.Struct && k != reflect.Map {
				return nil
			}
		default:
			return nil
		}
	}
}

func derefKind(t reflect.Type) reflect.Kind {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind()
}

// fieldByKey finds the struct field the decoder fills from key: its toml
// tag, else its name, exactly or else ignoring case (as the decoder
// matches), looking into embedded structs too.
func fieldByKey(t reflect.Type, key string) (reflect.Type, bool) {
	var fold reflect.Type
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" {
			if ft := f.Type; derefKind(ft) == reflect.Struct {
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if got, ok := fieldByKey(ft, key); ok {
					return got, true
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		if name == key {
			return f.Type, true
		}
		if fold == nil && strings.EqualFold(name, key) {
			fold = f.Type
		}
	}
	return fold, fold != nil
}

func isText(t reflect.Type) bool {
	return reflect.PointerTo(t).Implements(textUnmarshaler)
}

// describe names what a value of type t is written as in the file, one and
// several ("a string", "strings"); "" when it cannot be said. key is the
// setting's name: a string setting named like a duration ("timeout",
// "connect_timeout", "window", "delay") is described as one.
func describe(t reflect.Type, key string) (one, many string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType || t == timeDurationType:
		return `a duration such as "30s"`, `durations such as "30s"`
	case t == bytesType:
		return `a size such as "25MB" or a number of bytes`, `sizes such as "25MB"`
	case t == primitiveType:
		return "a table", "tables"
	case isText(t):
		return "a string", "strings"
	}
	switch t.Kind() {
	case reflect.String:
		if durationKey(key) {
			return `a duration such as "30s"`, `durations such as "30s"`
		}
		return "a string", "strings"
	case reflect.Bool:
		return "true or false", "true or false values"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer", "integers"
	case reflect.Float32, reflect.Float64:
		return "a number", "numbers"
	case reflect.Struct, reflect.Map:
		return "a table", "tables"
	case reflect.Slice, reflect.Array:
		_, elems := describe(t.Elem(), key)
		if elems == "" {
			return "a list", "lists"
		}
		return "a list of " + elems, "lists of " + elems
	}
	return "", ""
}

// durationKey reports whether a setting's name says it is a duration.
func durationKey(key string) bool {
	for _, w := range []string{"timeout", "delay", "window", "interval"} {
		if key == w || strings.HasSuffix(key, "_"+w) {
			return true
		}
	}
	return false
}

// decoderWord is the decoder's name for a destination type, in words.
func decoderWord(dst string) string {
	switch dst {
	case "slice":
		return "a list"
	case "integer":
		return "an integer"
	case "float":
		return "a number"
	case "boolean":
		return "true or false"
	case "string", "primitive (string-like)":
		return "a string"
	case "map":
		return "a table"
	}
	return dst
}

// tableWord is what a TOML value of type t (as MetaData.Type names it) is,
// in words.
func tableWord(t string) string {
	switch t {
	case "String":
		return "a string"
	case "Integer":
		return "an integer"
	case "Float":
		return "a number with a fraction"
	case "Bool":
		return "true or false"
	case "Array":
		return "a list"
	case "ArrayHash":
		return "a list of tables"
	case "Datetime", "DatetimeLocal", "DateLocal", "TimeLocal":
		return "a date or time"
	}
	return "a " + strings.ToLower(t)
}

// tomlWord is the decoder's (Go) name for the type of a TOML value, in
// words.
func tomlWord(got string) string {
	switch got {
	case "string":
		return "a string"
	case "int64":
		return "an integer"
	case "float64":
		return "a number with a fraction"
	case "bool":
		return "true or false"
	case "[]any", "[]interface {}":
		return "a list"
	case "map[string]any", "map[string]interface {}":
		return "a table"
	case "[]map[string]any", "[]map[string]interface {}":
		return "a list of tables"
	case "time.Time":
		return "a date or time"
	}
	return "a " + got
}
