package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// runLoadJSON runs contextd load with args plus -json into a temporary file,
// logs its output and returns the parsed JSON and the raw bytes.
func runLoadJSON(t *testing.T, ctx context.Context, args ...string) (loadReport, []byte, string) {
	t.Helper()
	jsonPath := filepath.Join(t.TempDir(), "load.json")
	var out syncBuffer
	err := load(ctx, append(args, "-json", jsonPath), &out)
	t.Logf("contextd load output:\n%s", out.String())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep loadReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("-json output does not parse: %v", err)
	}
	return rep, data, out.String()
}

// reportCharts are the chart IDs of the HTML report.
var reportCharts = []string{"throughput", "latency-p50", "latency-p99", "hit-ratio", "redis-memory", "redis-cpu", "propagation"}

// TestLoadUsersTwoInstances runs the workload generator (fast profile, a
// short run) against two instances on one Redis and one database: it prints
// the summary, writes JSON with every figure and no error, and an HTML
// report whose every chart draws in headless chromium.
func TestLoadUsersTwoInstances(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	db := filepath.Join(t.TempDir(), "shared.db")
	a := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "load"})
	b := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "load"})
	htmlPath := filepath.Join(t.TempDir(), "load.html")
	rep, data, out := runLoadJSON(t, t.Context(), "-urls", a.URL+","+b.URL, "-users", "24", "-duration", "6s", "-profile", "fast",
		"-ramp-up", "1s", "-probe-every", "200ms", "-seed", "7", "-redis", "redis://"+rs.Addr()+"/0", "-report", htmlPath)
	for _, want := range []string{"operation", "context.read", "errors by kind: none", "hit ratio over the run", "redis: used_memory", "propagation ("} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	// The documented field names, as scripts read them.
	var raw map[string]any
	_ = json.Unmarshal(data, &raw)
	for _, f := range []string{"format", "started_at", "duration_seconds", "stopped_by", "config", "requests", "errors", "throughput_rps",
		"operations", "errors_by_kind", "sse", "servers", "hit_ratio", "compression", "redis", "propagation", "series"} {
		if _, ok := raw[f]; !ok {
			t.Errorf("JSON lacks field %q", f)
		}
	}
	if rep.Errors != 0 || len(rep.ErrorsByKind) != 0 {
		t.Errorf("errors = %d %v (%v), want none", rep.Errors, rep.ErrorsByKind, rep.ErrorSamples)
	}
	if rep.StoppedBy != "duration" || rep.Requests == 0 || rep.Throughput <= 0 {
		t.Errorf("stopped by %q, %d requests, %.1f req/s; want duration, > 0, > 0", rep.StoppedBy, rep.Requests, rep.Throughput)
	}
	for _, op := range []string{opSessionCreate, opChat, opEdit, opContextRead, opSSEConnect, opProbeEdit} {
		s := rep.Operations[op]
		if s.Count == 0 || s.Latency.P50 <= 0 || s.Latency.P99 < s.Latency.P50 || s.Latency.Max < s.Latency.P99 {
			t.Errorf("operation %s = %+v, want a count and ordered percentiles", op, s)
		}
	}
	if rep.SSE.Events == 0 {
		t.Errorf("the users' streams received no event")
	}
	if len(rep.Servers) != 2 {
		t.Fatalf("servers = %d, want 2", len(rep.Servers))
	}
	for _, s := range rep.Servers {
		if s.Status != "healthy" || s.HitRatio.L1 <= 0 || s.Writes == 0 || s.L1Bytes == 0 {
			t.Errorf("server %+v: want healthy, an L1 hit ratio, writes and L1 bytes", s)
		}
	}
	if rep.HitRatio.L1 <= 0 || rep.HitRatio.Overall < rep.HitRatio.L1 || rep.HitRatio.Overall > 1 {
		t.Errorf("hit ratio %+v, want 0 < L1 <= overall <= 1", rep.HitRatio)
	}
	if rep.Compression.Writes == 0 {
		t.Errorf("compression: no writes counted")
	}
	if r := rep.Redis; r == nil || r.UsedMemoryMax == 0 || r.CPUSeconds <= 0 || r.OpsPerSecMax == 0 || r.ClientsMax == 0 {
		t.Errorf("redis = %+v, want memory, CPU, ops and clients", r)
	}
	if p := rep.Propagation; p.Probes == 0 || p.SSETimeouts+p.ReadTimeouts != 0 || p.Read.P50 <= 0 {
		t.Errorf("propagation = %+v, want probes, no timeouts, read lags", p)
	}
	for _, name := range []string{"throughput_rps", "latency_ms.chat.p99", "hit_ratio.l1", "redis.used_memory_bytes", "redis.cpu_cores",
		"propagation.sse_ms", "propagation.read_ms"} {
		if len(rep.Series[name]) < 2 {
			t.Errorf("series %q has %d points, want 2 or more", name, len(rep.Series[name]))
		}
	}

	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	// Self-contained: no external script, style sheet, image or font.
	if m := regexp.MustCompile(`(?i)(src|href)\s*=|@import|url\(`).Find(page); m != nil {
		t.Errorf("the report refers to another resource: %q", m)
	}

	t.Run("browser", func(t *testing.T) {
		bin := chromiumPath(t)
		dom := string(runChromium(t, bin, "--virtual-time-budget=3000", "--dump-dom", "file://"+htmlPath))
		svg := regexp.MustCompile(`<svg [^>]*class="tc-chart"[^>]*>`)
		drawn := map[string]int{}
		for _, tag := range svg.FindAllString(dom, -1) {
			id := regexp.MustCompile(`data-chart="([^"]*)"`).FindStringSubmatch(tag)
			n := regexp.MustCompile(`data-points="(\d+)"`).FindStringSubmatch(tag)
			if id == nil || n == nil {
				t.Errorf("chart tag without data-chart or data-points: %s", tag)
				continue
			}
			drawn[id[1]], _ = strconv.Atoi(n[1])
		}
		for _, id := range reportCharts {
			// Each chart's box holds its svg and a path per series with points.
			box := dom[max(0, strings.Index(dom, `id="chart-`+id+`"`)):]
			if end := strings.Index(box, "</svg>"); end >= 0 {
				box = box[:end]
			}
			if drawn[id] < 2 || !strings.Contains(box, `class="tc-series"`) {
				t.Errorf("chart %s drew %d points (series path: %v), want 2 or more", id, drawn[id], strings.Contains(box, `class="tc-series"`))
			}
		}
		png := filepath.Join(t.TempDir(), "load-report.png")
		runChromium(t, bin, "--virtual-time-budget=3000", "--window-size=1280,1800", "--screenshot="+png, "file://"+htmlPath)
		img, err := os.ReadFile(png)
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if !bytes.HasPrefix(img, []byte("\x89PNG\r\n\x1a\n")) || len(img) <= 20<<10 {
			t.Errorf("screenshot is %d bytes, want a PNG over 20 KiB", len(img))
		}
		t.Logf("report screenshot: %s", png)
		if dst := os.Getenv("LOAD_REPORT_SCREENSHOT"); dst != "" {
			if err := os.WriteFile(dst, img, 0o644); err != nil {
				t.Errorf("copy screenshot to LOAD_REPORT_SCREENSHOT=%s: %v", dst, err)
			}
		}
	})
}

