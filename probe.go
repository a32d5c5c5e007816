package tiercache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/lock"
)

// The permission check New runs (checkRedis): a Redis user without a permission the cache needs
// (a command, its keys, its invalidation channel) would otherwise start "healthy" and fail
// calls one by one, or, with its subscription refused, run without invalidations. The check
// fails New with an error that names what is missing. A Redis that does not answer is not a
// permission problem: New then starts degraded, as always.

// probeKey is the user key whose Redis keys stand for each key family in the check; nothing is
// written to them.
const probeKey = "tiercache-permission-check"

// probeCheck is one command the cache sends, with arguments, as probeScript asks about it.
type probeCheck struct {
	cmd  string
	args []string
	on   string // what the command's key or channel argument is, for errors: "" (none), "key", "channel"
}

// name is the command as an error names it: "GET", "SCRIPT LOAD".
func (p probeCheck) name() string {
	if p.cmd == "SCRIPT" {
		return p.cmd + " " + p.args[0]
	}
	return p.cmd
}

func (p probeCheck) String() string { return strings.Join(append([]string{p.cmd}, p.args...), "\n") }

// probeFamily is one family of the cache's Redis keys and the commands the cache (or its scripts)
// runs on it.
type probeFamily struct {
	what   string // "entry", "namespace generation", "stampede lease"
	key    string
	checks []probeCheck
}

// checkRedis runs the start-time permission check of New (see the comment above). It returns an
// error naming every missing permission it found, one naming credentials Redis refused or a TLS
// certificate the client does not trust, and nil when every check passed, when there is no
// Redis, or when Redis did not answer within the breaker's confirming wait (confirmWait:
// max(1 s, 20 x L2Timeout)), the time after which the cache takes a silent Redis for gone.
func checkRedis(cfg config) error {
	if cfg.Redis == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), (&Cache{cfg: cfg}).confirmWait())
	defer cancel()
	done := make(chan error, 1)
	// A client that ignores context deadlines may block past the wait (up to its own
	// timeouts): leave it to finish on its own.
	go func() { done <- probeRedis(ctx, cfg) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// probeRedis checks every key family with probeScript, then the invalidation channel with a real
// SUBSCRIBE (its NOPERM says whether the command or the channel is refused).
func probeRedis(ctx context.Context, cfg config) error {
	rdb, user := cfg.Redis, redisUser(cfg.Redis)
	channel := invalidationChannel(cfg.Namespace)
	var problems []error
	for _, f := range probeFamilies(cfg, channel) {
		args := make([]any, len(f.checks))
		for i, ch := range f.checks {
			args[i] = ch.String()
		}
		reply, err := probeScript.Run(ctx, rdb, []string{f.key}, args...).Result()
		if err != nil {
			if redis.HasErrorPrefix(err, "NOPERM") {
				problems = append(problems, permissionError(user, err, f.what+" key", f.key))
				continue
			}
			return startError(user, err)
		}
		denied, _ := reply.([]any) // -1 (Redis before 7.0: no redis.acl_check_cmd) checks nothing more
		for _, d := range denied {
			i, ok := d.(int64)
			if !ok || i < 1 || int(i) > len(f.checks) {
				continue
			}
			switch ch := f.checks[i-1]; ch.on {
			case "key":
				problems = append(problems, fmt.Errorf(prefix+"Redis user %q may not run %s on %s key %q (ACL)", user, ch.name(), f.what, f.key))
			case "channel":
				problems = append(problems, fmt.Errorf(prefix+"Redis user %q may not run %s on invalidation channel %q (ACL)", user, ch.name(), ch.args[0]))
			default:
				problems = append(problems, fmt.Errorf(prefix+"Redis user %q may not run %s (ACL)", user, ch.name()))
			}
		}
	}
	if !cfg.noInvalidation {
		if err := probeSubscribe(ctx, rdb, channel); err != nil {
			if !redis.HasErrorPrefix(err, "NOPERM") {
				return startError(user, err)
			}
			problems = append(problems, permissionError(user, err, "invalidation channel", channel))
		}
	}
	if len(problems) > 0 {
		problems = append(problems, errors.New(prefix+`see "Redis ACL" in docs/OPERATIONS.md for the rules the cache needs`))
	}
	return errors.Join(problems...)
}

// probeFamilies lists the key families cfg's cache uses and, for each, the commands it sends on
// such keys, itself or from its scripts. The commands without keys, and PUBLISH on channel, go
// with the first family.
func probeFamilies(cfg config, channel string) []probeFamily {
	keys := &Cache{cfg: cfg} // names Redis keys as the real cache will
	on := func(k string, cmds ...string) []probeCheck {
		var out []probeCheck
		for _, cmd := range cmds {
			ch := probeCheck{cmd: cmd, args: []string{k}, on: "key"}
			switch cmd {
			case "EVALSHA":
				ch.args = []string{probeScript.Hash(), "1", k}
			case "EVAL":
				ch.args = []string{"return 1", "1", k}
			case "SET":
				ch.args = []string{k, "v", "PX", "1000"}
			case "SETRANGE":
				ch.args = []string{k, "2", "v"}
			case "GETRANGE":
				ch.args = []string{k, "0", "29"}
			}
			out = append(out, ch)
		}
		return out
	}
	entryCmds := []string{"EVALSHA", "EVAL", "GET", "MGET", "SET", "SETRANGE", "GETRANGE", "DEL", "UNLINK"}
	rk := keys.redisKey(probeKey)
	fs := []probeFamily{{"entry", rk, append(on(rk, entryCmds...),
		probeCheck{cmd: "TIME"}, probeCheck{cmd: "PING"}, probeCheck{cmd: "SCAN", args: []string{"0", "MATCH", rk, "COUNT", "1"}},
		probeCheck{cmd: "SCRIPT", args: []string{"LOAD", "return 1"}},
		probeCheck{cmd: "PUBLISH", args: []string{channel, "n"}, on: "channel"})}}
	if cfg.ShardedPubSub {
		sc := shardChannelOf(channel, keySlot(rk))
		fs[0].checks = append(fs[0].checks, probeCheck{cmd: "SPUBLISH", args: []string{sc, "n"}, on: "channel"},
			probeCheck{cmd: "SSUBSCRIBE", args: []string{sc}, on: "channel"})
	}
	if cfg.NamespaceOf != nil {
		gk, gen := keys.genEntryKey(probeKey, 1), keys.genKey(probeKey)
		fs = append(fs, probeFamily{"generation entry", gk, on(gk, entryCmds...)},
			probeFamily{"namespace generation", gen, on(gen, "EVALSHA", "EVAL", "GET", "SET")})
	}
	if cfg.LeaseTTL > 0 {
		if l, err := lock.New(lock.Options{Clients: []redis.UniversalClient{cfg.Redis}, Prefix: leasePrefix(cfg.Namespace)}); err == nil {
			lk := l.LockKey(probeKey)
			fs = append(fs, probeFamily{"stampede lease", lk, on(lk, "EVALSHA", "EVAL", "GET", "SET", "DEL")})
		}
	}
	return fs
}

// probeSubscribe subscribes to channel on a connection of its own and waits for Redis's answer.
func probeSubscribe(ctx context.Context, rdb redis.UniversalClient, channel string) error {
	ps := rdb.Subscribe(ctx)
	defer ps.Close()
	if err := ps.Subscribe(ctx, channel); err != nil {
		return err
	}
	_, err := ps.Receive(ctx)
	return err
}

// permissionError names what a NOPERM reply refused: the command it quotes, or else the key or
// channel (what, name) the request named.
func permissionError(user string, err error, what, name string) error {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, "permissions to run the '"); ok {
		if cmd, _, ok := strings.Cut(rest, "'"); ok {
			return fmt.Errorf(prefix+"Redis user %q may not run %s (ACL): %w", user, strings.ToUpper(strings.ReplaceAll(cmd, "|", " ")), err)
		}
	}
	return fmt.Errorf(prefix+"Redis user %q may not access %s %q (ACL): %w", user, what, name, err)
}

