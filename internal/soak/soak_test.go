package soak

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

var (
	flagDuration = flag.Duration("soak.duration", 30*time.Second, "how long TestSoak runs (the in-suite default keeps the test under 60 s)")
	flagSeed     = flag.Uint64("soak.seed", 1, "the seed of TestSoak's workload and fault schedule")
	flagJSON     = flag.String("soak.json", "", "write TestSoak's figures to this file as JSON")
	flagNoPanics = flag.Bool("soak.nopanics", false, "loaders fail instead of panicking (to look past a crash the panics cause)")
	flagCalm     = flag.Bool("soak.calm", false, "no faults and no short deadlines: a calibration run")
	flagVerbose  = flag.Bool("soak.verbose", false, "log the realised schedule as it runs")
)

// finalLine is printed after the test framework's own output, so that it is the last line.
var finalLine string

func TestMain(m *testing.M) {
	RunChild() // instances and CPU hogs are this binary re-executed
	flag.Parse()
	code := m.Run()
	if finalLine != "" {
		fmt.Println(finalLine)
	}
	os.Exit(code)
}

// TestSoak runs the fault workload (see the package documentation) and fails on any contract
// violation, panic, leak or lost acknowledged write. A failing seed replays the same schedule:
// go test -run TestSoak ./internal/soak -soak.seed S.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: skipped with -short")
	}
	// scripts/test runs it (30 s, seed 1) in a step of its own without the race detector, and
	// scripts/soak runs longer schedules. It is skipped in the -race step: the contract it checks
	// has a time bound (1 s staleness outside fault windows), and the race detector slows the
	// three instance processes past it on a two-core machine. See docs/CONSISTENCY.md, "The
	// fault suite".
	if os.Getenv("TIERCACHE_SOAK") == "" {
		t.Skip("soak: set TIERCACHE_SOAK=1 (scripts/test and scripts/soak do) to run the fault suite")
	}
	logf := func(string, ...any) {}
	if *flagVerbose {
		logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	res := Run(t, Config{Seed: *flagSeed, Duration: *flagDuration, NoPanics: *flagNoPanics, Calm: *flagCalm, Logf: logf})
	fmt.Println("soak: realised schedule:")
	for _, l := range res.Realised {
		fmt.Println("  " + l)
	}
	fmt.Println(res.Summary())
	if *flagJSON != "" {
		if err := res.WriteJSON(*flagJSON); err != nil {
			t.Error(err)
		}
	}
	finalLine = res.Line()
	for _, k := range Kinds {
		if res.FaultKinds[k] == 0 {
			t.Logf("soak: fault kind %s not exercised in %v", k, *flagDuration)
		}
	}
	if res.Violations > 0 {
		t.Errorf("soak: %d violations (seed %d); see the summary above", res.Violations, res.Seed)
	}
}
