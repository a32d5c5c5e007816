package main

import (
	"math"
	"os"
	"strings"
	"testing"
)

// testdata/rounds.txt: round 1 of every run is the output of `scripts/bench -quick -raw FILE`
// as captured; after it, by hand, a second round of l1 and http with other values and a third
// round of l1 that failed before printing a result.
func loadRounds(tb testing.TB) []round {
	tb.Helper()
	f, err := os.Open("testdata/rounds.txt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	rounds, err := parse(f)
	if err != nil {
		tb.Fatal(err)
	}
	return rounds
}

func TestParse(t *testing.T) {
	rounds := loadRounds(t)
	if got, want := len(rounds), len(runs)+3; got != want {
		t.Fatalf("parse: %d rounds, want %d", got, want)
	}
	l1 := rounds[0]
	if l1.run != "l1" || l1.n != 1 || len(l1.results) != 5 {
		t.Fatalf("first round = run %q round %d with %d results, want l1, 1, 5", l1.run, l1.n, len(l1.results))
	}
	r, ok := l1.find("BenchmarkPair/L1Hit/g={P}/typed-vs-otter")
	if !ok {
		t.Fatalf("find(g={P}) found nothing in %v", l1.results)
	}
	if r.name != "BenchmarkPair/L1Hit/g=2/typed-vs-otter" || r.procs != 2 {
		t.Errorf("result = %q at GOMAXPROCS %d, want BenchmarkPair/L1Hit/g=2/typed-vs-otter at 2", r.name, r.procs)
	}
	if got := r.values["ours/base"]; got != 1.510 {
		t.Errorf("ours/base = %v, want 1.510", got)
	}
	if got := r.values["ours-ns/op"]; got != 264.5 {
		t.Errorf("ours-ns/op = %v, want 264.5", got)
	}
	if failed := rounds[len(runs)+1]; failed.run != "l1" || failed.n != 3 || len(failed.results) != 0 {
		t.Errorf("failed round = run %q round %d with %d results, want l1, 3, none", failed.run, failed.n, len(failed.results))
	}
}

func TestParseResult(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		ok         bool
	}{
		{"pair", "BenchmarkPair/L2Hit/g=64-2    \t    1689\t    829640 base-ns/op\t   1215095 ours-ns/op\t         1.465 ours/base", true},
		{"no procs suffix", "BenchmarkSetBackplane/g=1/on-vs-off \t 300\t 1.039 ours/base", true},
		{"name alone", "BenchmarkPair/L1Hit", false},
		{"failure", "--- FAIL: BenchmarkPair/L1Hit/g=1/typed-vs-otter-2", false},
		{"log line", "    BenchmarkHTTP: server said 500 times", false},
		{"no iteration count", "BenchmarkX-2 fast 1 ns/op", false},
		{"unit without value", "BenchmarkX-2 10 1 ns/op 2", false},
		{"value not a number", "BenchmarkX-2 10 one ns/op", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := parseResult(tc.line); ok != tc.ok {
				t.Errorf("parseResult(%q) ok = %v, want %v", tc.line, ok, tc.ok)
			}
		})
	}
	r, _ := parseResult("BenchmarkSetBackplane/g=1/on-vs-off \t 300\t 1.039 ours/base")
	if r.name != "BenchmarkSetBackplane/g=1/on-vs-off" || r.procs != 1 {
		t.Errorf("no suffix: name %q procs %d, want the whole name at 1", r.name, r.procs)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"result before a marker", "BenchmarkX-2 10 1 ns/op\n"},
		{"marker without run", "# bench round=1\n"},
		{"marker with a bad round", "# bench run=l1 round=zero\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parse(strings.NewReader(tc.in)); err == nil {
				t.Errorf("parse(%q) = nil error, want one", tc.in)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(append([]float64(nil), tc.in...)); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// Every figure names a run of the plan and is produced by the captured output.
func TestEveryFigureProduced(t *testing.T) {
	names := map[string]bool{}
	for _, r := range runs {
		names[r.name] = true
	}
	for _, row := range summarize(loadRounds(t)) {
		if !names[row.run] {
			t.Errorf("figure %q: run %q is not in runs", row.name, row.run)
		}
		if len(row.values) == 0 {
			t.Errorf("figure %q: no value from the captured output", row.name)
		}
	}
}

func TestSummarize(t *testing.T) {
	rows := summarize(loadRounds(t))
	byName := map[string]row{}
	for _, r := range rows {
		byName[r.name] = r
	}
	typed := byName["L1 hit, typed `Get` (struct) vs raw otter, 1 goroutine"]
	if typed.rounds != 3 || len(typed.values) != 2 {
		t.Fatalf("typed g=1: %d values of %d rounds, want 2 of 3", len(typed.values), typed.rounds)
	}
	if got := median(typed.values); math.Abs(got-(1/1.824+1/1.200)/2) > 1e-9 {
		t.Errorf("typed g=1 median = %v, want the throughput of 1.824 and 1.200", got)
	}
	http := byName["contextd: cached 20-node context vs hello-world handler"]
	if got := median(http.values); math.Abs(got-(35566.0/76531+30000.0/50000)/2) > 1e-9 {
		t.Errorf("contextd median = %v, want the mean of hello ÷ context ns/op of its two rounds", got)
	}
	par := byName["L1 hit, typed `Get` (struct) vs raw otter, {P} goroutines"]
	if par.procs != 2 || math.Abs(median(par.values)-(1/1.510+1/1.250)/2) > 1e-9 {
		t.Errorf("typed g=P: procs %d, median %v, want 2 and the throughput of 1.510 and 1.250", par.procs, median(par.values))
	}
}

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	if err := writeTable(&b, summarize(loadRounds(t))); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != len(figures)+2 {
		t.Fatalf("table has %d lines, want %d:\n%s", len(lines), len(figures)+2, b.String())
	}
	if got := lines[0] + "\n" + lines[1] + "\n"; got != header {
		t.Errorf("header = %q, want %q", got, header)
	}
	for _, want := range []string{
		"| L1 hit, typed `Get` (struct) vs raw otter, 1 goroutine | hit throughput, ours ÷ otter's `GetIfPresent` with no expiry: the price of the typed API, expiry and coherence | 0.69x | 0.55x–0.83x (2 of 3) | ≥ 0.7x: **missed** |",
		"| L1 hit, typed `Get` (struct) vs raw otter, 2 goroutines |",
		"| 3.2 ns | 3.2 ns (1 of 3) | — |",
		"| 0.58x | 0.58x (1) | ≥ 0.85x: **missed** |",
		"| 1.33 ms | 1.33 ms (1) | ≤ 2 ms: met |",
		"| 0.53x | 0.46x–0.60x (2) | ≥ 0.5x: met |",
		"| 10.2x | 10.2x (1) | ≥ 5x: met |",
		"| 61.1% | 61.1% (1) | ≥ 50%: met |",
		"| 51 µs | 51 µs (1) | — |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// A figure whose run never ran says so, and claims no target met.
	b.Reset()
	if err := writeTable(&b, summarize(nil)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| — | not run | ≥ 0.7x |") {
		t.Errorf("table of no rounds lacks \"| — | not run | ≥ 0.7x |\":\n%s", b.String())
	}
}

func TestPlan(t *testing.T) {
	var b strings.Builder
	if err := cli([]string{"plan", "-quick"}, &b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != len(runs) {
		t.Fatalf("plan -quick: %d lines, want %d", len(lines), len(runs))
	}
	for i, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) != 4 || f[0] != runs[i].name || f[3] != runs[i].quick {
			t.Errorf("plan -quick line %d = %q, want %s … %s", i, l, runs[i].name, runs[i].quick)
		}
	}
	b.Reset()
	if err := cli([]string{"plan", "-benchtime", "7x"}, &b); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(b.String(), "\t7x\n"); got != len(runs) {
		t.Errorf("plan -benchtime 7x: %d runs at 7x, want all %d:\n%s", got, len(runs), b.String())
	}
}
