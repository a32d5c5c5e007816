package session

import (
	"strconv"
	"unicode"
	"unicode/utf8"
)

// MaxShortIDDigits is the largest number of decimal digits in a short ID, so
// every valid short ID fits an int64.
const MaxShortIDDigits = 18

// ParseShortID parses a short ID written as "n12", "#n12" or "@n12" and
// returns its number (12). The letter is a lowercase 'n'; the number has 1
// to [MaxShortIDDigits] decimal digits, no sign, no leading zeros and is at
// least 1. Errors wrap [ErrInvalid] with field "short_id" and say what is
// wrong.
func ParseShortID(s string) (int64, error) {
	in := s
	if len(s) > 0 && (s[0] == '#' || s[0] == '@') {
		s = s[1:]
	}
	if s == "" {
		return 0, shortIDErr(in, "empty")
	}
	if s[0] != 'n' {
		return 0, shortIDErr(in, "must start with 'n' (optionally after '#' or '@')")
	}
	d := s[1:]
	switch {
	case d == "":
		return 0, shortIDErr(in, "no digits after 'n'")
	case len(d) > MaxShortIDDigits:
		return 0, shortIDErr(in, "more than "+strconv.Itoa(MaxShortIDDigits)+" digits")
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return 0, shortIDErr(in, "only decimal digits may follow 'n'")
		}
	}
	if d[0] == '0' {
		if len(d) == 1 {
			return 0, shortIDErr(in, "number must be at least 1")
		}
		return 0, shortIDErr(in, "leading zeros")
	}
	n, err := strconv.ParseInt(d, 10, 64)
	if err != nil { // unreachable: at most 18 digits
		return 0, shortIDErr(in, err.Error())
	}
	return n, nil
}

func shortIDErr(s, reason string) error {
	return invalidf("short_id", "%q: %s", truncate(s), reason)
}

// NormalizeShortID returns the canonical form ("n12") of a short ID written
// as "n12", "#n12" or "@n12", or the error of [ParseShortID].
func NormalizeShortID(s string) (string, error) {
	n, err := ParseShortID(s)
	if err != nil {
		return "", err
	}
	return FormatShortID(n), nil
}

// FormatShortID returns the canonical short ID for n, such as "n12".
// It does not check that n is positive.
func FormatShortID(n int64) string {
	return "n" + strconv.FormatInt(n, 10)
}

// FindRefs returns the short IDs referenced as "@n12" in chat text, in
// canonical form ("n12"), each once, in order of first appearance. The
// result is nil when there are none.
//
// A reference must stand as a word of its own: the '@' must not follow a
// letter, digit, '_' or one of ".-+@/" (so "email@n12" and
// "https://x/@n12" are not references), and the digits must not be
// followed by a letter, digit or '_', nor by one of ".-@/" that continues
// into a letter or digit (so "@n12abc" and "@n12.example" are not). Text
// like "(@n12)," or "see @n12." refers to n12. Tokens that are not valid
// short IDs ("@n0", "@n012") are skipped.
func FindRefs(text string) []string {
	var refs []string
	var seen map[string]struct{}
	for i := 0; i < len(text); i++ {
		if text[i] != '@' {
			continue
		}
		if i > 0 {
			prev, _ := utf8.DecodeLastRuneInString(text[:i])
			if wordRune(prev) || prev == '.' || prev == '-' || prev == '+' || prev == '@' || prev == '/' {
				continue
			}
		}
		j := i + 1
		if j >= len(text) || text[j] != 'n' {
			continue
		}
		j++
		start := j
		for j < len(text) && text[j] >= '0' && text[j] <= '9' {
			j++
		}
		if j == start {
			continue
		}
		if j < len(text) {
			next, size := utf8.DecodeRuneInString(text[j:])
			if wordRune(next) {
				continue
			}
			if next == '.' || next == '-' || next == '@' || next == '/' {
				if k := j + size; k < len(text) {
					after, _ := utf8.DecodeRuneInString(text[k:])
					if wordRune(after) {
						continue
					}
				}
			}
		}
		n, err := ParseShortID(text[i:j])
		if err != nil {
			continue
		}
		id := FormatShortID(n)
		if _, dup := seen[id]; dup {
			continue
		}
		if seen == nil {
			seen = make(map[string]struct{})
		}
		seen[id] = struct{}{}
		refs = append(refs, id)
	}
	return refs
}

// wordRune reports whether r continues a word: a letter, digit, mark or '_'.
func wordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r)
}
