package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/redis/go-redis/v9"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/tiercache/tiercache/session"
)

// loadRun is one run of contextd load -mode users.
type loadRun struct {
	o      usersOptions
	client *http.Client
	rdb    *redis.Client // nil: Redis not sampled
	out    io.Writer
	rec    *recorder
	stop   stopOnce
	begin  time.Time

	issued  atomic.Int64 // requests taken against -requests
	started atomic.Int64 // users past their ramp-up wait
	streams atomic.Int64 // user SSE streams open now
	events  atomic.Int64 // events the users' streams received

	// The sampler's state, touched only by the goroutine running run (and
	// by report, after the run).
	first, last []*healthReport // each server's first and latest report
	healthErrs  int64
	healthErr   string
	breakerOpen []int // samples in which a server's breaker was not closed
	info0, info *redisInfo
	lastSample  time.Time
	probe       *prober

	seriesMu sync.Mutex // guards series: the sampler and the prober add points
	series   map[string][][2]float64
}

func newLoadRun(o usersOptions, client *http.Client, rdb *redis.Client, out io.Writer) *loadRun {
	n := len(o.URLs)
	return &loadRun{o: o, client: client, rdb: rdb, out: out, rec: newRecorder(),
		first: make([]*healthReport, n), last: make([]*healthReport, n), breakerOpen: make([]int, n),
		series: map[string][][2]float64{}}
}

// run starts the prober and the users, samples every second until the run
// ends (-duration, -requests or ctx), waits for everyone and reports.
func (r *loadRun) run(ctx context.Context) (*loadReport, error) {
	runCtx, cancel := context.WithTimeout(ctx, r.o.Duration)
	defer cancel()
	r.stop.cancel = cancel
	r.begin = time.Now()
	r.sample(runCtx, r.begin)
	var wg sync.WaitGroup
	if r.o.ProbeEvery > 0 {
		p, err := newProber(runCtx, r)
		if err != nil {
			return nil, err
		}
		r.probe = p
		wg.Go(func() { p.run(runCtx) })
	}
	for i := range r.o.Users {
		u := newUser(r, i)
		start := r.o.RampUp * time.Duration(i) / time.Duration(r.o.Users)
		wg.Go(func() { u.run(runCtx, start) })
	}
	prog := newProgress(r)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for runCtx.Err() == nil {
		select {
		case now := <-tick.C:
			r.sample(runCtx, now)
			prog.update(now)
		case <-runCtx.Done():
		}
	}
	switch {
	case ctx.Err() != nil:
		r.stop.stop("interrupt")
	default:
		r.stop.stop("duration") // a no-op when -requests stopped it first
	}
	wg.Wait()
	end := time.Now()
	if r.probe != nil {
		r.probe.close()
	}
	// The last sample, also after Ctrl-C: the servers' figures at the end.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	r.sample(sctx, end)
	scancel()
	prog.finish()
	return r.report(end), nil
}

