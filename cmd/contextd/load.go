package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// loadConfig of contextd load.
type loadOptions struct {
	URL      string
	Workers  int
	Duration time.Duration
	Target   string // hello, context or both
	Session  string
	Nodes    int
	APIKey   string
	Rounds   int
}

// loadResult is one target's figures.
type loadResult struct {
	Target     string
	Requests   int
	Errors     int
	Elapsed    time.Duration
	Throughput float64 // requests per second
	P50, P90   time.Duration
	P99, Max   time.Duration
}

// load runs contextd load. -mode users (the default) is the workload
// generator of simulated chat users (loadUsers, loadgen.go); -mode bench is
// the throughput comparison of cached context reads against the hello-world
// handler (loadBench), with the flags it always had.
func load(ctx context.Context, args []string, out io.Writer) error {
	mode, rest, err := loadMode(args)
	if err != nil {
		return err
	}
	if mode == "bench" {
		return loadBench(ctx, rest, out)
	}
	return loadUsers(ctx, rest, out)
}

// loadMode takes -mode (or --mode, -mode=X) out of args; the rest are the
// mode's own flags.
func loadMode(args []string) (mode string, rest []string, err error) {
	mode = "users"
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "mode" {
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 == len(args) {
				return "", nil, fmt.Errorf("load: -mode needs a value: users or bench")
			}
			i++
			val = args[i]
		}
		mode = val
	}
	if mode != "users" && mode != "bench" {
		return "", nil, fmt.Errorf("load: -mode %q: want users (simulated chat users, the default) or bench (context reads against hello)", mode)
	}
	return mode, rest, nil
}

// loadBench runs the benchmark mode: Workers goroutines issue requests for
// Duration against a contextd on loopback and report throughput and latency
// percentiles; target both runs hello then context and reports their ratio.
func loadBench(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("contextd load -mode bench", flag.ContinueOnError)
	var o loadOptions
	fs.StringVar(&o.URL, "url", "http://127.0.0.1:8080", "base URL of a running contextd (loopback only)")
	fs.IntVar(&o.Workers, "workers", 8, "concurrent workers (1-256)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "run time per target (at most 10m)")
	fs.StringVar(&o.Target, "target", "both", "hello, context or both (ratio context/hello)")
	fs.StringVar(&o.Session, "session", "", "session to read; empty: create one with -nodes nodes")
	fs.IntVar(&o.Nodes, "nodes", 20, "nodes in the created session")
	fs.StringVar(&o.APIKey, "api-key", os.Getenv("CONTEXTD_API_KEY"), "API key (CONTEXTD_API_KEY)")
	fs.IntVar(&o.Rounds, "rounds", 5, "with -target both: alternate hello and context this many times, so drifting background load hits both alike")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Workers < 1 || o.Workers > 256 {
		return fmt.Errorf("load: -workers %d: want 1 to 256", o.Workers)
	}
	if o.Duration <= 0 || o.Duration > 10*time.Minute {
		return fmt.Errorf("load: -duration %v: want more than 0 and at most 10m", o.Duration)
	}
	if o.Rounds < 1 || o.Rounds > 100 {
		return fmt.Errorf("load: -rounds %d: want 1 to 100", o.Rounds)
	}
	if o.Target != "hello" && o.Target != "context" && o.Target != "both" {
		return fmt.Errorf("load: -target %q: want hello, context or both", o.Target)
	}
	if err := checkLoopback(o.URL); err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: o.Workers * 2, MaxIdleConnsPerHost: o.Workers * 2, IdleConnTimeout: time.Minute,
	}}
	defer client.CloseIdleConnections()
	base := strings.TrimRight(o.URL, "/")
	var (
		targets []target
		sid     = o.Session
	)
	if o.Target == "hello" || o.Target == "both" {
		targets = append(targets, target{name: "hello", url: base + "/bench/hello"})
	}
	if o.Target == "context" || o.Target == "both" {
		if sid == "" {
			var err error
			if sid, err = seedSession(ctx, client, base, o.APIKey, o.Nodes); err != nil {
				return err
			}
		}
		targets = append(targets, target{name: fmt.Sprintf("context(%s)", sid), url: base + "/api/sessions/" + sid + "/context", key: o.APIKey})
	}
	rounds := 1
	if len(targets) == 2 {
		rounds = o.Rounds
	}
	per := o.Duration / time.Duration(rounds)
	lats := make([][]time.Duration, len(targets))
	elapsed := make([]time.Duration, len(targets))
	errs := make([]int, len(targets))
	var roundRatios []float64
	for range rounds {
		var tput [2]float64
		for i, tg := range targets {
			l, el, ne, err := runLoad(ctx, client, tg.name, tg.url, tg.key, o.Workers, per)
			if err != nil {
				return err
			}
			lats[i] = append(lats[i], l...)
			elapsed[i] += el
			errs[i] += ne
			tput[i] = float64(len(l)) / el.Seconds()
		}
		if len(targets) == 2 {
			roundRatios = append(roundRatios, tput[1]/tput[0])
		}
	}
	results := make([]loadResult, len(targets))
	for i, tg := range targets {
		results[i] = summarize(tg.name, lats[i], elapsed[i], errs[i])
	}
	fmt.Fprintf(out, "%-28s %9s %7s %12s %9s %9s %9s %9s\n", "target", "requests", "errors", "req/s", "p50", "p90", "p99", "max")
	for _, r := range results {
		fmt.Fprintf(out, "%-28s %9d %7d %12.0f %9v %9v %9v %9v\n", r.Target, r.Requests, r.Errors, r.Throughput,
			r.P50.Round(time.Microsecond), r.P90.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond))
	}
	if len(results) == 2 && results[0].Throughput > 0 {
		slices.Sort(roundRatios)
		fmt.Fprintf(out, "ratio context/hello throughput: %.3f overall, %.3f median of %d alternating rounds (workers %d, %v per target)\n",
			results[1].Throughput/results[0].Throughput, roundRatios[len(roundRatios)/2], rounds, o.Workers, o.Duration)
	}
	return nil
}

