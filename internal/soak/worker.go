package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

// Environment variables that turn a re-executed binary into a soak child.
const (
	envWorker = "TIERCACHE_SOAK_WORKER" // JSON workerSpec: run one cache instance
	envHog    = "TIERCACHE_SOAK_HOG"    // a duration: spin one core until it passes
)

// workerSpec configures one worker process (one cache instance).
type workerSpec struct {
	ID        int           `json:"id"`
	Addr      string        `json:"addr"` // Redis, through this instance's fault proxy
	Seed      uint64        `json:"seed"`
	Workers   int           `json:"workers"` // goroutines issuing calls
	Keys      int           `json:"keys"`    // keys per namespace and class
	L1TTL     time.Duration `json:"l1_ttl"`
	Eager     float64       `json:"eager"`
	Soft      time.Duration `json:"soft"`
	Instances int           `json:"instances"`
	NoPanics  bool          `json:"no_panics"` // loaders fail instead of panicking
	Calm      bool          `json:"calm"`      // no short deadlines or cancellations
}

// Namespace is the cache namespace (Redis key prefix) of the soak.
const Namespace = "soak"

// Namespaces per key class: keys are "<class>:<ns>:<i>", so InvalidateNamespace has a few
// namespaces to hit and most keys survive each call.
const namespaces = 4

// namespaceOf is the cache's Options.NamespaceOf: everything before the second ':'.
func namespaceOf(key string) string {
	i := strings.IndexByte(key, ':')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(key[i+1:], ':')
	if j < 0 {
		return ""
	}
	return key[:i+1+j]
}

// rec is the cached value: the version it was written with, so a read tells which write it saw.
// For caller-versioned keys V is the cache version; for automatic keys it is the owner's
// per-key write counter (writes of one automatic key are serialized in its owner, so counter
// order is version order); for loader keys it is the loader's version.
type rec struct {
	V      uint64 `json:"v"`
	Loaded bool   `json:"l,omitempty"`
}

// CacheVersion makes loaded values carry their own version (fills of loader keys).
func (r rec) CacheVersion() uint64 {
	if r.Loaded {
		return r.V
	}
	return 0
}

// now is the clock every process stamps records with: wall-clock nanoseconds (shared by the
// processes of one machine).
func now() int64 { return time.Now().UnixNano() }

// out writes records to stdout, flushed in the background so the orchestrator sees them
// within a fraction of a second without one syscall per record.
type out struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *out) printf(format string, args ...any) {
	o.mu.Lock()
	fmt.Fprintf(o.w, format, args...)
	o.mu.Unlock()
}

func (o *out) flush() {
	o.mu.Lock()
	o.w.Flush()
	o.mu.Unlock()
}