// health fetches one server's /api/health/redis.
func (r *loadRun) health(ctx context.Context, base string) (*healthReport, error) {
	var h healthReport
	if err := call(ctx, r.client, http.MethodGet, base+"/api/health/redis", r.o.OpsKey, nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// point adds (t, v) to the named series; NaN and infinities are left out.
func (r *loadRun) point(name string, t, v float64) {
	if !math.IsNaN(v) && !math.IsInf(v, 0) {
		r.seriesMu.Lock()
		r.series[name] = append(r.series[name], [2]float64{math.Round(t*1000) / 1000, v})
		r.seriesMu.Unlock()
	}
}

// sample takes the operations' figures of the interval that ends now, each
// server's /api/health/redis and Redis INFO, and adds them to the series.
// The first call only sets the baselines.
func (r *loadRun) sample(ctx context.Context, now time.Time) {
	t := now.Sub(r.begin).Seconds()
	dt := now.Sub(r.lastSample).Seconds()
	baseline := r.lastSample.IsZero()
	r.lastSample = now
	if !baseline && dt > 0 {
		var total int64
		for op, s := range r.rec.second() {
			total += s.Count
			r.point("throughput_rps."+op, t, float64(s.Count)/dt)
			r.point("latency_ms."+op+".p50", t, s.P50)
			r.point("latency_ms."+op+".p99", t, s.P99)
		}
		r.point("throughput_rps", t, float64(total)/dt)
	}

	var l1h, l1m, l2h, l2m, l1Bytes uint64
	var mem int64
	lag := math.NaN()
	for i, base := range r.o.URLs {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := r.health(hctx, base)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.healthErrs++
				r.healthErr = err.Error()
			}
			continue
		}
		if r.first[i] == nil {
			r.first[i] = h
		}
		if p := r.last[i]; p != nil && h.Cache.L1Hits >= p.Cache.L1Hits && h.Cache.L1Misses >= p.Cache.L1Misses &&
			h.Cache.L2Hits >= p.Cache.L2Hits && h.Cache.L2Misses >= p.Cache.L2Misses {
			l1h += h.Cache.L1Hits - p.Cache.L1Hits
			l1m += h.Cache.L1Misses - p.Cache.L1Misses
			l2h += h.Cache.L2Hits - p.Cache.L2Hits
			l2m += h.Cache.L2Misses - p.Cache.L2Misses
		}
		r.last[i] = h
		l1Bytes += h.Cache.L1Bytes
		mem = max(mem, h.Redis.UsedMemory)
		if h.Subscriber != nil && h.Subscriber.LagSamples > 0 {
			lag = max(nanToZero(lag), float64(h.Subscriber.LagP99)/1e6)
		}
		if h.Breaker != "" && h.Breaker != "closed" {
			r.breakerOpen[i]++
		}
	}
	if !baseline {
		if l1h+l1m > 0 {
			r.point("hit_ratio.l1", t, float64(l1h)/float64(l1h+l1m))
			r.point("hit_ratio.overall", t, float64(l1h+l2h)/float64(l1h+l1m))
		}
		if l2h+l2m > 0 {
			r.point("hit_ratio.l2", t, float64(l2h)/float64(l2h+l2m))
		}
		r.point("servers.l1_bytes", t, float64(l1Bytes))
		r.point("servers.invalidation_lag_p99_ms", t, lag)
	}

	if r.rdb == nil {
		if mem > 0 && !baseline {
			r.point("redis.used_memory_bytes", t, float64(mem))
		}
		return
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	raw, err := r.rdb.Info(ictx, "memory", "cpu", "stats", "clients").Result()
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.healthErrs++
			r.healthErr = "redis INFO: " + err.Error()
		}
		return
	}
	in := parseRedisInfo(raw, now)
	if r.info0 == nil {
		r.info0 = in
	}
	prev := r.info
	r.info = in
	if baseline || prev == nil {
		return
	}
	r.point("redis.used_memory_bytes", t, float64(in.UsedMemory))
	r.point("redis.ops_per_sec", t, float64(in.OpsPerSec))
	r.point("redis.connected_clients", t, float64(in.Clients))
	if d := in.At.Sub(prev.At).Seconds(); d > 0 {
		r.point("redis.cpu_cores", t, (in.CPU-prev.CPU)/d)
	}
}

func nanToZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// redisInfo is what contextd load reads from Redis INFO.
type redisInfo struct {
	At         time.Time
	UsedMemory int64
	CPU        float64 // used_cpu_sys + used_cpu_user, seconds
	OpsPerSec  int64   // instantaneous_ops_per_sec
	Clients    int64   // connected_clients
}

func parseRedisInfo(raw string, at time.Time) *redisInfo {
	f := func(field string) float64 { return infoFloat(raw, field) }
	return &redisInfo{At: at, UsedMemory: int64(f("used_memory")), CPU: f("used_cpu_sys") + f("used_cpu_user"),
		OpsPerSec: int64(f("instantaneous_ops_per_sec")), Clients: int64(f("connected_clients"))}
}

// prober times cross-instance propagation: every -probe-every it edits its
// own node through the next instance and waits until the probe subscribers
// on the other instances (one SSE stream each, on the probe's session)
// receive the edit, and until a context read through each of them shows
// it. With one instance, that instance is the "other".
type prober struct {
	r      *loadRun
	sid    string
	nodeID string
	ver    int64
	cancel context.CancelFunc
	subs   sync.WaitGroup

	mu      sync.Mutex
	seen    []map[int64]time.Time // per instance: version → when its subscriber received it
	changed chan struct{}         // closed and replaced when seen changes

	// Written by the probing goroutine only; read after close.
	sseLag, readLag           *hdrhistogram.Histogram
	probes                    int64
	sseTimeouts, readTimeouts int64
}

