package main

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/metricstest"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestMetricsDocumented: every cache metric listed in docs/OPERATIONS.md (section Metrics) is in
// a scrape of /metrics, and every tiercache_* family scraped is listed there, so the table and
// the code cannot drift apart. With Redis, so the breaker and subscriber gauges are present.
func TestMetricsDocumented(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{Redis: redistest.Start(t)})
	s := createSession(t, in.URL, "", "s")
	chat(t, in.URL, "", s.ID, "hello")
	getContext(t, in.URL, "", s.ID)

	m := must(t, in.URL, req{Method: "GET", Path: "/metrics"}, http.StatusOK, nil)
	scraped := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(m.Body))
	for sc.Scan() {
		// "# TYPE name kind" names each family once, histograms included.
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "tiercache_") {
			scraped[f[2]] = true
		}
	}

	documented := metricstest.Documented(t, "../../docs/OPERATIONS.md", "metrics", 1)
	metricstest.SameNames(t, documented, scraped, "/metrics")
	// The renamed copies are gone; contextd's own metrics stay.
	for _, gone := range []string{"contextd_cache_hits_total", "contextd_cache_l1_bytes", "contextd_cache_propagation_lag_p99_seconds"} {
		if bytes.Contains(m.Body, []byte(gone)) {
			t.Errorf("/metrics still serves %s (renamed to tiercache_*)", gone)
		}
	}
	for _, kept := range []string{"contextd_http_request_duration_seconds", "contextd_cache_invalid_entries_total", `contextd_cache_state{state="healthy"}`} {
		if !bytes.Contains(m.Body, []byte(kept)) {
			t.Errorf("/metrics lacks %s", kept)
		}
	}
}
