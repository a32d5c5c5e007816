package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tiercache/tiercache/cmd/contextd/internal/charts"
)

// loadReport is the result of a run: the summary printed at the end, the
// -json file (field names are stable; docs/API.md lists them) and the data
// of the -report page.
type loadReport struct {
	Format       int                  `json:"format"` // 1; grows only with incompatible changes
	StartedAt    time.Time            `json:"started_at"`
	EndedAt      time.Time            `json:"ended_at"`
	Duration     float64              `json:"duration_seconds"`
	StoppedBy    string               `json:"stopped_by"` // duration, requests or interrupt
	Config       loadReportConfig     `json:"config"`
	Requests     int64                `json:"requests"` // all operations, failed ones included
	Errors       int64                `json:"errors"`
	Throughput   float64              `json:"throughput_rps"` // successful requests per second
	Operations   map[string]opSummary `json:"operations"`
	ErrorsByKind map[string]int64     `json:"errors_by_kind"`
	ErrorSamples map[string]string    `json:"error_samples,omitempty"` // the first error of each kind
	SSE          sseSummary           `json:"sse"`
	Servers      []serverSummary      `json:"servers"`
	HitRatio     hitRatios            `json:"hit_ratio"` // over all servers, over the run
	Compression  compressionSummary   `json:"compression"`
	Redis        *redisSummary        `json:"redis,omitempty"` // with -redis
	Propagation  propagationSummary   `json:"propagation"`
	SampleErrors int64                `json:"sample_errors"` // failed samples of /api/health/redis or INFO
	SampleError  string               `json:"sample_error,omitempty"`
	// Series are the per-second time series: name → [[seconds since the
	// start, value], ...]; the names are listed in docs/API.md.
	Series map[string][][2]float64 `json:"series"`
}

type loadReportConfig struct {
	URLs        []string   `json:"urls"`
	Users       int        `json:"users"`
	Seed        uint64     `json:"seed"`
	Profile     string     `json:"profile"`
	DurationS   float64    `json:"duration_seconds"`
	Requests    int64      `json:"requests"`
	RampUpS     float64    `json:"ramp_up_seconds"`
	MessageS    [2]float64 `json:"message_every_seconds"`
	ReadS       [2]float64 `json:"read_every_seconds"`
	EditS       [2]float64 `json:"edit_every_seconds"`
	SessionS    [2]float64 `json:"session_every_seconds"`
	MaxSessions int        `json:"sessions_per_user"`
	RefProb     float64    `json:"ref_prob"`
	Zipf        float64    `json:"zipf"`
	ProbeEveryS float64    `json:"probe_every_seconds"`
	Redis       bool       `json:"redis_sampled"`
}

type opSummary struct {
	Count      int64     `json:"count"` // successful
	Errors     int64     `json:"errors"`
	Throughput float64   `json:"throughput_rps"`
	Latency    latencyMS `json:"latency_ms"`
}

type latencyMS struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type sseSummary struct {
	Events int64 `json:"events_received"` // by the users' streams
}

type serverSummary struct {
	URL                string    `json:"url"`
	Status             string    `json:"status"` // at the end
	Breaker            string    `json:"breaker,omitempty"`
	BreakerOpenSamples int       `json:"breaker_not_closed_samples"`
	HitRatio           hitRatios `json:"hit_ratio"` // over the run
	L1Bytes            uint64    `json:"l1_bytes"`  // at the end
	Writes             uint64    `json:"writes"`    // cache writes during the run
	CompressionSaved   uint64    `json:"compression_saved_bytes"`
	InvalidationLagP50 float64   `json:"invalidation_lag_p50_ms"` // the server's own, at the end
	InvalidationLagP99 float64   `json:"invalidation_lag_p99_ms"`
	Gaps               uint64    `json:"gaps"`
}

type compressionSummary struct {
	SavedBytes    uint64  `json:"saved_bytes"` // over all servers, during the run
	Writes        uint64  `json:"writes"`
	SavedPerWrite float64 `json:"saved_bytes_per_write"`
}

type redisSummary struct {
	UsedMemoryStart int64   `json:"used_memory_start_bytes"`
	UsedMemoryEnd   int64   `json:"used_memory_end_bytes"`
	UsedMemoryMax   int64   `json:"used_memory_max_bytes"`
	CPUSeconds      float64 `json:"cpu_seconds"` // used_cpu_sys + used_cpu_user during the run
	CPUCores        float64 `json:"cpu_cores_avg"`
	OpsPerSecMax    int64   `json:"ops_per_sec_max"`
	ClientsMax      int64   `json:"connected_clients_max"`
}

