// Package rediskey escapes the parts of Redis keys that become Cluster hash tags, one scheme for
// the cache's entries and generations and the session service's event streams.
package rediskey

import "strings"

// Escape percent-encodes '%', '{' and '}' in s, so that s placed between braces is the whole hash
// tag: a caller's '}' can never end the tag early, and distinct strings stay distinct.
func Escape(s string) string {
	if strings.ContainsAny(s, "{}%") {
		return escaper.Replace(s)
	}
	return s
}

var escaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")
