package soak

import (
	"testing"
	"time"
)

// The checker's rules, one case each: what the contract forbids is a violation, what it
// excuses is not.
func TestCheckerRules(t *testing.T) {
	const s = int64(time.Second)
	const ms = int64(time.Millisecond)
	type ev struct {
		w      *write
		r      *read
		window *window
		loss   *window
	}
	w := func(inst int, v uint64, del bool, start, end int64) ev {
		return ev{w: &write{inst: inst, version: v, del: del, start: start, end: end}}
	}
	maybe := func(inst int, v uint64, del bool, start, end int64) ev {
		return ev{w: &write{inst: inst, version: v, del: del, start: start, end: end, maybe: true}}
	}
	r := func(inst int, v uint64, found bool, start, end int64) ev {
		return ev{r: &read{inst: inst, key: "c0:x:1", version: v, found: found, flag: '-', start: start, end: end}}
	}
	for _, tc := range []struct {
		name string
		evs  []ev
		want map[string]int64
	}{
		{"fresh read", []ev{w(0, 5, false, 0, 1*ms), r(1, 5, true, 2*s, 2*s+ms)}, nil},
		{"stale within the bound", []ev{w(0, 4, false, 0, ms), w(0, 5, false, 10*ms, 11*ms), r(1, 4, true, 500*ms, 501*ms)}, nil},
		{"stale past the bound", []ev{w(0, 4, false, 0, ms), w(0, 5, false, 10*ms, 11*ms), r(1, 4, true, 2*s, 2*s+ms)}, map[string]int64{"staleness": 1}},
		{"own write not read back", []ev{w(1, 5, false, 0, ms), r(1, 4, true, 2*ms, 3*ms)}, map[string]int64{"read-your-writes": 1}},
		{"own write, not found", []ev{w(1, 5, false, 0, ms), r(1, 0, false, 2*ms, 3*ms)}, map[string]int64{"read-your-writes": 1}},
		{"own delete, older value", []ev{w(1, 4, false, 0, ms), w(1, 5, true, 2*ms, 3*ms), r(1, 4, true, 4*ms, 5*ms)}, map[string]int64{"read-your-writes": 1}},
		{"not found explained by a newer unacknowledged delete", []ev{w(1, 5, false, 0, ms), maybe(2, 6, true, 0, 2*ms), r(1, 0, false, 3*ms, 4*ms)}, nil},
		{"not found after a data loss", []ev{w(1, 5, false, 0, ms), {loss: &window{2 * ms, 3 * ms}}, r(1, 0, false, 4*s, 4*s+ms)}, nil},
		{"stale inside a fault window, write from inside", []ev{{window: &window{0, 10 * s}}, w(0, 4, false, 0, ms), w(0, 5, false, 2*s, 2*s+ms), r(1, 4, true, 5*s, 5*s+ms)}, nil},
		{"stale inside a fault window past the degraded bound", []ev{w(0, 4, false, 0, ms), w(0, 5, false, 10*ms, 11*ms), {window: &window{s, 20 * s}}, r(1, 4, true, 10*s, 10*s+ms)}, map[string]int64{"degraded-bound": 1}},
		{"inside a window, a write from an earlier window still converging", []ev{{window: &window{0, 10 * s}}, w(0, 4, false, 0, ms), w(0, 5, false, 2*s, 2*s+ms), {window: &window{10*s + 500*ms, 20 * s}}, r(1, 4, true, 10*s+600*ms, 10*s+601*ms)}, nil},
		{"no convergence after the window", []ev{{window: &window{0, 10 * s}}, w(0, 4, false, 0, ms), w(0, 5, false, 2*s, 2*s+ms), r(1, 4, true, 12*s, 12*s+ms)}, map[string]int64{"convergence": 1}},
		{"fail-safe values are exempt", []ev{w(1, 5, false, 0, ms), {r: &read{inst: 1, key: "c0:x:1", version: 4, found: true, flag: 's', start: 2 * s, end: 2 * s}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker(time.Second, 3*time.Second)
			for _, e := range tc.evs {
				switch {
				case e.w != nil:
					c.addWrite("c0:x:1", *e.w)
				case e.r != nil:
					c.addRead(*e.r)
				case e.window != nil:
					c.addWindow(e.window.start, e.window.end)
				case e.loss != nil:
					c.addLoss(e.loss.start, e.loss.end)
				}
			}
			c.judgeUpTo(0, true)
			for rule, n := range tc.want {
				if c.Violations[rule] != n {
					t.Errorf("violations[%s] = %d, want %d (all: %v; %q)", rule, c.Violations[rule], n, c.Violations, c.Examples)
				}
			}
			for rule, n := range c.Violations {
				if tc.want[rule] == 0 && n > 0 {
					t.Errorf("unexpected violations[%s] = %d: %q", rule, n, c.Examples)
				}
			}
		})
	}
}

// The schedule is a pure function of the seed, and a long enough run draws every kind.
func TestScheduleIsSeeded(t *testing.T) {
	a := Schedule(7, 10*time.Minute, 3, 7*time.Second)
	b := Schedule(7, 10*time.Minute, 3, 7*time.Second)
	if FormatSchedule(a) != FormatSchedule(b) {
		t.Fatal("Schedule(7) differs between two calls")
	}
	if c := Schedule(8, 10*time.Minute, 3, 7*time.Second); FormatSchedule(c) == FormatSchedule(a) {
		t.Error("Schedule(8) equals Schedule(7)")
	}
	kinds := make(map[Kind]bool)
	for i, f := range a {
		kinds[f.Kind] = true
		if i > 0 && f.At < a[i-1].At+a[i-1].For {
			t.Errorf("fault %v starts before %v ends", f, a[i-1])
		}
		if f.At+f.For > 10*time.Minute-7*time.Second {
			t.Errorf("fault %v runs into the quiet tail", f)
		}
	}
	for _, k := range Kinds {
		if !kinds[k] {
			t.Errorf("10-minute schedule has no %s", k)
		}
	}
}

// A breaker that opens outside every fault window is a violation: the breaker judges Redis
// alone, not callers' deadlines or a busy CPU.
func TestCheckerBreakerOutsideWindow(t *testing.T) {
	c := newChecker(time.Second, 3*time.Second)
	s := int64(time.Second)
	c.addWindow(10*s, 20*s)
	c.addBreaker(0, 15*s)                         // inside
	c.addBreaker(1, 20*s+int64(time.Millisecond)) // reported up to 50 ms late
	c.addBreaker(2, 30*s)                         // outside
	c.judgeBreakers()
	if got := c.Violations["breaker-without-fault"]; got != 1 {
		t.Errorf("breaker-without-fault = %d, want 1 (%q)", got, c.Examples)
	}
}

// TestCheckerGenVanished: the final check excuses a fresh reader missing writes of a namespace
// only when Redis lost the namespace's generation key after the namespace had one and no
// instance wrote it back (docs/CONSISTENCY.md, "Namespace generations"); not otherwise.
func TestCheckerGenVanished(t *testing.T) {
	const s = int64(time.Second)
	for _, tc := range []struct {
		name       string
		bump       bool  // an InvalidateNamespace of the key's namespace at 1 s
		loss       int64 // when Redis lost its generation keys, 0 for never
		genPresent bool
		want       bool
	}{
		{"bumped, key lost, not restored", true, 2 * s, false, true},
		{"bumped, key lost, restored by a sync", true, 2 * s, true, false},
		{"never bumped: generation-0 keys for everyone", false, 2 * s, false, false},
		{"lost before the bump", true, s / 2, false, false},
		{"bumped, never lost", true, 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker(time.Second, 2*time.Second)
			if tc.bump {
				c.addNamespaceLoss("a0n1:x", s, s+s/10)
			}
			if tc.loss != 0 {
				c.addGenLoss(tc.loss)
			}
			if got := c.genVanished("a0n1:x:3", tc.genPresent); got != tc.want {
				t.Errorf("genVanished = %v, want %v", got, tc.want)
			}
		})
	}
}
