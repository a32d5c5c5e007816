package rediskey

import "testing"

var escapeCases = map[string]string{
	"plain":      "plain",
	"a}b{c":      "a%7Db%7Bc",
	"100%":       "100%25",
	"%7D":        "%257D", // an escaped-looking input stays distinct from "}"
	"":           "",
	"bob {x}%:1": "bob %7Bx%7D%25:1",
}

func TestEscape(t *testing.T) {
	for in, want := range escapeCases {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAppendEscaped(t *testing.T) {
	for in, want := range escapeCases {
		if got := string(AppendEscaped([]byte("p:"), in)); got != "p:"+want {
			t.Errorf("AppendEscaped(%q, %q) = %q, want %q", "p:", in, got, "p:"+want)
		}
		if got := EscapedLen(in); got != len(want) {
			t.Errorf("EscapedLen(%q) = %d, want %d", in, got, len(want))
		}
	}
}

func TestEscapePlainDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = Escape("ctx:000042") }); n != 0 {
		t.Errorf("Escape of a plain key: %v allocations, want 0", n)
	}
}
