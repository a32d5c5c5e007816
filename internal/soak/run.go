// Package soak is a randomized, seed-replayable fault workload for tiercache: several cache
// instances, each in its own OS process, run every public call against one real redis-server
// while a fault schedule drawn from the seed pauses, kills, starves and cuts off Redis; a
// streaming checker judges every read and acknowledged write against docs/CONSISTENCY.md, and
// at the end every key in Redis must hold at least its highest acknowledged version.
//
// The orchestrator runs inside a Go test (it needs internal/redistest and
// internal/faultproxy, which take a testing.TB); instances are the test binary re-executed
// (see RunChild), so the same binary is orchestrator, instance and CPU hog, and
// `scripts/soak` is `go test -run TestSoak` with flags.
package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/rediskey"
	"github.com/tiercache/tiercache/internal/redistest"
)

// Config configures a run.
type Config struct {
	Seed      uint64
	Duration  time.Duration
	Instances int // at least 3
	Workers   int // goroutines per instance
	Keys      int // keys per namespace and class
	L1TTL     time.Duration
	NoPanics  bool                             // loaders never panic (to look past a crash the panics cause)
	Calm      bool                             // no faults, generous deadlines: a calibration run
	Logf      func(format string, args ...any) // progress lines; nil for none
}

// Result is what a run found.
type Result struct {
	Seed       uint64                  `json:"seed"`
	Duration   time.Duration           `json:"duration"`
	Ops        uint64                  `json:"ops"`
	Errors     uint64                  `json:"errors"`
	Faults     int                     `json:"faults"`
	FaultKinds map[Kind]int            `json:"faults_by_kind"`
	Schedule   []Fault                 `json:"schedule"`
	Realised   []string                `json:"realised"` // what each fault did, with times
	Figures    Figures                 `json:"figures"`
	Gaps       uint64                  `json:"gaps"`
	Flushes    uint64                  `json:"flushes"`
	Outages    uint64                  `json:"breaker_openings"`
	Replayed   uint64                  `json:"replayed"`
	StaleServe uint64                  `json:"fail_safe_served"`
	Revalid    uint64                  `json:"revalidated"` // reads answered by revalidating L1's copy
	Panics     uint64                  `json:"loader_panics"`
	Instances  map[int]tiercache.Stats `json:"instances"`
	Violations int64                   `json:"violations"`
}