// checkLoopback refuses targets that are not on this machine.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("load: -url %q: want http://127.0.0.1:PORT", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("load: -url %q: %w", raw, errNotLoopback)
}

// errNotLoopback is checkLoopback's refusal of a host that is not loopback.
var errNotLoopback = errors.New("only loopback targets (127.0.0.1, ::1, localhost) are allowed")

// seedSession creates a session with n nodes, each referencing the one
// before by short ID, and returns its ID.
func seedSession(ctx context.Context, client *http.Client, base, key string, n int) (string, error) {
	var sess struct{ ID string }
	if err := call(ctx, client, http.MethodPost, base+"/api/sessions", key, map[string]any{"title": "load test"}, &sess); err != nil {
		return "", fmt.Errorf("load: create session: %w", err)
	}
	prev := ""
	for i := range n {
		text := fmt.Sprintf("message %d of the load-test session, with some ordinary text to make it realistic.", i+1)
		if prev != "" {
			text += " See @" + prev + "."
		}
		var res struct {
			Node struct {
				ShortID string `json:"short_id"`
			}
		}
		if err := call(ctx, client, http.MethodPost, base+"/api/chat", key, map[string]any{"session_id": sess.ID, "content": text}, &res); err != nil {
			return "", fmt.Errorf("load: seed node %d: %w", i+1, err)
		}
		prev = res.Node.ShortID
	}
	return sess.ID, nil
}

func call(ctx context.Context, client *http.Client, method, u, key string, body, dst any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return doJSON(client, req, dst)
}

// target is one URL to load.
type target struct{ name, url, key string }

// runLoad issues GETs of u from workers goroutines for d and returns the
// latencies of the successful ones, the elapsed time and the error count.
func runLoad(ctx context.Context, client *http.Client, name, u, key string, workers int, d time.Duration) ([]time.Duration, time.Duration, int, error) {
	// Warm the connection pool and the cache first.
	for range workers {
		if _, err := get(ctx, client, u, key); err != nil {
			return nil, 0, 0, fmt.Errorf("load: %s: %w", name, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu     sync.Mutex
		lats   []time.Duration
		errs   int
		wg     sync.WaitGroup
		start  = time.Now()
		errMsg error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1<<14)
			nerr := 0
			var last error
			for ctx.Err() == nil {
				t := time.Now()
				ok, err := get(ctx, client, u, key)
				if ctx.Err() != nil {
					break
				}
				if !ok {
					nerr++
					last = err
					continue
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			lats = append(lats, local...)
			errs += nerr
			if last != nil {
				errMsg = last
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(lats) == 0 {
		return nil, 0, 0, fmt.Errorf("load: %s: no successful request (last error: %v)", name, errMsg)
	}
	return lats, elapsed, errs, nil
}

// summarize computes throughput and percentiles.
func summarize(name string, lats []time.Duration, elapsed time.Duration, errs int) loadResult {
	slices.Sort(lats)
	q := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	return loadResult{
		Target: name, Requests: len(lats), Errors: errs, Elapsed: elapsed,
		Throughput: float64(len(lats)) / elapsed.Seconds(),
		P50:        q(0.50), P90: q(0.90), P99: q(0.99), Max: lats[len(lats)-1],
	}
}

func get(ctx context.Context, client *http.Client, u, key string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return true, nil
}
