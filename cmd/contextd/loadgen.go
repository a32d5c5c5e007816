package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// usersOptions of contextd load (-mode users).
type usersOptions struct {
	URLs        []string
	APIKeys     []string // users take them in turn; empty: no Authorization
	Users       int
	Duration    time.Duration
	Requests    int64 // 0: no limit
	RampUp      time.Duration
	Seed        uint64
	Profile     string
	Message     span // think time between a user's chat messages
	Read        span // between context reads
	Edit        span // between edits of one of its nodes
	NewSession  span // between new sessions
	MaxSessions int  // per user
	MsgMin      int  // bytes of a message's content, drawn uniformly
	MsgMax      int
	RefProb     float64
	Zipf        float64
	ProbeEvery  time.Duration
	ProbeWait   time.Duration
	Timeout     time.Duration
	Redis       string
	JSON        string
	Report      string
	AllowRemote bool
	Progress    string
	OpsKey      string // for /api/health/redis
}

// Limits of contextd load's flags.
const (
	maxLoadUsers    = 50000
	maxLoadDuration = time.Hour
)

// thinkProfiles are the default think times: human is a person chatting
// (a message every 10-30 s, a context read every few seconds), fast is for
// tests and quick looks (the same journey about a hundred times faster).
var thinkProfiles = map[string][4]span{
	//            message                 read                     edit                     new session
	"human": {{10 * time.Second, 30 * time.Second}, {2 * time.Second, 5 * time.Second}, {30 * time.Second, 90 * time.Second}, {2 * time.Minute, 5 * time.Minute}},
	"fast":  {{100 * time.Millisecond, 300 * time.Millisecond}, {30 * time.Millisecond, 100 * time.Millisecond}, {300 * time.Millisecond, 900 * time.Millisecond}, {time.Second, 3 * time.Second}},
}

// span is a range of durations, drawn uniformly: "10s-30s", or "5s" for
// exactly 5 s.
type span struct{ Min, Max time.Duration }

func (s *span) String() string {
	if s.Min == s.Max {
		return s.Min.String()
	}
	return s.Min.String() + "-" + s.Max.String()
}

func (s *span) Set(v string) error {
	lo, hi, ok := strings.Cut(v, "-")
	if !ok {
		hi = lo
	}
	a, err := time.ParseDuration(strings.TrimSpace(lo))
	if err != nil {
		return fmt.Errorf("want a duration or a range like 10s-30s")
	}
	b, err := time.ParseDuration(strings.TrimSpace(hi))
	if err != nil {
		return fmt.Errorf("want a duration or a range like 10s-30s")
	}
	if a <= 0 || b < a || b > time.Hour {
		return fmt.Errorf("want 0 < min <= max <= 1h")
	}
	s.Min, s.Max = a, b
	return nil
}

