package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// result is one benchmark line: the benchmark's name without its -GOMAXPROCS suffix, that
// GOMAXPROCS, and its values by unit (ns/op and the custom metrics, such as ours/base).
type result struct {
	name   string
	procs  int
	values map[string]float64
}

// round is what one run printed in one round of scripts/bench.
type round struct {
	run     string
	n       int
	results []result
}

// procs is the GOMAXPROCS the round ran at (1 when it printed no result).
func (rd round) procs() int {
	for _, r := range rd.results {
		return r.procs
	}
	return 1
}

// find returns the result of bench, {P} standing for the round's GOMAXPROCS.
func (rd round) find(bench string) (result, bool) {
	bench = strings.ReplaceAll(bench, "{P}", strconv.Itoa(rd.procs()))
	for _, r := range rd.results {
		if r.name == bench {
			return r, true
		}
	}
	return result{}, false
}

// markerPrefix starts the line scripts/bench writes before each run's output. Benchmark tools
// (benchstat, golang.org/x/perf/benchfmt) skip it: it is neither a result nor a "key: value"
// configuration line.
const markerPrefix = "# bench "

// parse reads the output of scripts/bench: per run and round a marker line
// "# bench run=NAME round=N" and the benchmark binary's output (results in the standard Go
// benchmark format, among lines it skips: headers, logs, PASS/FAIL). A round whose run failed
// has a marker and fewer results, or none.
func parse(r io.Reader) ([]round, error) {
	var rounds []round
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if rest, ok := strings.CutPrefix(text, markerPrefix); ok {
			rd, err := parseMarker(rest)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			rounds = append(rounds, rd)
			continue
		}
		res, ok := parseResult(text)
		if !ok {
			continue
		}
		if len(rounds) == 0 {
			return nil, fmt.Errorf("line %d: benchmark result before the first %q line", line, markerPrefix+"run=… round=…")
		}
		last := &rounds[len(rounds)-1]
		last.results = append(last.results, res)
	}
	return rounds, sc.Err()
}

func parseMarker(s string) (round, error) {
	var rd round
	for f := range strings.FieldsSeq(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "run":
			rd.run = v
		case "round":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return round{}, fmt.Errorf("bad round %q in marker %q", v, s)
			}
			rd.n = n
		}
	}
	if rd.run == "" || rd.n == 0 {
		return round{}, fmt.Errorf("marker %q lacks run= or round=", s)
	}
	return rd, nil
}

// parseResult parses "BenchmarkName-P  N  v1 unit1  v2 unit2 …"; ok is false for any other line.
func parseResult(line string) (result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || len(f)%2 != 0 || !strings.HasPrefix(f[0], "Benchmark") {
		return result{}, false
	}
	if _, err := strconv.ParseUint(f[1], 10, 64); err != nil {
		return result{}, false
	}
	r := result{name: f[0], procs: 1, values: make(map[string]float64, len(f)/2-1)}
	if i := strings.LastIndexByte(r.name, '-'); i > 0 {
		if p, err := strconv.Atoi(r.name[i+1:]); err == nil && p > 0 {
			r.name, r.procs = r.name[:i], p
		}
	}
	for i := 2; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return result{}, false
		}
		r.values[f[i+1]] = v
	}
	return r, true
}
