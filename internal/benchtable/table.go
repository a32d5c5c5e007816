package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// figure is one row of the headline table.
type figure struct {
	name, means string
	run         string // the run whose rounds give the figure
	value       func(round) (float64, bool)
	kind        kind
	target      target // zero: none
}

// kind says how a figure's value reads: a latency ratio (lower is better), a throughput ratio
// or a speed-up (higher is better), nanoseconds, microseconds or a percentage.
type kind int

const (
	latency kind = iota
	throughput
	speedup
	micros
	percent
	nanos
)

func (k kind) format(v float64) string {
	switch k {
	case throughput:
		return strconv.FormatFloat(v, 'f', 2, 64) + "x"
	case speedup:
		return strconv.FormatFloat(v, 'f', 1, 64) + "x"
	case micros:
		if v >= 1000 {
			return strconv.FormatFloat(v/1000, 'f', 2, 64) + " ms"
		}
		return strconv.FormatFloat(v, 'f', 0, 64) + " µs"
	case percent:
		return strconv.FormatFloat(v, 'f', 1, 64) + "%"
	case nanos:
		return strconv.FormatFloat(v, 'f', 1, 64) + " ns"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// target is the bound a figure's median is held to.
type target struct {
	set, atMost bool
	limit       float64
}

func atMost(l float64) target  { return target{set: true, atMost: true, limit: l} }
func atLeast(l float64) target { return target{set: true, limit: l} }

func (t target) met(v float64) bool {
	if t.atMost {
		return v <= t.limit
	}
	return v >= t.limit
}

// cell is the target column: the bound, and whether the median meets it.
func (t target) cell(k kind, median float64, ok bool) string {
	if !t.set {
		return "—"
	}
	s := "≥ " + k.bound(t.limit)
	if t.atMost {
		s = "≤ " + k.bound(t.limit)
	}
	switch {
	case !ok:
		return s
	case t.met(median):
		return s + ": met"
	}
	return s + ": **missed**"
}

// bound formats a target's limit, with no more digits than it has.
func (k kind) bound(l float64) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	switch k {
	case throughput, speedup:
		return f(l) + "x"
	case micros:
		if l >= 1000 {
			return f(l/1000) + " ms"
		}
		return f(l) + " µs"
	case percent:
		return f(l) + "%"
	case nanos:
		return f(l) + " ns"
	}
	return f(l)
}

// row is a figure with its values over the rounds of its run.
type row struct {
	figure
	values []float64 // one per round that produced the figure
	rounds int       // rounds its run was started in
	procs  int
}

// summarize evaluates every figure over the rounds of its run.
func summarize(rounds []round) []row {
	rows := make([]row, len(figures))
	for i, f := range figures {
		// Until a round says otherwise, the benchmarks ran at this process's GOMAXPROCS: both
		// run on one machine with the same environment.
		rows[i] = row{figure: f, procs: runtime.GOMAXPROCS(0)}
		for _, rd := range rounds {
			if rd.run != f.run {
				continue
			}
			rows[i].rounds++
			if len(rd.results) > 0 {
				rows[i].procs = rd.procs()
			}
			if v, ok := f.value(rd); ok {
				rows[i].values = append(rows[i].values, v)
			}
		}
	}
	return rows
}

// median of values (not empty), which it sorts.
func median(values []float64) float64 {
	slices.Sort(values)
	n := len(values)
	if n%2 == 1 {
		return values[n/2]
	}
	return (values[n/2-1] + values[n/2]) / 2
}

// header is the table's first two lines, in the page's format.
const header = "| figure | what it means | ours / baseline, median | spread min–max (rounds) | target |\n" +
	"|---|---|---:|---|---|\n"

// writeTable prints the headline table in the format of docs/BENCHMARKS.md.
func writeTable(w io.Writer, rows []row) error {
	var b strings.Builder
	b.WriteString(header)
	for _, r := range rows {
		name := strings.ReplaceAll(r.name, "{P}", strconv.Itoa(r.procs))
		med, spread := "—", "not run"
		ok := len(r.values) > 0
		var m float64
		if ok {
			m = median(r.values) // sorts r.values
			med = r.kind.format(m)
			lo, hi := r.values[0], r.values[len(r.values)-1]
			spread = r.kind.format(lo) + "–" + r.kind.format(hi)
			if lo == hi {
				spread = r.kind.format(lo)
			}
		} else if r.rounds > 0 {
			spread = "no round produced it"
		}
		count := strconv.Itoa(len(r.values))
		if len(r.values) != r.rounds {
			count += " of " + strconv.Itoa(r.rounds)
		}
		if ok || r.rounds > 0 {
			spread += " (" + count + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, r.means, med, spread, r.target.cell(r.kind, m, ok))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
