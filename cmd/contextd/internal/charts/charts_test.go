package charts

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestSeriesAppendSkipsNonFinite(t *testing.T) {
	t.Parallel()
	var s Series
	for i, y := range []float64{1, math.NaN(), 2, math.Inf(1), math.Inf(-1), 3} {
		s.Append(float64(i), y)
	}
	c := Chart{ID: "c", Series: []Series{s, {Name: "empty"}}}
	if got := c.Points(); got != 3 {
		t.Errorf("Points() = %d, want 3 (NaN and infinities left out)", got)
	}
	// A chart with skipped values still encodes: JSON has no NaN.
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	if want := `"points":[[0,1],[2,2],[5,3]]`; !strings.Contains(string(data), want) {
		t.Errorf("JSON %s lacks %s", data, want)
	}
}

func TestJSDefinesRender(t *testing.T) {
	t.Parallel()
	for _, want := range []string{"var tcCharts", "render: render", `"data-points"`, `"tc-series"`} {
		if !strings.Contains(JS, want) {
			t.Errorf("charts.js lacks %q", want)
		}
	}
}
