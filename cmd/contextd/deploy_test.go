package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	"github.com/tiercache/tiercache/internal/metricstest"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
	"github.com/tiercache/tiercache/promcache"
)

// The operator kit in deploy/ (deploy/README.md): a Grafana dashboard and Prometheus alert rules.
const (
	dashboardPath = "../../deploy/grafana/tiercache.json"
	alertsPath    = "../../deploy/prometheus/alerts.yml"
	alertTestPath = "../../deploy/prometheus/alerts_test.yml"
	deployReadme  = "../../deploy/README.md"
)

// TestDeployKit checks the dashboard and the alert rules against what contextd really exports:
// every metric an expression names is scraped from a real contextd's /metrics (with Redis, so
// the breaker and subscriber gauges exist; the lock metrics from promcache.NewLock, which
// contextd does not register), every tiercache_* name is in docs/OPERATIONS.md's tables, every
// label an expression matches on is one the series carries, and every fixed label value of a
// tiercache_* series is one it takes. With promtool installed, the rules and the dashboard's
// expressions are also parsed by Prometheus and the alert unit tests are run.
func TestDeployKit(t *testing.T) {
	t.Parallel()
	exported := scrapeExported(t)
	documented := metricstest.Documented(t, "../../docs/OPERATIONS.md", "metrics", 1)
	for name := range metricstest.Documented(t, "../../docs/OPERATIONS.md", "lock-metrics", 1) {
		documented[name] = true
	}

	t.Run("dashboard", func(t *testing.T) {
		d := readDashboard(t)
		checkDashboardShape(t, d)
		used := map[string]bool{}
		for _, p := range d.leafPanels() {
			for _, tg := range p.Targets {
				where := fmt.Sprintf("%s, panel %q (id %d), target %s", dashboardPath, p.Title, p.ID, tg.RefID)
				for _, sel := range checkExpr(t, where, tg.Expr, exported, documented) {
					used[sel.base] = true
					// The template variables must filter every panel.
					if !sel.has("instance", "=~", "$instance") {
						t.Errorf("%s: %s does not filter on instance=~\"$instance\"", where, sel.name)
					}
					if exported[sel.name].labels["namespace"] != nil && !sel.has("namespace", "=~", "$namespace") {
						t.Errorf("%s: %s carries namespace but does not filter on namespace=~\"$namespace\"", where, sel.name)
					}
				}
			}
		}
		for _, v := range d.Templating.List {
			checkExpr(t, fmt.Sprintf("%s, variable %q", dashboardPath, v.Name), v.Definition, exported, documented)
		}
		// Every documented metric is charted: a new metric in the table needs a panel.
		var missing []string
		for name := range documented {
			if !used[name] {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("%s charts no panel of %s (documented in docs/OPERATIONS.md)", dashboardPath, strings.Join(missing, ", "))
		}
	})

	t.Run("alerts", func(t *testing.T) {
		rules := readAlertRules(t)
		readme, err := os.ReadFile(deployReadme)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			where := fmt.Sprintf("%s, alert %q", alertsPath, r.Alert)
			checkExpr(t, where, r.Expr, exported, documented)
			if !bytes.Contains(readme, []byte("`"+r.Alert+"`")) {
				t.Errorf("%s: not explained in %s", where, deployReadme)
			}
		}
	})

	t.Run("promtool", func(t *testing.T) {
		promtool := findPromtool(t)
		run := func(args ...string) {
			t.Helper()
			out, err := exec.Command(promtool, args...).CombinedOutput()
			if err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		run("check", "rules", alertsPath)
		run("test", "rules", alertTestPath)
		// The dashboard's expressions, with Grafana's variables given values, as recording rules.
		vars := strings.NewReplacer("$__rate_interval", "1m", "$namespace", ".*", "$instance", ".*")
		var rec strings.Builder
		rec.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		for _, p := range readDashboard(t).leafPanels() {
			for _, tg := range p.Targets {
				e, _ := json.Marshal(vars.Replace(tg.Expr)) // a JSON string is a YAML scalar
				fmt.Fprintf(&rec, "      - record: dashboard_panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, e)
			}
		}
		path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
		if err := os.WriteFile(path, []byte(rec.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		run("check", "rules", path)
	})
}

// findPromtool returns promtool from $PROMTOOL, $PATH or .cache/promtool (where scripts/test
// unpacks Debian's package), or skips.
func findPromtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if p, err := filepath.Abs("../../.cache/promtool/usr/bin/promtool"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("SKIP: promtool not found ($PROMTOOL, $PATH, .cache/promtool): the alert rules and dashboard " +
		"expressions are not parsed by Prometheus nor alerts_test.yml run; scripts/test unpacks it from " +
		"Debian's prometheus package, or: apt-get install prometheus")
	return ""
}

// --- what contextd exports ------------------------------------------------------------------

// series is one scraped series name (a histogram's _bucket, _sum and _count apart) with its
// label names and the values each takes; base is the family name.
type series struct {
	base   string
	labels map[string]map[string]bool
}

// scrapeExported scrapes a contextd with Redis after some traffic, and a lock collector, and
// returns every series name with its labels. instance and job, which Prometheus adds to every
// series at the scrape, are added with no values.
func scrapeExported(t *testing.T) map[string]*series {
	t.Helper()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	s := createSession(t, in.URL, "", "deploy")
	chat(t, in.URL, "", s.ID, "hello")
	getContext(t, in.URL, "", s.ID)
	body := must(t, in.URL, req{Method: "GET", Path: "/metrics"}, 200, nil).Body
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}

	l, err := lock.New(lock.Options{Clients: []redis.UniversalClient{rs.Client(t)}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(promcache.NewLock(l))
	lockFams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range lockFams {
		fams[f.GetName()] = f
	}

	out := map[string]*series{}
	add := func(name, base string, m *dto.Metric, extra ...string) {
		sr := out[name]
		if sr == nil {
			sr = &series{base: base, labels: map[string]map[string]bool{"instance": nil, "job": nil}}
			out[name] = sr
		}
		for _, lp := range m.GetLabel() {
			if sr.labels[lp.GetName()] == nil {
				sr.labels[lp.GetName()] = map[string]bool{}
			}
			sr.labels[lp.GetName()][lp.GetValue()] = true
		}
		for _, e := range extra {
			sr.labels[e] = nil // any value (le, quantile)
		}
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_bucket", name, m, "le")
				add(name+"_sum", name, m)
				add(name+"_count", name, m)
			case dto.MetricType_SUMMARY:
				add(name, name, m, "quantile")
				add(name+"_sum", name, m)
				add(name+"_count", name, m)
			default:
				add(name, name, m)
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("scraped %d series names, want contextd's whole set", len(out))
	}
	return out
}

// --- expressions ---------------------------------------------------------------------------

// selector is one vector selector of an expression: a metric name and its label matchers.
type selector struct {
	name, base string
	matchers   [][3]string // label, operator, value
}

func (s selector) has(label, op, value string) bool {
	for _, m := range s.matchers {
		if m == [3]string{label, op, value} {
			return true
		}
	}
	return false
}

var (
	// Only the project's own metrics are looked for: function names, label names in by (...)
	// and keywords never start with these prefixes.
	selectorRE = regexp.MustCompile(`\b((?:tiercache|contextd)_[a-zA-Z0-9_]*)\b(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
)

// checkExpr checks every selector of expr against the scrape and the documentation and returns
// the selectors; where names the expression in messages.
func checkExpr(t *testing.T, where, expr string, exported map[string]*series, documented map[string]bool) []selector {
	t.Helper()
	var sels []selector
	found := selectorRE.FindAllStringSubmatch(expr, -1)
	if len(found) == 0 {
		t.Errorf("%s: expression %q names no tiercache_* or contextd_* metric", where, expr)
	}
	for _, m := range found {
		sel := selector{name: m[1]}
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			sel.matchers = append(sel.matchers, [3]string{mm[1], mm[2], mm[3]})
		}
		sr := exported[sel.name]
		if sr == nil {
			t.Errorf("%s: %s is not in a scrape of contextd's /metrics (nor of promcache.NewLock)", where, sel.name)
			continue
		}
		sel.base = sr.base
		if strings.HasPrefix(sel.base, "tiercache_") && !documented[sel.base] {
			t.Errorf("%s: %s is not in docs/OPERATIONS.md's metric tables", where, sel.base)
		}
		for _, mt := range sel.matchers {
			label, op, value := mt[0], mt[1], mt[2]
			values, ok := sr.labels[label]
			switch {
			case !ok:
				t.Errorf("%s: %s has no label %q (it has %s)", where, sel.name, label, keys(sr.labels))
			case (op == "=" || op == "!=") && values != nil && strings.HasPrefix(sel.name, "tiercache_") && !values[value]:
				// tiercache_* series are const metrics with every value present from the start;
				// contextd's HTTP series only have the codes and routes already served.
				t.Errorf("%s: %s{%s%s%q}: %s never takes %q (it takes %s)", where, sel.name, label, op, value, label, value, keys(values))
			}
		}
		sels = append(sels, sel)
	}
	return sels
}

func keys[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// --- the dashboard -------------------------------------------------------------------------

type dashboard struct {
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string     `json:"name"`
			Type       string     `json:"type"`
			Definition string     `json:"definition"`
			Datasource datasource `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource datasource               `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr       string     `json:"expr"`
		RefID      string     `json:"refId"`
		Datasource datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

// leafPanels returns every panel that is not a row, those of collapsed rows included.
func (d *dashboard) leafPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

func readDashboard(t *testing.T) *dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return &d
}

// checkDashboardShape: what Grafana's import needs (a datasource input every panel uses, the
// template variables) and a layout without overlaps or duplicate IDs.
func checkDashboardShape(t *testing.T, d *dashboard) {
	t.Helper()
	const ds = "${DS_PROMETHEUS}"
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("%s: schemaVersion %d, uid %q, title %q; want schemaVersion ≥ 36 and a uid and title", dashboardPath, d.SchemaVersion, d.UID, d.Title)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("%s: __inputs = %+v, want one Prometheus datasource input DS_PROMETHEUS", dashboardPath, d.Inputs)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "query" && v.Datasource.UID != ds {
			t.Errorf("%s: variable %q uses datasource %q, want %s", dashboardPath, v.Name, v.Datasource.UID, ds)
		}
	}
	for _, want := range []string{"namespace", "instance"} {
		if !vars[want] {
			t.Errorf("%s: no template variable %q", dashboardPath, want)
		}
	}
	ids := map[int]string{}
	type rect struct {
		title      string
		x, y, w, h int
	}
	var placed []rect
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	for _, p := range all {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: panels %q and %q share id %d", dashboardPath, prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: panel %q gridPos %+v is outside the 24-column grid", dashboardPath, p.Title, g)
		}
		r := rect{p.Title, g.X, g.Y, g.W, g.H}
		for _, q := range placed {
			if r.x < q.x+q.w && q.x < r.x+r.w && r.y < q.y+q.h && q.y < r.y+r.h {
				t.Errorf("%s: panels %q and %q overlap", dashboardPath, q.title, r.title)
			}
		}
		placed = append(placed, r)
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != ds || len(p.Targets) == 0 {
			t.Errorf("%s: panel %q: datasource %q, %d targets; want %s and at least one target", dashboardPath, p.Title, p.Datasource.UID, len(p.Targets), ds)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != ds || tg.RefID == "" || refs[tg.RefID] || tg.Expr == "" {
				t.Errorf("%s: panel %q target %q: datasource %q, expr %q; want %s, a unique refId and an expression", dashboardPath, p.Title, tg.RefID, tg.Datasource.UID, tg.Expr, ds)
			}
			refs[tg.RefID] = true
		}
	}
}

// --- the alert rules -----------------------------------------------------------------------

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         *string           `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// readAlertRules parses alerts.yml strictly (unknown fields are errors) and checks each rule's
// shape: a unique name, an expression, a for: duration, a severity, a summary and a description.
func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var rules []alertRule
	seen := map[string]bool{}
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("%s, group %q, alert %q", alertsPath, g.Name, r.Alert)
			if r.Alert == "" || seen[r.Alert] || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: want a unique alert name and an expression", where)
			}
			seen[r.Alert] = true
			if r.For == nil {
				t.Errorf("%s: no for: (say how long the state must last, 0m for at once)", where)
			} else if _, err := model.ParseDuration(*r.For); err != nil {
				t.Errorf("%s: for: %q: %v", where, *r.For, err)
			}
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("%s: severity label %q, want warning or critical", where, sev)
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 40 {
				t.Errorf("%s: want a summary and a description annotation saying what to do", where)
			}
			rules = append(rules, r)
		}
	}
	if len(rules) < 6 {
		t.Fatalf("%s: %d alert rules, want the whole set", alertsPath, len(rules))
	}
	return rules
}