// Summary is the human summary printed before the final line.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "soak summary: seed %d, %v, %d ops (%d returned errors)\n", r.Seed, r.Duration, r.Ops, r.Errors)
	fmt.Fprintf(&b, "faults by kind:")
	for _, k := range Kinds {
		fmt.Fprintf(&b, " %s=%d", k, r.FaultKinds[k])
	}
	fmt.Fprintf(&b, "\nreads %d, writes %d, fail-safe reads %d, stale reads by bound:", r.Figures.Reads, r.Figures.Writes, r.Figures.FailSafe)
	for _, k := range []string{"<=1ms", "<=10ms", "<=100ms", "<=1s", ">1s"} {
		fmt.Fprintf(&b, " %s=%d", k, r.Figures.StaleByBound[k])
	}
	fmt.Fprintf(&b, "\nmax staleness %v (outside fault windows), excused stale reads %d (max %v)\n",
		r.Figures.MaxStaleness, r.Figures.Excused, r.Figures.MaxExcusedStaleness)
	fmt.Fprintf(&b, "gaps %d, flushes %d, breaker openings %d, replayed writes %d, fail-safe served %d, loader panics %d, revalidated reads %d\n",
		r.Gaps, r.Flushes, r.Outages, r.Replayed, r.StaleServe, r.Panics, r.Revalid)
	fmt.Fprintf(&b, "acknowledged writes lost with Redis's own data (excused): %d\n", r.Figures.LostExcused)
	rules := make([]string, 0, len(r.Figures.Violations))
	for k := range r.Figures.Violations {
		rules = append(rules, k)
	}
	slices.Sort(rules)
	for _, k := range rules {
		fmt.Fprintf(&b, "violations %s: %d\n", k, r.Figures.Violations[k])
	}
	for _, e := range r.Figures.Examples {
		fmt.Fprintf(&b, "  %s\n", e)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Line is the final line of a run.
func (r *Result) Line() string {
	return fmt.Sprintf("soak: seed=%d ops=%d faults=%d violations=%d", r.Seed, r.Ops, r.Faults, r.Violations)
}

// WriteJSON writes the result to path.
func (r *Result) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func (c *Config) defaults() {
	c.Instances = max(c.Instances, 3)
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.Keys == 0 {
		c.Keys = 50
	}
	if c.L1TTL == 0 {
		c.L1TTL = 2 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

type instance struct {
	id      int
	proxy   *faultproxy.Proxy
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	done    chan struct{} // closed when its records are all read
	stats   workerStats
	err     string // what went wrong with the process
	stderr  *prefixWriter
	records uint64 // lines received
}

// Run runs the soak and returns what it found. It fails tb only when it cannot set up; every
// contract violation is in the Result.
func Run(tb testing.TB, cfg Config) *Result {
	tb.Helper()
	cfg.defaults()
	conv := 2 * cfg.L1TTL // convergence time after a fault ends
	quiet := conv + 3*time.Second
	sched := Schedule(cfg.Seed, cfg.Duration, cfg.Instances, quiet)
	if cfg.Calm {
		sched = nil
	}
	res := &Result{Seed: cfg.Seed, Duration: cfg.Duration, Schedule: sched, FaultKinds: make(map[Kind]int), Instances: make(map[int]tiercache.Stats)}
	cfg.Logf("soak: seed %d, %v, %d instances; schedule:\n%s", cfg.Seed, cfg.Duration, cfg.Instances, FormatSchedule(sched))

	srv := redistest.StartWith(tb, redistest.Options{Args: []string{"--maxmemory-policy", "noeviction"}})
	admin := srv.Client(tb)
	chk := newChecker(time.Second, cfg.L1TTL+time.Second)
	start := now()
	t0 = start

	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	insts := make([]*instance, cfg.Instances)
	for i := range insts {
		in := &instance{id: i, proxy: faultproxy.New(tb, srv.Addr()), done: make(chan struct{})}
		insts[i] = in
		spec := workerSpec{ID: i, Addr: in.proxy.Addr(), Seed: cfg.Seed, Workers: cfg.Workers, Keys: cfg.Keys, L1TTL: cfg.L1TTL, Instances: cfg.Instances, NoPanics: cfg.NoPanics, Calm: cfg.Calm}
		switch i % 3 { // some instances refresh eagerly, some answer stale past a soft timeout
		case 0:
			spec.Eager = 0.5
		case 1:
			spec.Soft = 20 * time.Millisecond
		}
		js, _ := json.Marshal(spec)
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), envWorker+"="+string(js))
		in.stderr = &prefixWriter{prefix: fmt.Sprintf("instance %d: ", i), logf: cfg.Logf}
		cmd.Stderr = in.stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			tb.Fatal(err)
		}
		if in.stdin, err = cmd.StdinPipe(); err != nil {
			tb.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			tb.Fatalf("soak: start instance %d: %v", i, err)
		}
		in.cmd = cmd
		tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		go in.readRecords(stdout, chk, tb)
	}

	// The judge: every 500 ms, the reads whose writes have all arrived.
	stopJudge := make(chan struct{})
	judged := make(chan struct{})
	go func() {
		defer close(judged)
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopJudge:
				return
			case <-tk.C:
				chk.judgeUpTo(now(), false)
			}
		}
	}()

	// The schedule.
	var hogs []*exec.Cmd
	var hogMu sync.Mutex
	tb.Cleanup(func() {
		hogMu.Lock()
		defer hogMu.Unlock()
		for _, h := range hogs {
			_ = h.Process.Kill() // an error: it has ended already
		}
	})
	ctx := context.Background()
	for _, f := range sched {
		if d := time.Until(time.Unix(0, start).Add(f.At)); d > 0 {
			time.Sleep(d) // the schedule's own pacing, not a settling wait
		}
		fs := now()
		var note string
		switch f.Kind {
		case Pause:
			srv.Pause(tb)
			time.Sleep(f.For)
			srv.Resume(tb)
		case Kill:
			srv.Restart(tb)
			admin.ConfigSet(ctx, "maxmemory-policy", "noeviction")
			chk.addLoss(fs, now())
			chk.addGenLoss(now())
		case PubsubKill:
			n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
			note = fmt.Sprintf("killed %d pubsub clients (err %v)", n, err)
		case ClientPaus:
			err := admin.Do(ctx, "CLIENT", "PAUSE", f.For.Milliseconds(), "ALL").Err()
			note = fmt.Sprintf("err %v", err)
			time.Sleep(f.For)
		case Delay:
			insts[f.Instance].proxy.SetDelay(f.Delay)
			time.Sleep(f.For)
			insts[f.Instance].proxy.SetDelay(0)
		case Blackhole:
			insts[f.Instance].proxy.Blackhole(true)
			time.Sleep(f.For)
			insts[f.Instance].proxy.Blackhole(false)
		case Reset:
			insts[f.Instance].proxy.ResetAll()
		case MaxMemory:
			used, _ := strconv.ParseInt(infoField(admin.Info(ctx, "memory").Val(), "used_memory"), 10, 64)
			err := admin.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used+64<<10, 10)).Err()
			note = fmt.Sprintf("maxmemory %d (err %v)", used+64<<10, err)
			time.Sleep(f.For)
			if err := admin.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
				tb.Fatalf("soak: lifting maxmemory: %v", err)
			}
		case DelKeys:
			var n int64
			for _, pat := range []string{Namespace + ":gen:*", Namespace + ":lease:*"} {
				keys, _ := admin.Keys(ctx, pat).Result()
				if len(keys) > 0 {
					n += admin.Del(ctx, keys...).Val()
				}
			}
			note = fmt.Sprintf("deleted %d keys", n)
			chk.addLoss(fs, now()+int64(chk.bound)) // instances keep cached generations a while
			chk.addGenLoss(now())
		case Hog:
			hogMu.Lock()
			for range 2 {
				h := exec.Command(exe, "-test.run=^$")
				h.Env = append(os.Environ(), envHog+"="+f.For.String())
				if err := h.Start(); err == nil {
					hogs = append(hogs, h)
					go h.Wait() // reaped as soon as it ends; Cleanup kills it if it has not
				}
			}
			hogMu.Unlock()
			time.Sleep(f.For)
		}
		fe := now()
		if f.Excused() {
			chk.addWindow(fs, fe+int64(conv))
		}
		res.FaultKinds[f.Kind]++
		res.Faults++
		line := fmt.Sprintf("%s: [%s] %s", f.Kind, span(fs, fe), note)
		res.Realised = append(res.Realised, line)
		cfg.Logf("soak: fault %s", line)
	}
	if d := time.Until(time.Unix(0, start).Add(cfg.Duration)); d > 0 {
		time.Sleep(d) // the quiet tail
	}

	// Stop the instances: they drain, close, check for leaks and report.
	for _, in := range insts {
		in.stdin.Close()
	}
	for _, in := range insts {
		select {
		case <-in.done:
		case <-time.After(90 * time.Second):
			in.err = "did not finish within 90s of being stopped"
			_ = in.cmd.Process.Kill()
			<-in.done
		}
		if err := in.cmd.Wait(); err != nil && in.err == "" {
			in.err = fmt.Sprintf("exited: %v", err)
		}
		in.stderr.mu.Lock()
		if in.stderr.panic != "" {
			in.err += " after " + in.stderr.panic
		}
		in.stderr.mu.Unlock()
	}
	end := now()
	close(stopJudge)
	<-judged
	chk.judgeUpTo(end, true)

	for _, in := range insts {
		if in.err != "" {
			chk.mu.Lock()
			chk.violate("process", "instance %d %s", in.id, in.err)
			chk.mu.Unlock()
		}
		res.Ops += max(in.stats.Ops, in.records) // a crashed instance sent no figures
		res.Errors += in.stats.Errors
		res.Panics += in.stats.Panics
		st := in.stats.Stats
		res.Instances[in.id] = st
		res.Gaps += st.Gaps
		res.Flushes += st.Flushes
		res.Outages += st.Outages
		res.Replayed += st.Replayed
		res.StaleServe += st.StaleServed
		res.Revalid += st.Revalidated
	}

	chk.judgeBreakers()
	finalCheck(tb, srv, chk, end)
	res.Figures = chk.Figures
	for _, n := range chk.Violations {
		res.Violations += n
	}
	return res
}