// RunChild runs a soak child process if the environment asks for one, and then exits; it
// returns at once otherwise. Call it first thing in TestMain (or main).
func RunChild() {
	if d := os.Getenv(envHog); d != "" {
		dur, err := time.ParseDuration(d)
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak hog:", err)
			os.Exit(2)
		}
		end := time.Now().Add(dur)
		x := uint64(1)
		for time.Now().Before(end) {
			for range 100000 {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}
		if x == 0 {
			fmt.Println()
		}
		os.Exit(0)
	}
	spec := os.Getenv(envWorker)
	if spec == "" {
		return
	}
	var s workerSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "soak worker: bad spec:", err)
		os.Exit(2)
	}
	if err := runWorker(s, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "soak worker %d: %v\n", s.ID, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runWorker runs one instance until stop is closed (EOF), then drains, closes the cache, checks
// for leaked goroutines and prints its figures. Record lines (fields separated by spaces, times
// in nanoseconds from now()):
//
//	W <key> <version> <delete 0|1> <start> <end> <acknowledged 0|1> <call>  a write (0: failed, may have landed)
//	R <key> <version> <found 0|1> <call> <start> <end> a read that returned
//	N <namespace> <start> <end>                          an InvalidateNamespace (acknowledged or not)
//	C <start> <end>                                      a Clear (acknowledged or not)
//	B <n> <time>                                         the breaker opened n times in the last 50 ms
//	X <what>                                             a violation the worker saw itself
//	S <json stats>                                       final figures
//
// Calls: reads g Get, p Peek, o GetOrLoad, m GetOrLoadMany, s a fail-safe value (ErrStale);
// writes S Set, A Set with an automatic version, M SetMany, D Delete, E DeleteMany.
func runWorker(s workerSpec, stop io.Reader, stdout io.Writer) error {
	base := runtime.NumGoroutine()
	o := &out{w: bufio.NewWriterSize(stdout, 1<<16)}
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true, DialTimeout: 200 * time.Millisecond})
	c, err := tiercache.New(tiercache.Options{
		Redis:        rdb,
		Namespace:    Namespace,
		TTL:          time.Hour,
		L1TTL:        s.L1TTL,
		NamespaceOf:  namespaceOf,
		EagerRefresh: s.Eager,
		SoftTimeout:  s.Soft,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	t := tiercache.Typed(c, tiercache.JSON[rec]())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // stdin EOF: stop
		_, _ = io.Copy(io.Discard, stop)
		cancel()
	}()
	go func() { // flusher, and the breaker watch: each opening is reported with its time
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		var outages uint64
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				if n := c.Stats().Outages; n > outages {
					o.printf("B %d %d\n", n-outages, now())
					outages = n
				}
				o.flush()
			}
		}
	}()

	w := &worker{spec: s, t: t, c: c, o: o, autoMu: make([]sync.Mutex, namespaces*s.Keys), autoN: make([]uint64, namespaces*s.Keys)}
	var wg sync.WaitGroup
	for g := range s.Workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(s.Seed, uint64(s.ID)<<32|uint64(g)))
			for ctx.Err() == nil {
				w.op(ctx, rng)
			}
		})
	}
	wg.Wait()

	// Drain: every remembered write must reach Redis once the faults have stopped.
	deadline := time.Now().Add(30 * time.Second)
	for {
		h := c.Health(context.Background())
		if h.State == tiercache.StateHealthy && h.Pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			o.printf("X drain: instance %d still %s with %d pending writes 30s after the load stopped\n", s.ID, h.State, h.Pending)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	st := c.Stats()
	if err := c.Close(); err != nil {
		o.printf("X close: %v\n", err)
	}
	rdb.Close()
	close(done)
	deadline = time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+1 { // +1: the stdin reader, ended with the process
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			o.printf("X leak: %d goroutines after Close, %d before New: %s\n", runtime.NumGoroutine(), base, strconv.Quote(string(buf[:n])))
			break
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	js, _ := json.Marshal(workerStats{Ops: w.ops.Load(), Errors: w.errs.Load(), Panics: w.panics.Load(), Stats: st})
	o.printf("S %s\n", js)
	o.flush()
	return nil
}

// workerStats is a worker's final line.
type workerStats struct {
	Ops    uint64          `json:"ops"`
	Errors uint64          `json:"errors"`
	Panics uint64          `json:"loader_panics"`
	Stats  tiercache.Stats `json:"stats"`
}

type worker struct {
	spec   workerSpec
	t      *tiercache.TypedCache[rec]
	c      *tiercache.Cache
	o      *out
	autoMu []sync.Mutex // serializes the writes of each of this instance's automatic keys
	autoN  []uint64     // per automatic key: the last counter written; guarded by autoMu
	seq    atomic.Uint64
	ops    atomic.Uint64
	errs   atomic.Uint64
	panics atomic.Uint64
}

// Key classes: "c" caller versions (any instance writes), "a<id>" automatic versions written by
// instance id only, "l" loader keys (filled by GetOrLoad only, never written).
func callerKey(ns, i int) string { return "c" + strconv.Itoa(ns) + ":x:" + strconv.Itoa(i) }
func autoKey(id, ns, i int) string {
	return "a" + strconv.Itoa(id) + "n" + strconv.Itoa(ns) + ":x:" + strconv.Itoa(i)
}
func loaderKey(i int) string { return "l:" + strconv.Itoa(i) }

// callerVersion is a fresh caller version: the clock, with the instance in the low bits so two
// instances never pick the same one.
func (w *worker) callerVersion() uint64 { return uint64(now())<<4 | uint64(w.spec.ID&15) }

// readKey draws a key any instance may read.
func (w *worker) readKey(rng *rand.Rand) string {
	ns, i := rng.IntN(namespaces), w.keyIndex(rng)
	switch rng.IntN(10) {
	case 0, 1, 2:
		return autoKey(rng.IntN(w.spec.Instances), ns, i)
	default:
		return callerKey(ns, i)
	}
}

// keyIndex draws a key index, skewed towards the first keys (hot keys).
func (w *worker) keyIndex(rng *rand.Rand) int {
	if rng.IntN(2) == 0 {
		return rng.IntN(max(1, w.spec.Keys/10))
	}
	return rng.IntN(w.spec.Keys)
}

// callCtx draws the caller's context: mostly a generous deadline, sometimes a short one or a
// cancellation partway.
func callCtx(parent context.Context, rng *rand.Rand, calm bool) (context.Context, context.CancelFunc) {
	x := rng.IntN(20)
	if calm {
		x = 19
	}
	switch x {
	case 0, 1:
		return context.WithTimeout(parent, time.Duration(1+rng.IntN(30))*time.Millisecond)
	case 2:
		ctx, cancel := context.WithCancel(parent)
		t := time.AfterFunc(time.Duration(rng.IntN(20))*time.Millisecond, cancel)
		return ctx, func() { t.Stop(); cancel() }
	default:
		return context.WithTimeout(parent, 5*time.Second)
	}
}

var errLoader = errors.New("soak: loader failed on purpose")

// loader returns a loader for key class: caller and automatic keys have no source of truth, so
// their loader always fails (slowly, quickly or by panicking); loader keys load a fresh
// version most of the time.
func (w *worker) loadOne(ctx context.Context, rng *rand.Rand, key string) (rec, error) {
	mode := rng.IntN(10)
	if mode == 0 && !w.spec.NoPanics {
		w.panics.Add(1)
		panic("soak: loader panics on purpose")
	}
	if mode <= 2 { // slow
		t := time.NewTimer(time.Duration(rng.IntN(150)) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return rec{}, ctx.Err()
		case <-t.C:
		}
	}
	if key[0] != 'l' || mode == 3 {
		return rec{}, errLoader
	}
	return rec{V: w.callerVersion(), Loaded: true}, nil
}

// op makes one random call and records what it acknowledged or returned.
func (w *worker) op(parent context.Context, rng *rand.Rand) {
	w.ops.Add(1)
	ctx, cancel := callCtx(parent, rng, w.spec.Calm)
	defer cancel()
	p := rng.IntN(1000)
	var lrng *rand.Rand // loaders run on other goroutines: give them their own generator
	if p >= 400 && p < 560 {
		lrng = rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	}
	var lmu sync.Mutex
	load := func(ctx context.Context, key string) (rec, error) {
		lmu.Lock()
		defer lmu.Unlock()
		return w.loadOne(ctx, lrng, key)
	}
	switch {
	case p < 300: // Get
		key := w.readKey(rng)
		start := now()
		v, err := w.t.Get(ctx, key)
		w.read(key, v, err, 'g', start)
	case p < 400: // Peek
		key := w.readKey(rng)
		start := now()
		v, ok := w.t.Peek(key)
		if ok {
			w.o.printf("R %s %d 1 p %d %d\n", key, v.V, start, now())
		}
	case p < 480: // GetOrLoad on any key
		key := w.readKey(rng)
		if rng.IntN(3) == 0 {
			key = loaderKey(w.keyIndex(rng))
		}
		start := now()
		v, err := w.t.GetOrLoad(ctx, key, load, tiercache.TTL(time.Duration(2+rng.IntN(4))*time.Second))
		if key[0] != 'l' {
			w.read(key, v, err, 'o', start)
		} else if err != nil && !errors.Is(err, tiercache.ErrStale) {
			w.errs.Add(1)
		}
	case p < 560: // GetOrLoadMany
		keys := make([]string, 2+rng.IntN(6))
		for i := range keys {
			keys[i] = w.readKey(rng)
			if rng.IntN(3) == 0 {
				keys[i] = loaderKey(w.keyIndex(rng))
			}
		}
		start := now()
		m, err := w.t.GetOrLoadMany(ctx, keys, func(ctx context.Context, keys []string) (map[string]rec, error) {
			out := make(map[string]rec, len(keys))
			for _, k := range keys {
				v, err := load(ctx, k)
				if err != nil {
					return out, err
				}
				out[k] = v
			}
			return out, nil
		})
		end := now()
		if err != nil && !errors.Is(err, tiercache.ErrStale) {
			w.errs.Add(1)
		}
		flag := byte('m')
		if errors.Is(err, tiercache.ErrStale) {
			flag = 's'
		}
		for k, v := range m {
			if k[0] != 'l' {
				w.o.printf("R %s %d 1 %c %d %d\n", k, v.V, flag, start, end)
			}
		}
	case p < 760: // Set with a caller version
		key := callerKey(rng.IntN(namespaces), w.keyIndex(rng))
		v := w.callerVersion()
		start := now()
		err := w.t.Set(ctx, key, rec{V: v}, tiercache.Version(v))
		w.wrote(key, v, 'S', err, start)
	case p < 860: // Set with an automatic version, on one of this instance's keys
		ns, i := rng.IntN(namespaces), w.keyIndex(rng)
		key := autoKey(w.spec.ID, ns, i)
		slot := ns*w.spec.Keys + i
		w.autoMu[slot].Lock()
		n := w.autoN[slot] + 1
		start := now()
		err := w.t.Set(ctx, key, rec{V: n})
		if err == nil {
			w.autoN[slot] = n
		}
		w.wrote(key, n, 'A', err, start)
		w.autoMu[slot].Unlock()
	case p < 900: // SetMany with caller versions
		items := make(map[string]rec)
		for range 2 + rng.IntN(6) {
			items[callerKey(rng.IntN(namespaces), w.keyIndex(rng))] = rec{}
		}
		v := w.callerVersion()
		for k := range items {
			items[k] = rec{V: v}
		}
		start := now()
		err := w.t.SetMany(ctx, items, tiercache.Version(v))
		for k := range items {
			w.wrote(k, v, 'M', err, start)
		}
	case p < 950: // Delete with a caller version
		key := callerKey(rng.IntN(namespaces), w.keyIndex(rng))
		v := w.callerVersion()
		start := now()
		err := w.t.Delete(ctx, key, tiercache.Version(v))
		w.wrote(key, v, 'D', err, start)
	case p < 975: // DeleteMany with a caller version
		keys := make([]string, 2+rng.IntN(4))
		for i := range keys {
			keys[i] = callerKey(rng.IntN(namespaces), w.keyIndex(rng))
		}
		v := w.callerVersion()
		start := now()
		err := w.t.DeleteMany(ctx, keys, tiercache.Version(v))
		for _, k := range uniq(keys) {
			w.wrote(k, v, 'E', err, start)
		}
	default: // mostly a Get of a loader key; rarely InvalidateNamespace, more rarely Clear
		// (each voids what it may have removed, so they stay rare enough to leave most writes
		// judged: about one namespace bump per 20k calls, one Clear per 400k)
		x := rng.IntN(400)
		if x >= 20 {
			_, _ = w.t.Get(ctx, loaderKey(w.keyIndex(rng)))
			return
		}
		if x == 0 {
			start := now()
			_, err := w.c.Clear(ctx)
			if err != nil {
				w.errs.Add(1) // it may still have removed keys: a loss all the same
			}
			w.o.printf("C %d %d\n", start, now())
			return
		}
		var ns string
		if rng.IntN(2) == 0 {
			ns = namespaceOf(callerKey(rng.IntN(namespaces), 0))
		} else {
			ns = namespaceOf(autoKey(rng.IntN(w.spec.Instances), rng.IntN(namespaces), 0))
		}
		start := now()
		if err := w.c.InvalidateNamespace(ctx, ns); err != nil {
			w.errs.Add(1) // it may still have bumped the generation: a loss all the same
		}
		w.o.printf("N %s %d %d\n", ns, start, now())
	}
}

func uniq(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// read records a Get or GetOrLoad result: a value (flagged when served by fail-safe), or not
// found. Other errors returned nothing and are only counted.
func (w *worker) read(key string, v rec, err error, flag byte, start int64) {
	end := now()
	switch {
	case err == nil:
		w.o.printf("R %s %d 1 %c %d %d\n", key, v.V, flag, start, end)
	case errors.Is(err, tiercache.ErrStale):
		w.o.printf("R %s %d 1 s %d %d\n", key, v.V, start, end)
	case errors.Is(err, tiercache.ErrNotFound):
		w.o.printf("R %s 0 0 %c %d %d\n", key, flag, start, end)
	default:
		w.errs.Add(1)
	}
}

// wrote records a write: acknowledged (err == nil), or one that failed but may still have
// reached Redis (a deadline or a lost reply: the checker lets it explain a not-found read, never
// counts it as acknowledged). Refusals (ErrStaleVersion) changed nothing and are only counted.
func (w *worker) wrote(key string, v uint64, call byte, err error, start int64) {
	del := call == 'D' || call == 'E'
	acked := 1
	if err != nil {
		w.errs.Add(1)
		// A single write refused as stale changed nothing; a batch's error may cover one key
		// while the others landed, so every key of a failed batch is a write that may have.
		if (errors.Is(err, tiercache.ErrStaleVersion) || errors.Is(err, tiercache.ErrTooLarge)) && call != 'M' && call != 'E' {
			return
		}
		acked = 0
	}
	d := 0
	if del {
		d = 1
	}
	w.o.printf("W %s %d %d %d %d %d %c\n", key, v, d, start, now(), acked, call)
}
