package session

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseShortID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr string // substring of the error; "" means success
	}{
		{name: "plain", in: "n12", want: 12},
		{name: "hash", in: "#n12", want: 12},
		{name: "at", in: "@n7", want: 7},
		{name: "one", in: "n1", want: 1},
		{name: "max digits", in: "n999999999999999999", want: 999999999999999999},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "prefix only", in: "#", wantErr: "empty"},
		{name: "uppercase", in: "N12", wantErr: "must start with 'n'"},
		{name: "no n", in: "12", wantErr: "must start with 'n'"},
		{name: "no digits", in: "n", wantErr: "no digits"},
		{name: "zero", in: "n0", wantErr: "at least 1"},
		{name: "leading zero", in: "n012", wantErr: "leading zeros"},
		{name: "sign", in: "n+12", wantErr: "decimal digits"},
		{name: "minus", in: "n-1", wantErr: "decimal digits"},
		{name: "too long", in: "n1234567890123456789", wantErr: "more than 18 digits"},
		{name: "two prefixes", in: "#@n1", wantErr: "must start with 'n'"},
		{name: "space", in: " n1", wantErr: "must start with 'n'"},
		{name: "trailing space", in: "n1 ", wantErr: "decimal digits"},
		{name: "unicode digit", in: "n١", wantErr: "decimal digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseShortID(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ParseShortID(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseShortID(%q) = %d, nil; want error containing %q", tt.in, got, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "session: invalid short_id") {
				t.Errorf("ParseShortID(%q) error = %v; want ErrInvalid for short_id containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestNormalizeShortID(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"n42", "#n42", "@n42"} {
		if got, err := NormalizeShortID(in); err != nil || got != "n42" {
			t.Errorf("NormalizeShortID(%q) = %q, %v; want \"n42\", nil", in, got, err)
		}
	}
	if got := FormatShortID(12); got != "n12" {
		t.Errorf("FormatShortID(12) = %q, want \"n12\"", got)
	}
}

func TestFindRefs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		text string
		want []string
	}{
		{name: "none", text: "hello world", want: nil},
		{name: "single", text: "@n12", want: []string{"n12"}},
		{name: "in sentence", text: "see @n12 and @n3.", want: []string{"n12", "n3"}},
		{name: "punctuation", text: "(@n12), [@n4]; @n5! \"@n6\"", want: []string{"n12", "n4", "n5", "n6"}},
		{name: "email", text: "mail email@n12 now", want: nil},
		{name: "email dot", text: "first.last.@n1", want: nil},
		{name: "url path", text: "https://example.com/@n12", want: nil},
		{name: "double at", text: "@@n12", want: nil},
		{name: "suffix letters", text: "@n12abc @n13_x", want: nil},
		{name: "domain", text: "@n12.example.com", want: nil},
		{name: "sentence end", text: "look at @n12.\nthen", want: []string{"n12"}},
		{name: "dash word", text: "@n12-foo but @n13 - bar", want: []string{"n13"}},
		{name: "duplicates", text: "@n1 @n2 @n1", want: []string{"n1", "n2"}},
		{name: "invalid numbers", text: "@n0 @n012 @n1234567890123456789 @n", want: nil},
		{name: "uppercase", text: "@N12", want: nil},
		{name: "hash form is not a mention", text: "#n12", want: nil},
		{name: "unicode before", text: "é@n1 ü @n2", want: []string{"n2"}},
		{name: "newline and tab", text: "a\n@n1\t@n2", want: []string{"n1", "n2"}},
		{name: "markdown", text: "**@n7** _@n8_", want: []string{"n7"}},
		{name: "start and end", text: "@n1 x @n2", want: []string{"n1", "n2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FindRefs(tt.text); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FindRefs(%q) = %q, want %q", tt.text, got, tt.want)
			}
		})
	}
}

func FuzzParseShortID(f *testing.F) {
	for _, s := range []string{"n1", "#n12", "@n999999999999999999", "n0", "n012", "", "#", "N1", "n-1", "n1234567890123456789", "@n٣"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseShortID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseShortID(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if n < 1 {
			t.Fatalf("ParseShortID(%q) = %d, want >= 1", s, n)
		}
		canon := strings.TrimLeft(s, "#@")
		if len(s)-len(canon) > 1 {
			t.Fatalf("ParseShortID(%q) accepted two prefixes", s)
		}
		if got := FormatShortID(n); got != canon {
			t.Fatalf("FormatShortID(ParseShortID(%q)) = %q, want %q", s, got, canon)
		}
	})
}

func FuzzFindRefs(f *testing.F) {
	for _, s := range []string{"see @n12 and @n3.", "email@n12", "(@n12),", "@n1@n2", "@n12.com", "é@n1", "@n0 @n01", "\xff@n1", "@n1\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		refs := FindRefs(text)
		seen := map[string]bool{}
		for _, r := range refs {
			n, err := ParseShortID(r)
			if err != nil {
				t.Fatalf("FindRefs(%q) returned %q, which does not parse: %v", text, r, err)
			}
			if FormatShortID(n) != r {
				t.Fatalf("FindRefs(%q) returned non-canonical %q", text, r)
			}
			if seen[r] {
				t.Fatalf("FindRefs(%q) returned %q twice", text, r)
			}
			seen[r] = true
			if !strings.Contains(text, "@"+r) {
				t.Fatalf("FindRefs(%q) returned %q, not in the text", text, r)
			}
		}
	})
}
