package redistest

import (
	"os"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// SetUser creates (or replaces) the ACL user name with password and the given rules, e.g.
// "~app:*", "&app:*", "-@all", "+get" (ACL SETUSER name reset on >password rules...): the user
// starts from nothing (no commands, keys or channels) and gets exactly rules. It runs on the
// server's plain port as the default user and fails tb when Redis rejects a rule.
func (s *Server) SetUser(tb testing.TB, name, password string, rules ...string) {
	tb.Helper()
	args := []any{"ACL", "SETUSER", name, "reset", "on", ">" + password}
	for _, r := range rules {
		args = append(args, r)
	}
	if _, err := s.do(args...); err != nil {
		tb.Fatalf("redistest: %s: ACL SETUSER %s %s: %v", s.Addr(), name, strings.Join(rules, " "), err)
	}
}

// UserOptions returns go-redis Options for the server (as Options does) that authenticate as
// user with password.
func (s *Server) UserOptions(user, password string) *redis.Options {
	o := s.Options()
	o.Username, o.Password = user, password
	return o
}

// UserClient returns a new go-redis client that authenticates as user with password (see
// UserOptions), closed in tb.Cleanup.
func (s *Server) UserClient(tb testing.TB, user, password string) *redis.Client {
	tb.Helper()
	c := redis.NewClient(s.UserOptions(user, password))
	tb.Cleanup(func() { c.Close() })
	return c
}

// ACLRules returns the rules of the first line of the text file doc (a path) that reads
// "ACL SETUSER <user> <first> ...": the rules from first on, with "on" and ">password" rules
// dropped (SetUser adds its own) and every ns0 replaced by ns, so that a line written for one
// namespace serves a test's own. Tests take a document's copy-paste line this way so the
// document cannot drift from what the code needs. It fails tb when there is no such line.
func ACLRules(tb testing.TB, doc, user, first, ns0, ns string) []string {
	tb.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	lead := "ACL SETUSER " + user + " "
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), lead)
		if !ok || (rest != first && !strings.HasPrefix(rest, first+" ")) {
			continue
		}
		var rules []string
		for _, r := range strings.Fields(strings.ReplaceAll(rest, ns0, ns)) {
			if r != "on" && !strings.HasPrefix(r, ">") {
				rules = append(rules, r)
			}
		}
		return rules
	}
	tb.Fatalf("redistest: %s has no line starting %q", doc, lead+first+" ")
	return nil
}
