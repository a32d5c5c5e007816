package rediskey

import "testing"

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain":      "plain",
		"a}b{c":      "a%7Db%7Bc",
		"100%":       "100%25",
		"%7D":        "%257D", // an escaped-looking input stays distinct from "}"
		"":           "",
		"bob {x}%:1": "bob %7Bx%7D%25:1",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