// TestLoadUsersSeesDeafInstance: with one instance's invalidations switched
// off (a test-only setting), the probes' context reads through it keep
// showing the old version of edits made through the other: they time out
// and are reported as errors, while the SSE probes still pass (events go
// through Redis streams, not invalidations). A probe that passed here would
// pass whatever the cache did.
func TestLoadUsersSeesDeafInstance(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	db := filepath.Join(t.TempDir(), "shared.db")
	a := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "deafload", L1TTL: time.Minute})
	b := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "deafload", L1TTL: time.Minute, NoInvalidation: true})
	rep, _, out := runLoadJSON(t, t.Context(), "-urls", a.URL+","+b.URL, "-users", "2", "-duration", "3s", "-profile", "fast",
		"-probe-every", "200ms", "-probe-timeout", "300ms")
	p := rep.Propagation
	if p.ReadTimeouts == 0 || rep.ErrorsByKind["probe timeout (read)"] != p.ReadTimeouts {
		t.Errorf("propagation %+v, errors %v: want read timeouts, each counted as an error", p, rep.ErrorsByKind)
	}
	if p.SSETimeouts != 0 {
		t.Errorf("SSE probes timed out %d times, want 0 (events do not depend on invalidations)", p.SSETimeouts)
	}
	if !strings.Contains(out, "probe timeout (read)") {
		t.Errorf("summary does not show the read timeouts")
	}
}

// TestLoadUsersRequests: -requests ends the run (before -duration) after
// that many requests, on one instance without Redis, and without probes.
func TestLoadUsersRequests(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	rep, _, out := runLoadJSON(t, t.Context(), "-urls", in.URL, "-users", "5", "-profile", "fast", "-requests", "60", "-duration", "1m",
		"-probe-every", "0")
	if rep.StoppedBy != "requests" || rep.Requests == 0 || rep.Requests > 60 || rep.Errors != 0 {
		t.Errorf("stopped by %q after %d requests (%d errors), want requests, 1 to 60, 0 errors", rep.StoppedBy, rep.Requests, rep.Errors)
	}
	if rep.Redis != nil || rep.Propagation.Probes != 0 || !strings.Contains(out, "redis: not sampled") {
		t.Errorf("redis %+v, %d probes: want neither", rep.Redis, rep.Propagation.Probes)
	}
}