// finalCheck reads every written key from Redis through a fresh instance (empty L1) and
// checks that it holds at least its highest acknowledged version, or its tombstone.
func finalCheck(tb testing.TB, srv *redistest.Server, chk *checker, end int64) {
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	c, err := tiercache.New(tiercache.Options{
		Redis: rdb, Namespace: Namespace, TTL: time.Hour, NamespaceOf: namespaceOf, L2Timeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	t := tiercache.Typed(c, tiercache.JSON[rec]())
	ctx := context.Background()
	for _, key := range chk.keyList() {
		w, ok, voided := chk.highest(key, end)
		if !ok {
			continue
		}
		v, err := t.Get(ctx, key, tiercache.SkipL1())
		deleted := chk.maybeDeletedAbove(key, w.version)
		if ns := namespaceOf(key); ns != "" && !voided {
			n, gerr := rdb.Exists(ctx, Namespace+":gen:{"+rediskey.Escape(ns)+"}").Result()
			if gerr == nil && chk.genVanished(key, n == 1) {
				voided = true // this fresh reader uses generation-0 keys: see genVanished
			}
		}
		chk.mu.Lock()
		switch {
		case errors.Is(err, tiercache.ErrNotFound):
			if !w.del && !deleted {
				if voided {
					chk.LostExcused++
				} else {
					chk.violate("lost-write", "key %q: Redis holds nothing at the end; highest acknowledged %s by instance %d at %s", key, wdesc(w), w.inst, stamp(w.end))
				}
			}
		case err != nil:
			chk.violate("final-read", "key %q: %v", key, err)
		case v.V < w.version:
			if voided {
				chk.LostExcused++
			} else {
				chk.violate("lost-write", "key %q: Redis holds v%d at the end; highest acknowledged %s by instance %d at %s", key, v.V, wdesc(w), w.inst, stamp(w.end))
			}
		}
		chk.mu.Unlock()
	}
}

// readRecords parses an instance's record lines into the checker until EOF.
func (in *instance) readRecords(r io.Reader, chk *checker, tb testing.TB) {
	defer close(in.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		in.records++
		f := strings.Fields(line)
		bad := func() {
			chk.mu.Lock()
			chk.violate("protocol", "instance %d sent %q", in.id, line)
			chk.mu.Unlock()
		}
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "W":
			if len(f) != 8 {
				bad()
				continue
			}
			chk.addWrite(f[1], write{inst: in.id, version: atou(f[2]), del: f[3] == "1", start: atoi(f[4]), end: atoi(f[5]), maybe: f[6] == "0", call: f[7][0]})
		case "R":
			if len(f) != 7 {
				bad()
				continue
			}
			chk.addRead(read{inst: in.id, key: f[1], version: atou(f[2]), found: f[3] == "1", flag: f[4][0], start: atoi(f[5]), end: atoi(f[6])})
		case "N":
			if len(f) != 4 {
				bad()
				continue
			}
			// Instances learn of the new generation by message, within the staleness bound;
			// until then their writes land in the dead generation. Writes that began within
			// the bound after the bump count as racing it (not promised to survive).
			chk.addNamespaceLoss(f[1], atoi(f[2]), atoi(f[3])+int64(chk.bound))
		case "C":
			if len(f) != 3 {
				bad()
				continue
			}
			chk.addLoss(atoi(f[1]), atoi(f[2])+int64(chk.bound)) // racing writes: as for N
		case "B":
			if len(f) != 3 {
				bad()
				continue
			}
			chk.addBreaker(in.id, atoi(f[2]))
		case "X":
			chk.mu.Lock()
			rule, _, _ := strings.Cut(f[1], ":")
			chk.violate(rule, "instance %d: %s", in.id, strings.TrimPrefix(line, "X "))
			chk.mu.Unlock()
		case "S":
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "S ")), &in.stats); err != nil {
				bad()
			}
		default:
			bad()
		}
	}
}

func atoi(s string) int64  { n, _ := strconv.ParseInt(s, 10, 64); return n }
func atou(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }

func infoField(info, field string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), field+":"); ok {
			return v
		}
	}
	return ""
}

// prefixWriter forwards a child's stderr line by line to logf.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	logf   func(string, ...any)
	buf    []byte
	panic  string // the first "panic: " line, if the child panicked
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := slices.Index(p.buf, '\n')
		if i < 0 {
			break
		}
		line := string(p.buf[:i])
		p.logf("%s%s", p.prefix, line)
		if p.panic == "" && strings.HasPrefix(line, "panic: ") {
			p.panic = line
		}
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