type propagationSummary struct {
	Probes       int64     `json:"probes"`
	SSE          latencyMS `json:"sse_ms"`  // edit acknowledged → the other instances' subscribers received it
	Read         latencyMS `json:"read_ms"` // edit acknowledged → a context read through the others showed it
	SSETimeouts  int64     `json:"sse_timeouts"`
	ReadTimeouts int64     `json:"read_timeouts"`
}

// report gathers the run's figures.
func (r *loadRun) report(end time.Time) *loadReport {
	elapsed := end.Sub(r.begin)
	o := r.o
	sec := func(sp span) [2]float64 { return [2]float64{sp.Min.Seconds(), sp.Max.Seconds()} }
	rep := &loadReport{Format: 1, StartedAt: r.begin.UTC(), EndedAt: end.UTC(), Duration: elapsed.Seconds(), StoppedBy: r.stop.reason,
		Config: loadReportConfig{URLs: o.URLs, Users: o.Users, Seed: o.Seed, Profile: o.Profile, DurationS: o.Duration.Seconds(),
			Requests: o.Requests, RampUpS: o.RampUp.Seconds(), MessageS: sec(o.Message), ReadS: sec(o.Read), EditS: sec(o.Edit),
			SessionS: sec(o.NewSession), MaxSessions: o.MaxSessions, RefProb: o.RefProb, Zipf: o.Zipf,
			ProbeEveryS: o.ProbeEvery.Seconds(), Redis: r.rdb != nil},
		Operations: r.rec.summaries(elapsed), SSE: sseSummary{Events: r.events.Load()},
		SampleErrors: r.healthErrs, SampleError: r.healthErr, Series: r.series}
	rep.ErrorsByKind, rep.ErrorSamples = r.rec.errors()
	var ok int64
	for _, s := range rep.Operations {
		ok += s.Count
		rep.Requests += s.Count + s.Errors
	}
	for _, n := range rep.ErrorsByKind {
		rep.Errors += n
	}
	rep.Throughput = float64(ok) / elapsed.Seconds()

	var all struct{ l1h, l1m, l2h, l2m uint64 }
	for i, base := range o.URLs {
		first, last := r.first[i], r.last[i]
		s := serverSummary{URL: base, BreakerOpenSamples: r.breakerOpen[i]}
		if first != nil && last != nil {
			d := func(a, b uint64) uint64 {
				if b < a {
					return 0
				}
				return b - a
			}
			f, l := first.Cache, last.Cache
			l1h, l1m, l2h, l2m := d(f.L1Hits, l.L1Hits), d(f.L1Misses, l.L1Misses), d(f.L2Hits, l.L2Hits), d(f.L2Misses, l.L2Misses)
			all.l1h, all.l1m, all.l2h, all.l2m = all.l1h+l1h, all.l1m+l1m, all.l2h+l2h, all.l2m+l2m
			s.HitRatio = hitRatioOf(l1h, l1m, l2h, l2m)
			s.Status, s.Breaker, s.L1Bytes = last.Status, last.Breaker, l.L1Bytes
			s.Writes, s.CompressionSaved, s.Gaps = d(f.Sets, l.Sets), d(f.CompressionSaved, l.CompressionSaved), d(f.Gaps, l.Gaps)
			if sub := last.Subscriber; sub != nil {
				s.InvalidationLagP50, s.InvalidationLagP99 = float64(sub.LagP50)/1e6, float64(sub.LagP99)/1e6
			}
			rep.Compression.SavedBytes += s.CompressionSaved
			rep.Compression.Writes += s.Writes
		}
		rep.Servers = append(rep.Servers, s)
	}
	rep.HitRatio = hitRatioOf(all.l1h, all.l1m, all.l2h, all.l2m)
	if rep.Compression.Writes > 0 {
		rep.Compression.SavedPerWrite = float64(rep.Compression.SavedBytes) / float64(rep.Compression.Writes)
	}
	if r.info0 != nil && r.info != nil {
		rs := &redisSummary{UsedMemoryStart: r.info0.UsedMemory, UsedMemoryEnd: r.info.UsedMemory, CPUSeconds: r.info.CPU - r.info0.CPU}
		if d := r.info.At.Sub(r.info0.At).Seconds(); d > 0 {
			rs.CPUCores = rs.CPUSeconds / d
		}
		rs.UsedMemoryMax = max(r.info0.UsedMemory, r.info.UsedMemory)
		for _, p := range r.series["redis.used_memory_bytes"] {
			rs.UsedMemoryMax = max(rs.UsedMemoryMax, int64(p[1]))
		}
		for _, p := range r.series["redis.ops_per_sec"] {
			rs.OpsPerSecMax = max(rs.OpsPerSecMax, int64(p[1]))
		}
		for _, p := range r.series["redis.connected_clients"] {
			rs.ClientsMax = max(rs.ClientsMax, int64(p[1]))
		}
		rep.Redis = rs
	}
	if p := r.probe; p != nil {
		rep.Propagation = propagationSummary{Probes: p.probes, SSE: summarizeHist(p.sseLag), Read: summarizeHist(p.readLag),
			SSETimeouts: p.sseTimeouts, ReadTimeouts: p.readTimeouts}
	}
	return rep
}