// TestLoadUsersInterrupt: cancelling the context (Ctrl-C) ends the run
// early and still prints the summary and writes the files.
func TestLoadUsersInterrupt(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	htmlPath := filepath.Join(t.TempDir(), "load.html")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Interrupt once every user has posted a message or two.
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for in.app.srv.Service.Stats().Events.Published < 6 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
		cancel()
	}()
	rep, _, out := runLoadJSON(t, ctx, "-urls", in.URL, "-users", "3", "-profile", "fast", "-duration", "1h", "-report", htmlPath)
	if rep.StoppedBy != "interrupt" || rep.Operations[opSessionCreate].Count < 3 {
		t.Errorf("stopped by %q with %d sessions created, want interrupt and >= 3", rep.StoppedBy, rep.Operations[opSessionCreate].Count)
	}
	if !strings.Contains(out, "operation") {
		t.Errorf("no summary after an interrupt")
	}
	if _, err := os.Stat(htmlPath); err != nil {
		t.Errorf("no report after an interrupt: %v", err)
	}
}

// TestLoadUsersBadFlags: each bad flag is refused before any request, with
// an error naming it.
func TestLoadUsersBadFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"remote url", []string{"-urls", "http://192.0.2.1:8080"}, "-allow-remote"},
		{"not a url", []string{"-urls", "ftp://127.0.0.1"}, "want http://127.0.0.1:PORT"},
		{"no url", []string{"-urls", " , "}, "-urls names no instance"},
		{"no users", []string{"-users", "0"}, "-users 0"},
		{"too many users", []string{"-users", "50001"}, "-users 50001"},
		{"long", []string{"-duration", "2h"}, "-duration 2h0m0s"},
		{"zero duration", []string{"-duration", "0s"}, "-duration 0s"},
		{"negative requests", []string{"-requests", "-1"}, "-requests -1"},
		{"ramp past duration", []string{"-duration", "10s", "-ramp-up", "20s"}, "-ramp-up 20s"},
		{"profile", []string{"-profile", "slow"}, `-profile "slow"`},
		{"inverted span", []string{"-message-every", "30s-10s"}, "message-every"},
		{"bad span", []string{"-read-every", "often"}, "read-every"},
		{"zipf", []string{"-zipf", "1"}, "-zipf 1"},
		{"ref prob", []string{"-ref-prob", "1.5"}, "-ref-prob 1.5"},
		{"sessions", []string{"-sessions", "0"}, "-sessions 0"},
		{"probe", []string{"-probe-every", "1ms"}, "-probe-every 1ms"},
		{"timeout", []string{"-timeout", "0s"}, "-timeout 0s"},
		{"remote redis", []string{"-redis", "redis://10.1.2.3:6379"}, "-redis"},
		{"bad redis", []string{"-redis", "mysql://x"}, "-redis"},
		{"progress", []string{"-progress", "fancy"}, `-progress "fancy"`},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"mode", []string{"-mode", "turbo"}, `-mode "turbo"`},
		{"mode without value", []string{"-mode"}, "-mode needs a value"},
		{"unreachable", []string{"-urls", "http://127.0.0.1:1", "-duration", "1s"}, "does not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := load(t.Context(), tc.args, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("load %q = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

// TestLoadUserSchedule: a user's choices derive from the seed and its
// index alone.
func TestLoadUserSchedule(t *testing.T) {
	t.Parallel()
	o, err := parseUsersFlags([]string{"-profile", "fast", "-seed", "42"})
	if err != nil {
		t.Fatal(err)
	}
	draws := func(o usersOptions, id int) []int64 {
		u := newUser(&loadRun{o: o}, id)
		var d []int64
		for range 8 {
			d = append(d, int64(u.draw(o.Message)))
		}
		return d
	}
	if a, b := draws(o, 3), draws(o, 3); !slices.Equal(a, b) {
		t.Errorf("same seed and user: %v then %v", a, b)
	}
	if a, b := draws(o, 3), draws(o, 4); slices.Equal(a, b) {
		t.Errorf("users 3 and 4 drew the same think times %v", a)
	}
	o2 := o
	o2.Seed = 43
	if a, b := draws(o, 3), draws(o2, 3); slices.Equal(a, b) {
		t.Errorf("seeds 42 and 43 drew the same think times %v", a)
	}
	for _, d := range draws(o, 1) {
		if d < int64(o.Message.Min) || d > int64(o.Message.Max) {
			t.Errorf("think time %v outside %v", d, o.Message.String())
		}
	}
}

// TestLoadProgressLines: off a terminal, progress is a plain line every 5 s.
func TestLoadProgressLines(t *testing.T) {
	t.Parallel()
	o, err := parseUsersFlags([]string{"-users", "7", "-duration", "1m"})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r := newLoadRun(o, nil, nil, &out)
	r.begin = time.Now()
	p := newProgress(r) // out is no terminal: lines
	if p.bar != nil {
		t.Fatal("a progress bar on a strings.Builder")
	}
	for s := 1; s <= 11; s++ {
		p.update(r.begin.Add(time.Duration(s) * time.Second))
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "load:   5s of 1m0s · users 0/7 · 0 requests") || !strings.HasPrefix(lines[1], "load:  10s of 1m0s") {
		t.Errorf("progress lines over 11 s:\n%s\nwant two, at 5 s and 10 s", out.String())
	}
}