// parseUsersFlags parses and checks -mode users's flags.
func parseUsersFlags(args []string) (usersOptions, error) {
	fs := flag.NewFlagSet("contextd load", flag.ContinueOnError)
	var o usersOptions
	urls := fs.String("urls", "http://127.0.0.1:8080", "comma-separated base URLs of the contextd instances; requests go round them, each user's SSE stays on one")
	fs.StringVar(&o.Profile, "profile", "human", "default think times: human (a message every 10-30s, a context read every 2-5s) or fast (about 100x faster, for tests)")
	fs.IntVar(&o.Users, "users", 100, fmt.Sprintf("simulated users (1-%d), one goroutine and one SSE stream each", maxLoadUsers))
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to run (at most 1h); the run also ends after -requests")
	fs.Int64Var(&o.Requests, "requests", 0, "end the run after this many requests (0: no limit; -duration still bounds it)")
	fs.DurationVar(&o.RampUp, "ramp-up", 0, "start the users evenly over this time (at most -duration)")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of every user's schedule of actions; the same seed repeats the same schedule")
	fs.Var(&o.Message, "message-every", "think time between a user's chat messages, like 10s-30s (default: from -profile)")
	fs.Var(&o.Read, "read-every", "think time between context reads (default: from -profile)")
	fs.Var(&o.Edit, "edit-every", "think time between edits of one of the user's nodes with If-Match (default: from -profile)")
	fs.Var(&o.NewSession, "session-every", "think time between new sessions, up to -sessions (default: from -profile)")
	fs.IntVar(&o.MaxSessions, "sessions", 5, "sessions per user at most (1-100)")
	msgBytes := fs.String("message-bytes", "200-2000", "size of a message's content in bytes, a range drawn uniformly (at most 262144)")
	fs.Float64Var(&o.RefProb, "ref-prob", 0.3, "fraction of messages that reference one of the user's earlier nodes with @n (0-1)")
	fs.Float64Var(&o.Zipf, "zipf", 1.2, "Zipf exponent s (> 1) of the user's choice of session, most recent first")
	fs.DurationVar(&o.ProbeEvery, "probe-every", time.Second, "interval of the cross-instance propagation probes (0: none)")
	fs.DurationVar(&o.ProbeWait, "probe-timeout", 5*time.Second, "how long a probe waits for the other instances to show its edit")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "per-request timeout (1ms-1m)")
	fs.StringVar(&o.Redis, "redis", "", "redis://host:port of the instances' Redis, sampled with INFO every second (optional; loopback only)")
	fs.StringVar(&o.JSON, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.Report, "report", "", "write a self-contained HTML report with charts to this file")
	fs.BoolVar(&o.AllowRemote, "allow-remote", false, "allow targets that are not on loopback (only against servers you run)")
	fs.StringVar(&o.Progress, "progress", "auto", "auto (a bar on a terminal, else a line every 5s), bar, lines or off")
	fs.StringVar(&o.OpsKey, "ops-key", os.Getenv("OPS_KEY"), "the instances' OPS_KEY, to sample /api/health/redis (OPS_KEY)")
	keys := fs.String("api-keys", os.Getenv("CONTEXTD_API_KEY"), "comma-separated API keys, taken by the users in turn (CONTEXTD_API_KEY)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("load: unexpected argument %q", fs.Arg(0))
	}
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			if err := checkTarget(u, o.AllowRemote); err != nil {
				return o, err
			}
			o.URLs = append(o.URLs, u)
		}
	}
	for _, k := range strings.Split(*keys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			o.APIKeys = append(o.APIKeys, k)
		}
	}
	if err := parseIntRange(*msgBytes, &o.MsgMin, &o.MsgMax); err != nil || o.MsgMin < 1 || o.MsgMax > 256<<10 {
		return o, fmt.Errorf("load: -message-bytes %q: want a size or a range like 200-2000, 1 to 262144", *msgBytes)
	}
	prof, ok := thinkProfiles[o.Profile]
	if !ok {
		return o, fmt.Errorf("load: -profile %q: want human or fast", o.Profile)
	}
	for i, sp := range []*span{&o.Message, &o.Read, &o.Edit, &o.NewSession} {
		if sp.Max == 0 {
			*sp = prof[i]
		}
	}
	switch {
	case len(o.URLs) == 0:
		return o, fmt.Errorf("load: -urls names no instance")
	case o.Users < 1 || o.Users > maxLoadUsers:
		return o, fmt.Errorf("load: -users %d: want 1 to %d", o.Users, maxLoadUsers)
	case o.Duration <= 0 || o.Duration > maxLoadDuration:
		return o, fmt.Errorf("load: -duration %v: want more than 0 and at most %v", o.Duration, maxLoadDuration)
	case o.Requests < 0:
		return o, fmt.Errorf("load: -requests %d: want 0 (no limit) or more", o.Requests)
	case o.RampUp < 0 || o.RampUp > o.Duration:
		return o, fmt.Errorf("load: -ramp-up %v: want 0 to -duration (%v)", o.RampUp, o.Duration)
	case o.MaxSessions < 1 || o.MaxSessions > 100:
		return o, fmt.Errorf("load: -sessions %d: want 1 to 100", o.MaxSessions)
	case !(o.RefProb >= 0 && o.RefProb <= 1):
		return o, fmt.Errorf("load: -ref-prob %v: want 0 to 1", o.RefProb)
	case !(o.Zipf > 1 && o.Zipf <= 10):
		return o, fmt.Errorf("load: -zipf %v: want more than 1 and at most 10", o.Zipf)
	case o.ProbeEvery < 0 || (o.ProbeEvery > 0 && o.ProbeEvery < 10*time.Millisecond):
		return o, fmt.Errorf("load: -probe-every %v: want 0 (no probes) or at least 10ms", o.ProbeEvery)
	case o.ProbeWait < 10*time.Millisecond || o.ProbeWait > time.Minute:
		return o, fmt.Errorf("load: -probe-timeout %v: want 10ms to 1m", o.ProbeWait)
	case o.Timeout < time.Millisecond || o.Timeout > time.Minute:
		return o, fmt.Errorf("load: -timeout %v: want 1ms to 1m", o.Timeout)
	case o.Progress != "auto" && o.Progress != "bar" && o.Progress != "lines" && o.Progress != "off":
		return o, fmt.Errorf("load: -progress %q: want auto, bar, lines or off", o.Progress)
	}
	if o.Redis != "" {
		ro, err := redis.ParseURL(o.Redis)
		if err != nil {
			return o, fmt.Errorf("load: -redis %q: %v", o.Redis, err)
		}
		if ro.Network != "unix" {
			if err := checkTarget("http://"+ro.Addr, o.AllowRemote); err != nil {
				return o, fmt.Errorf("load: -redis %q: only loopback Redis servers are sampled (pass -allow-remote to allow others)", o.Redis)
			}
		}
	}
	return o, nil
}