// startError turns what the check met other than a permission refusal into New's error: refused
// credentials and an untrusted server certificate fail New (they do not heal by waiting);
// anything else (no answer, a refused connection, LOADING) is an unreachable Redis, nil.
func startError(user string, err error) error {
	var cert *tls.CertificateVerificationError
	switch {
	case redis.IsAuthError(err): // WRONGPASS, NOAUTH, or a long command on an unauthenticated connection
		return fmt.Errorf(prefix+"Redis did not authenticate user %q (wrong or missing password?): %w", user, err)
	case errors.As(err, &cert):
		return fmt.Errorf(prefix+"Redis server's TLS certificate is not trusted (check the CA and server name): %w", err)
	}
	return nil
}

// redisUser is the ACL user rdb authenticates as: "default" when it names none.
func redisUser(rdb redis.UniversalClient) string {
	var u string
	switch r := rdb.(type) {
	case *redis.Client:
		u = r.Options().Username
	case *redis.ClusterClient:
		u = r.Options().Username
	case *redis.Ring:
		u = r.Options().Username
	}
	if u == "" {
		return "default"
	}
	return u
}

// invalidationChannel is the pub/sub channel of namespace ns's invalidation messages.
func invalidationChannel(ns string) string { return ns + ":invalidate" }

// leasePrefix starts the keys of namespace ns's stampede leases (see Options.LeaseTTL).
func leasePrefix(ns string) string { return ns + ":lease:" }
