// Package metricstest holds what the metrics tests of the library, promcache and contextd share:
// a workload whose counters and Redis round trips are known, and the reader of the metric tables
// in docs/OPERATIONS.md, so that the documentation and the code cannot drift apart.
package metricstest

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
)

// Workload runs a known sequence of operations on c and returns the number of Redis round trips
// it made (calls through the breaker). c must have Redis, with its stampede lease off
// (LeaseTTL < 0), so that no lease call adds to the count; it leaves WorkloadStats in c's
// counters and publishes three invalidation messages (a Set, a batch, a Delete).
func Workload(tb testing.TB, c *tiercache.Cache) (roundTrips uint64) {
	tb.Helper()
	ctx := context.Background()
	check := func(what string, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
	}
	check("Set(k1)", c.Set(ctx, "k1", []byte("v1"))) // 1 round trip
	_, err := c.Get(ctx, "k1")                       // L1 hit
	check("Get(k1)", err)
	if _, err := c.Get(ctx, "k2"); !errors.Is(err, tiercache.ErrNotFound) { // L1 and L2 miss: 1
		tb.Fatalf("Get(k2) = %v, want ErrNotFound", err)
	}
	load := func(context.Context, string) ([]byte, error) { return []byte("loaded"), nil }
	_, err = c.GetOrLoad(ctx, "k3", load) // L1 and L2 miss, a load, its fill: 2
	check("GetOrLoad(k3)", err)
	// Three writes in one pipeline with one message for them (two messages saved): 1
	check("SetMany", c.SetMany(ctx, map[string][]byte{"m1": []byte("1"), "m2": []byte("2"), "m3": []byte("3")}))
	check("Delete(k1)", c.Delete(ctx, "k1"))        // 1
	got, err := c.GetMany(ctx, []string{"m1", "x"}) // m1 from L1; x missing in both tiers: 1
	check("GetMany", err)
	if len(got) != 1 {
		tb.Fatalf("GetMany(m1, x) = %d values, want 1", len(got))
	}
	return 7
}

// WorkloadStats are the counters Workload leaves in a new cache (a load's fill is no set).
var WorkloadStats = tiercache.Stats{
	L1Hits: 2, L1Misses: 3, L2Misses: 3, Loads: 1, Sets: 4, Deletes: 1,
	InvalidationsSent: 3, InvalidationsCoalesced: 2,
}

// Documented returns the metric names in column col (1: Prometheus, 2: OpenTelemetry) of the
// table between "<!-- marker -->" and "<!-- /marker -->" in the file at path (docs/OPERATIONS.md).
func Documented(tb testing.TB, path, marker string, col int) map[string]bool {
	tb.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "<!-- "+marker+" -->")
	table, _, ok2 := strings.Cut(table, "<!-- /"+marker+" -->")
	if !ok || !ok2 {
		tb.Fatalf("%s has no <!-- %s --> … <!-- /%s --> table", path, marker, marker)
	}
	name := regexp.MustCompile("`([a-z0-9_.]+)`")
	names := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(strings.TrimSpace(line), "|") || len(cells) < col+2 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[col], -1) {
			names[m[1]] = true
		}
	}
	if len(names) < 2 {
		tb.Fatalf("%s, table %s: %d names in column %d, want the whole list", path, marker, len(names), col)
	}
	return names
}

// SameNames fails tb for every name documented but not exported and every name exported but
// not documented; source says where the exported names come from (a scrape, a collection).
func SameNames(tb testing.TB, documented, exported map[string]bool, source string) {
	tb.Helper()
	for name := range documented {
		if !exported[name] {
			tb.Errorf("docs/OPERATIONS.md documents %s; %s has none", name, source)
		}
	}
	for name := range exported {
		if !documented[name] {
			tb.Errorf("%s has %s, which docs/OPERATIONS.md does not document", source, name)
		}
	}
}

// WaitFor polls cond until it holds, failing tb after 10 s.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not settling
	}
}
