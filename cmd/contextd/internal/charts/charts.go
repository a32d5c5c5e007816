// Package charts draws time-series line charts as inline SVG in a browser,
// with no external assets: [JS] is a small script (embedded from charts.js)
// that renders [Chart] values, passed to it as JSON, into SVG elements. The
// HTML report of contextd load uses it, and so can the live dashboard: a
// chart is redrawn in place when it is rendered again with new points.
//
// In a page:
//
//	<div id="c1"></div>
//	<script>{{.JS}}</script>
//	<script>tcCharts.render(document.getElementById("c1"), {{.Chart}});</script>
//
// Each rendered chart is an <svg class="tc-chart"> whose data-points
// attribute counts the points drawn (0 when no series had any; the chart
// then says "no data"), so a browser test can check that it drew.
package charts

import (
	_ "embed"
	"math"
)

// JS defines the global tcCharts with render(element, chart): it replaces
// element's content with the chart drawn as SVG. Values that are not finite
// numbers are skipped.
//
//go:embed charts.js
var JS string

// Chart is one chart: a title, the unit of its y axis and its series over a
// shared x axis of seconds.
type Chart struct {
	ID     string   `json:"id"`
	Title  string   `json:"title"`
	Unit   string   `json:"unit"` // y axis: "req/s", "ms", "%", "bytes", "cores", ...
	Series []Series `json:"series"`
}

// Series is one line: a name for the legend and its points, each [x, y]
// with x in seconds since the start.
type Series struct {
	Name   string       `json:"name"`
	Points [][2]float64 `json:"points"`
}

// Points returns how many points the chart holds over all its series.
func (c Chart) Points() int {
	n := 0
	for _, s := range c.Series {
		n += len(s.Points)
	}
	return n
}

// Append adds the point (x, y) to s unless y is NaN or infinite (JSON has
// no such numbers; a gap in the line is what a missing sample should be).
func (s *Series) Append(x, y float64) {
	if math.IsNaN(y) || math.IsInf(y, 0) {
		return
	}
	s.Points = append(s.Points, [2]float64{x, y})
}