func newProber(ctx context.Context, r *loadRun) (*prober, error) {
	key := ""
	if len(r.o.APIKeys) > 0 {
		key = r.o.APIKeys[0]
	}
	p := &prober{r: r, changed: make(chan struct{}), sseLag: newHist(), readLag: newHist(),
		seen: make([]map[int64]time.Time, len(r.o.URLs))}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var s session.Session
	if err := call(sctx, r.client, http.MethodPost, r.o.URLs[0]+"/api/sessions", key, map[string]any{"title": "contextd load probe"}, &s); err != nil {
		return nil, fmt.Errorf("load: probe session: %w", err)
	}
	var n session.Node
	if err := call(sctx, r.client, http.MethodPost, r.o.URLs[0]+"/api/nodes", key, map[string]any{"session_id": s.ID, "content": "probe"}, &n); err != nil {
		return nil, fmt.Errorf("load: probe node: %w", err)
	}
	p.sid, p.nodeID, p.ver = s.ID, n.ID, n.Version
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = pcancel
	ready := make(chan error, len(r.o.URLs))
	for i, base := range r.o.URLs {
		p.seen[i] = map[int64]time.Time{}
		p.subs.Go(func() {
			opened := false
			err := readEvents(pctx, r.client, base, key, p.sid, "", func() { opened = true; ready <- nil }, func(ev sseEvent) {
				if ev.Type == "node.updated" && ev.Data.NodeID == p.nodeID {
					at := time.Now()
					p.mu.Lock()
					p.seen[i][ev.Data.Version] = at
					close(p.changed)
					p.changed = make(chan struct{})
					p.mu.Unlock()
				}
			})
			if !opened {
				ready <- fmt.Errorf("load: probe subscriber on %s: %v", base, err)
			}
		})
	}
	for range r.o.URLs {
		select {
		case err := <-ready:
			if err != nil {
				p.close()
				return nil, err
			}
		case <-sctx.Done():
			p.close()
			return nil, fmt.Errorf("load: probe subscribers did not open within 10s")
		}
	}
	return p, nil
}

// close ends the probe subscribers.
func (p *prober) close() {
	p.cancel()
	p.subs.Wait()
}

func (p *prober) run(ctx context.Context) {
	tick := time.NewTicker(p.r.o.ProbeEvery)
	defer tick.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.once(ctx, k%len(p.r.o.URLs))
	}
}