// parseIntRange parses "A-B" or "A" into lo and hi, lo <= hi.
func parseIntRange(v string, lo, hi *int) error {
	a, b, ok := strings.Cut(v, "-")
	if !ok {
		b = a
	}
	x, err1 := strconv.Atoi(strings.TrimSpace(a))
	y, err2 := strconv.Atoi(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || y < x {
		return fmt.Errorf("want a number or a range like 200-2000")
	}
	*lo, *hi = x, y
	return nil
}

// checkTarget is checkLoopback, which allowRemote lifts, naming the flag.
func checkTarget(u string, allowRemote bool) error {
	err := checkLoopback(u)
	if !errors.Is(err, errNotLoopback) {
		return err
	}
	if allowRemote {
		return nil
	}
	return fmt.Errorf("%w; pass -allow-remote to load a server you run elsewhere", err)
}

// loadUsers runs the workload generator: -users simulated chat users against
// -urls for -duration (or -requests), with the servers and Redis sampled
// every second and propagation probes across the instances; then the
// summary on out, and the -json and -report files. Cancelling ctx (Ctrl-C)
// ends the run early and still reports.
func loadUsers(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseUsersFlags(args)
	if err != nil {
		return err
	}
	if msg := raiseFileLimit(uint64(o.Users)*2 + 256); msg != "" {
		fmt.Fprintln(out, "load:", msg)
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no overall cap; per host below
		MaxIdleConnsPerHost: min(max(64, o.Users/len(o.URLs)), 2048),
		IdleConnTimeout:     time.Minute,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr} // timeouts per request (streams have none)
	var rdb *redis.Client
	if o.Redis != "" {
		ro, _ := redis.ParseURL(o.Redis)
		rdb = redis.NewClient(ro)
		defer rdb.Close()
	}
	r := newLoadRun(o, client, rdb, out)
	// Every instance must answer before any user starts.
	for _, u := range o.URLs {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := r.health(pctx, u)
		cancel()
		if err != nil {
			return fmt.Errorf("load: %s does not answer /api/health/redis: %w", u, err)
		}
	}
	if rdb != nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			return fmt.Errorf("load: -redis %s: %w", o.Redis, err)
		}
	}
	rep, err := r.run(ctx)
	if err != nil {
		return err
	}
	rep.printSummary(out)
	if o.JSON != "" {
		if err := rep.writeJSON(o.JSON); err != nil {
			return fmt.Errorf("load: -json: %w", err)
		}
		fmt.Fprintf(out, "JSON written to %s\n", o.JSON)
	}
	if o.Report != "" {
		if err := rep.writeHTML(o.Report); err != nil {
			return fmt.Errorf("load: -report: %w", err)
		}
		fmt.Fprintf(out, "HTML report written to %s\n", o.Report)
	}
	if rep.Requests > 0 && rep.Operations["chat"].Count == 0 && rep.Operations["context.read"].Count == 0 {
		return fmt.Errorf("load: no chat or context read succeeded (%d errors: %v)", rep.Errors, rep.ErrorSamples)
	}
	return nil
}

// raiseFileLimit raises the soft RLIMIT_NOFILE to need (at most the hard
// limit) and says what it did, or what is missing; "" when the limit was
// already enough.
func raiseFileLimit(need uint64) string {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Sprintf("cannot read the open-file limit (%v); %d users need about %d descriptors", err, need/2, need)
	}
	if lim.Cur >= need {
		return ""
	}
	old := lim.Cur
	lim.Cur = min(need, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Sprintf("open-file limit %d is below the %d needed and could not be raised: %v", old, need, err)
	}
	if lim.Cur < need {
		return fmt.Sprintf("open-file limit raised from %d to the hard limit %d, below the %d needed: raise it (ulimit -Hn) or expect transport errors", old, lim.Cur, need)
	}
	return fmt.Sprintf("open-file limit raised from %d to %d for %d users", old, lim.Cur, need/2)
}

// errKind names an error for the errors-by-kind table: "http <status>",
// "timeout" or "transport".
func errKind(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("http %d", se.Code)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "transport"
}

// stopOnce is a cancel that records why the run stopped, first reason wins.
type stopOnce struct {
	once   sync.Once
	reason string
	cancel context.CancelFunc
}

func (s *stopOnce) stop(reason string) {
	s.once.Do(func() { s.reason = reason; s.cancel() })
}
