// Package rediskey escapes the parts of Redis keys that become Cluster hash tags, one scheme for
// the cache's entries and generations and the session service's event streams.
package rediskey

import "strings"

// Escape percent-encodes '%', '{' and '}' in s, so that s placed between braces is the whole hash
// tag: a caller's '}' can never end the tag early, and distinct strings stay distinct. A string
// with none of them is returned as it is, without allocating.
func Escape(s string) string {
	if !needsEscape(s) {
		return s
	}
	return escaper.Replace(s)
}

// AppendEscaped appends Escape(s) to dst.
func AppendEscaped(dst []byte, s string) []byte {
	if !needsEscape(s) {
		return append(dst, s...)
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '%':
			dst = append(dst, "%25"...)
		case '{':
			dst = append(dst, "%7B"...)
		case '}':
			dst = append(dst, "%7D"...)
		default:
			dst = append(dst, s[i])
		}
	}
	return dst
}

// EscapedLen is len(Escape(s)).
func EscapedLen(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if special(s[i]) {
			n += 2
		}
	}
	return n
}

// needsEscape reports whether s holds a byte Escape changes. A plain loop: strings.ContainsAny
// builds its byte set on every call, which cost more than the scan on short keys.
func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if special(s[i]) {
			return true
		}
	}
	return false
}

func special(b byte) bool { return b == '%' || b == '{' || b == '}' }

var escaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")