// hitRatioOf: L1 is hits over L1 lookups; L2 is hits over the lookups that
// reached Redis; overall is lookups answered by either tier.
func hitRatioOf(l1h, l1m, l2h, l2m uint64) hitRatios {
	div := func(a, b uint64) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	return hitRatios{L1: div(l1h, l1h+l1m), L2: div(l2h, l2h+l2m), Overall: div(l1h+l2h, l1h+l1m)}
}

// printSummary writes the summary table.
func (rep *loadReport) printSummary(out io.Writer) {
	c := rep.Config
	fmt.Fprintf(out, "\ncontextd load: %d users on %d instance(s) for %.1fs (stopped by %s, seed %d, profile %s)\n",
		c.Users, len(c.URLs), rep.Duration, rep.StoppedBy, c.Seed, c.Profile)
	fmt.Fprintf(out, "%d requests, %.1f req/s successful, %d errors\n\n", rep.Requests, rep.Throughput, rep.Errors)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tcount\terrors\treq/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
	for _, op := range loadOps {
		s, ok := rep.Operations[op]
		if !ok {
			continue
		}
		l := s.Latency
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", op, s.Count, s.Errors, s.Throughput, l.P50, l.P90, l.P99, l.Max)
	}
	tw.Flush()
	if len(rep.ErrorsByKind) == 0 {
		fmt.Fprintln(out, "\nerrors by kind: none")
	} else {
		fmt.Fprintln(out, "\nerrors by kind:")
		for _, k := range sortedKeys(rep.ErrorsByKind) {
			fmt.Fprintf(out, "  %-22s %6d  e.g. %s\n", k, rep.ErrorsByKind[k], truncate(rep.ErrorSamples[k], 160))
		}
	}
	fmt.Fprintf(out, "SSE: %d events received by the users' streams\n", rep.SSE.Events)
	h := rep.HitRatio
	fmt.Fprintf(out, "hit ratio over the run (servers): L1 %.1f%% · L2 %.1f%% · overall %.1f%%\n", h.L1*100, h.L2*100, h.Overall*100)
	for _, s := range rep.Servers {
		fmt.Fprintf(out, "  %s: %s, breaker %s · L1 %.1f%% L2 %.1f%% overall %.1f%% · L1 %s · invalidation lag p50 %.2f ms p99 %.2f ms · gaps %d\n",
			s.URL, s.Status, orDash(s.Breaker), s.HitRatio.L1*100, s.HitRatio.L2*100, s.HitRatio.Overall*100, bytesIEC(float64(s.L1Bytes)),
			s.InvalidationLagP50, s.InvalidationLagP99, s.Gaps)
	}
	cs := rep.Compression
	fmt.Fprintf(out, "compression: %s saved over %d cache writes (%.0f B per write)\n", bytesIEC(float64(cs.SavedBytes)), cs.Writes, cs.SavedPerWrite)
	if rs := rep.Redis; rs != nil {
		fmt.Fprintf(out, "redis: used_memory %s → %s (max %s) · CPU %.2fs (%.2f cores) · ops/s max %d · clients max %d\n",
			bytesIEC(float64(rs.UsedMemoryStart)), bytesIEC(float64(rs.UsedMemoryEnd)), bytesIEC(float64(rs.UsedMemoryMax)),
			rs.CPUSeconds, rs.CPUCores, rs.OpsPerSecMax, rs.ClientsMax)
	} else {
		fmt.Fprintln(out, "redis: not sampled (pass -redis redis://127.0.0.1:PORT)")
	}
	if p := rep.Propagation; p.Probes > 0 {
		fmt.Fprintf(out, "propagation (%d probes): SSE p50 %.2f p90 %.2f p99 %.2f max %.2f ms · context read p50 %.2f p90 %.2f p99 %.2f max %.2f ms · timeouts %d SSE, %d read\n",
			p.Probes, p.SSE.P50, p.SSE.P90, p.SSE.P99, p.SSE.Max, p.Read.P50, p.Read.P90, p.Read.P99, p.Read.Max, p.SSETimeouts, p.ReadTimeouts)
	} else {
		fmt.Fprintln(out, "propagation: no probe completed")
	}
	if rep.SampleErrors > 0 {
		fmt.Fprintf(out, "sampling: %d failed samples, last: %s\n", rep.SampleErrors, truncate(rep.SampleError, 160))
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesIEC formats a byte count like 1.5 MiB.
func bytesIEC(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

func (rep *loadReport) writeJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// charts returns the report's charts, built from its series.
func (rep *loadReport) charts() []charts.Chart {
	series := func(name, key string, scale float64) charts.Series {
		s := charts.Series{Name: name}
		for _, p := range rep.Series[key] {
			s.Append(p[0], p[1]*scale)
		}
		return s
	}
	var ops []string
	for _, op := range loadOps {
		if _, ok := rep.Operations[op]; ok {
			ops = append(ops, op)
		}
	}
	thr := charts.Chart{ID: "throughput", Title: "Throughput", Unit: "req/s", Series: []charts.Series{series("all", "throughput_rps", 1)}}
	p50 := charts.Chart{ID: "latency-p50", Title: "Latency p50", Unit: "ms"}
	p99 := charts.Chart{ID: "latency-p99", Title: "Latency p99", Unit: "ms"}
	for _, op := range ops {
		thr.Series = append(thr.Series, series(op, "throughput_rps."+op, 1))
		p50.Series = append(p50.Series, series(op, "latency_ms."+op+".p50", 1))
		p99.Series = append(p99.Series, series(op, "latency_ms."+op+".p99", 1))
	}
	return []charts.Chart{
		thr, p50, p99,
		{ID: "hit-ratio", Title: "Hit ratio (servers)", Unit: "%", Series: []charts.Series{
			series("L1", "hit_ratio.l1", 100), series("L2", "hit_ratio.l2", 100), series("overall", "hit_ratio.overall", 100)}},
		{ID: "redis-memory", Title: "Memory", Unit: "bytes", Series: []charts.Series{
			series("Redis used_memory", "redis.used_memory_bytes", 1), series("L1, all servers", "servers.l1_bytes", 1)}},
		{ID: "redis-cpu", Title: "Redis CPU", Unit: "cores", Series: []charts.Series{series("sys+user", "redis.cpu_cores", 1)}},
		{ID: "propagation", Title: "Propagation lag (probes, worst other instance)", Unit: "ms", Series: []charts.Series{
			series("SSE", "propagation.sse_ms", 1), series("context read", "propagation.read_ms", 1),
			series("servers' invalidation p99", "servers.invalidation_lag_p99_ms", 1)}},
	}
}

//go:embed loadgen_report.html
var reportHTML string

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"pct":   func(v float64) string { return fmt.Sprintf("%.1f%%", v*100) },
	"bytes": func(v any) string { return bytesIEC(toFloat(v)) },
	"ms":    func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"join":  strings.Join,
}).Parse(reportHTML))

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int64:
		return float64(n)
	case uint64:
		return float64(n)
	case float64:
		return n
	}
	return 0
}

// writeHTML writes the self-contained report page: the summary as tables
// and the charts, drawn by the charts package's script from the embedded
// series. It needs no network and no other file.
func (rep *loadReport) writeHTML(path string) error {
	type opRow struct {
		Name string
		opSummary
	}
	var rows []opRow
	for _, op := range loadOps {
		if s, ok := rep.Operations[op]; ok {
			rows = append(rows, opRow{op, s})
		}
	}
	var sb strings.Builder
	err := reportTmpl.Execute(&sb, map[string]any{
		"R": rep, "Ops": rows, "Kinds": sortedKeys(rep.ErrorsByKind), "Charts": rep.charts(),
		"JS": template.JS(charts.JS),
	})
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}
