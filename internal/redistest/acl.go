package redistest

import (
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
