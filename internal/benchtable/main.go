// Command benchtable is the figure list and table printer behind scripts/bench.
//
//	benchtable plan [-quick] [-benchtime D]   the runs of a round: name, package dir, -test.bench pattern, benchtime (tab-separated)
//	benchtable table FILE                     the headline table of docs/BENCHMARKS.md from scripts/bench's output
//
// Every figure is the median over the rounds of a ratio (or a percentile) one benchmark process
// reported; the spread is the minimum and maximum over the same rounds. The figures and the
// runs that give them are listed in figures.go.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := cli(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(2)
	}
}

const usage = "usage: benchtable plan [-quick] [-benchtime D] | benchtable table FILE"

func cli(args []string, w io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	switch args[0] {
	case "plan":
		fs := flag.NewFlagSet("plan", flag.ContinueOnError)
		quick := fs.Bool("quick", false, "the short benchtimes of a smoke run")
		benchtime := fs.String("benchtime", "", "one -test.benchtime for every run")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		for _, r := range runs {
			bt := r.benchtime
			if *quick {
				bt = r.quick
			}
			if *benchtime != "" {
				bt = *benchtime
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.name, r.dir, r.pattern, bt)
		}
		return nil
	case "table":
		if len(args) != 2 {
			return fmt.Errorf("%s", usage)
		}
		f, err := os.Open(args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		rounds, err := parse(f)
		if err != nil {
			return fmt.Errorf("%s: %w", args[1], err)
		}
		return writeTable(w, summarize(rounds))
	}
	return fmt.Errorf("%s", usage)
}

// metric is the value of unit reported by bench ({P}: the round's GOMAXPROCS).
func metric(bench, unit string) func(round) (float64, bool) {
	return func(rd round) (float64, bool) {
		r, ok := rd.find(bench)
		if !ok {
			return 0, false
		}
		v, ok := r.values[unit]
		return v, ok
	}
}

// inverse turns a latency ratio into a throughput ratio (equal concurrency on both sides).
func inverse(f func(round) (float64, bool)) func(round) (float64, bool) {
	return func(rd round) (float64, bool) {
		v, ok := f(rd)
		if !ok || v <= 0 {
			return 0, false
		}
		return 1 / v, true
	}
}

// ratio is num's unit over den's, both from the same round: for two benchmarks that are not a
// pair but run back to back in one process.
func ratio(num, den, unit string) func(round) (float64, bool) {
	n, d := metric(num, unit), metric(den, unit)
	return func(rd round) (float64, bool) {
		a, ok1 := n(rd)
		b, ok2 := d(rd)
		if !ok1 || !ok2 || b <= 0 {
			return 0, false
		}
		return a / b, true
	}
}