// once edits the probe node through instance w and times its arrival on
// the others.
func (p *prober) once(ctx context.Context, w int) {
	urls := p.r.o.URLs
	key := ""
	if len(p.r.o.APIKeys) > 0 {
		key = p.r.o.APIKeys[0]
	}
	var n session.Node
	if !p.r.do(ctx, opProbeEdit, func(ctx context.Context) error {
		var err error
		n, err = patchNode(ctx, p.r.client, urls[w], key, p.nodeID, p.ver, fmt.Sprintf("probe edit %d", p.ver+1))
		return err
	}) {
		// Learn the node's version again, in case the edit went through.
		var cur session.Node
		if call(ctx, p.r.client, http.MethodGet, urls[w]+"/api/nodes/"+p.nodeID, key, nil, &cur) == nil {
			p.ver = cur.Version
		}
		return
	}
	ack := time.Now()
	p.ver = n.Version
	p.probes++
	others := make([]int, 0, len(urls))
	for j := range urls {
		if j != w || len(urls) == 1 {
			others = append(others, j)
		}
	}
	sse := make([]time.Duration, len(others))
	read := make([]time.Duration, len(others))
	var wg sync.WaitGroup
	for k, j := range others {
		wg.Go(func() { sse[k] = p.waitEvent(ctx, j, n.Version, ack) })
		wg.Go(func() { read[k] = p.waitRead(ctx, urls[j], key, n.Version, ack) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	t := ack.Sub(p.r.begin).Seconds()
	for _, c := range []struct {
		lags     []time.Duration
		h        *hdrhistogram.Histogram
		timeouts *int64
		series   string
	}{{sse, p.sseLag, &p.sseTimeouts, "propagation.sse_ms"}, {read, p.readLag, &p.readTimeouts, "propagation.read_ms"}} {
		worst := time.Duration(-1)
		for _, d := range c.lags {
			if d < 0 {
				*c.timeouts++
				continue
			}
			recordHist(c.h, d)
			worst = max(worst, d)
		}
		if worst >= 0 {
			p.r.point(c.series, t, float64(worst.Microseconds())/1000)
		}
	}
	p.mu.Lock()
	for _, m := range p.seen {
		for v := range m {
			if v <= n.Version {
				delete(m, v)
			}
		}
	}
	p.mu.Unlock()
}

// waitEvent returns how long after ack instance j's probe subscriber
// received version v (0 if before), or -1 after -probe-timeout.
func (p *prober) waitEvent(ctx context.Context, j int, v int64, ack time.Time) time.Duration {
	deadline := time.NewTimer(p.r.o.ProbeWait)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		at, ok := p.seen[j][v]
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return max(at.Sub(ack), 0)
		}
		select {
		case <-ch:
		case <-deadline.C:
			if ctx.Err() == nil {
				p.r.rec.failKind(opProbeEdit, "probe timeout (sse)", fmt.Sprintf("%s did not deliver version %d within %v", p.r.o.URLs[j], v, p.r.o.ProbeWait))
			}
			return -1
		case <-ctx.Done():
			return -1
		}
	}
}

// waitRead reads the probe session's context through base until it shows
// version v of the probe node and returns how long after ack the read that
// showed it ended, or -1 after -probe-timeout.
func (p *prober) waitRead(ctx context.Context, base, key string, v int64, ack time.Time) time.Duration {
	deadline := ack.Add(p.r.o.ProbeWait)
	for time.Now().Before(deadline) {
		var c session.Context
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := call(rctx, p.r.client, http.MethodGet, base+"/api/sessions/"+p.sid+"/context", key, nil, &c)
		cancel()
		if ctx.Err() != nil {
			return -1
		}
		if err == nil {
			for _, n := range c.Nodes {
				if n.ID == p.nodeID && n.Version >= v {
					return time.Since(ack)
				}
			}
		}
		if !sleepCtx(ctx, 2*time.Millisecond) {
			return -1
		}
	}
	p.r.rec.failKind(opProbeEdit, "probe timeout (read)", fmt.Sprintf("%s did not show version %d within %v", base, v, p.r.o.ProbeWait))
	return -1
}

// progress shows the run going: a progress bar on a terminal, else a line
// every 5 s.
type progress struct {
	r    *loadRun
	bar  *progressbar.ProgressBar
	line time.Time
	off  bool
}

func newProgress(r *loadRun) *progress {
	p := &progress{r: r, line: r.begin, off: r.o.Progress == "off"}
	mode := r.o.Progress
	if mode == "auto" {
		mode = "lines"
		if f, ok := r.out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	if mode == "bar" {
		p.bar = progressbar.NewOptions64(int64(r.o.Duration/time.Second),
			progressbar.OptionSetWriter(r.out), progressbar.OptionSetWidth(30), progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetDescription("load"), progressbar.OptionThrottle(200*time.Millisecond))
	}
	return p
}

func (p *progress) status(now time.Time) string {
	reqs, errs := p.r.rec.totals()
	el := now.Sub(p.r.begin).Seconds()
	return fmt.Sprintf("users %d/%d · %d requests (%.0f/s) · %d errors · %d streams, %d events",
		p.r.started.Load(), p.r.o.Users, reqs, float64(reqs)/max(el, 1e-9), errs, p.r.streams.Load(), p.r.events.Load())
}

func (p *progress) update(now time.Time) {
	switch {
	case p.off:
	case p.bar != nil:
		p.bar.Describe(p.status(now))
		_ = p.bar.Set64(int64(now.Sub(p.r.begin) / time.Second))
	case now.Sub(p.line) >= 5*time.Second:
		p.line = now
		fmt.Fprintf(p.r.out, "load: %3.0fs of %v · %s\n", now.Sub(p.r.begin).Seconds(), p.r.o.Duration, p.status(now))
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintln(p.r.out)
	}
}
