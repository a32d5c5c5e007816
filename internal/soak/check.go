package soak

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// The checker judges the records of every instance against docs/CONSISTENCY.md as they stream
// in, keeping bounded state: per key, the writes of the last retain window (older ones are
// folded into one), and the reads not yet judged (a read waits lateness so that every write
// acknowledged before it began has arrived from its process).
//
// The rules, for a read r of key k on instance i that began at r.start:
//
//   - Writes that a data loss may have removed do not count: a kill -9 (the server restarts
//     empty), the deletion of internal keys, a Clear, or an InvalidateNamespace of k's
//     namespace, that began before r ended, voids every write of k that began before it ended
//     (for all but the kill, before Bound after it ended: other instances learn of a new
//     generation by message, and their writes until then race it).
//   - Read-your-writes (always): r returns at least the highest version i acknowledged for k
//     before r began (not found counts as the newest delete that began before r ended).
//     Fail-safe values (flagged with ErrStale) are exempt.
//   - Bounded staleness: let W be the earliest acknowledged write newer than what r returned,
//     acknowledged before r began. Outside fault windows, r.start - W.end <= Bound, where W.end
//     moves to the end of the window when W was acknowledged inside one (a write made while
//     Redis was unreachable for some instance must reach everyone within Bound once the
//     window, which includes the convergence time of two L1TTLs, closes). Inside a window,
//     only writes acknowledged before the window began are judged, against the degraded bound
//     L1TTL + Bound (L1 serves an entry at most L1TTL).
type checker struct {
	mu       sync.Mutex
	bound    time.Duration
	degraded time.Duration
	lateness int64
	retain   int64

	keys    map[string]*keyState
	pending []read // not judged yet, in arrival order

	windows []window // excuse windows, in start order (they may overlap)
	losses  []window // global data-loss events
	nsLoss  map[string][]window
	genLoss []int64 // when Redis lost its generation keys (kill -9, deleted internal keys)

	breakers []breakerOpen

	Figures
}

// Figures are the checker's counts.
type Figures struct {
	Reads, Writes       int64
	FailSafe            int64            // reads flagged with ErrStale (exempt)
	Excused             int64            // stale reads inside fault windows, within what the contract allows
	StaleByBound        map[string]int64 // stale reads by how stale
	MaxStaleness        time.Duration    // over judged (non-excused) stale reads
	MaxExcusedStaleness time.Duration
	Violations          map[string]int64 // by rule
	Examples            []string         // the first few violations
	LostExcused         int64            // acknowledged writes missing at the end that a loss event excuses
}

type read struct {
	inst       int // flag: the call (see runWorker); 's' marks a fail-safe value
	key        string
	version    uint64
	found      bool
	flag       byte
	start, end int64
}

type write struct {
	inst       int
	version    uint64
	del        bool
	maybe      bool // not acknowledged: the call failed, but the write may have landed
	call       byte // which call (see runWorker)
	start, end int64
}

type keyState struct {
	writes []write // by end
	folded bool    // writes[0] stands for every older write (the max of their versions)
}

type window struct{ start, end int64 }

type breakerOpen struct {
	inst int
	t    int64
}

func newChecker(bound, degraded time.Duration) *checker {
	return &checker{
		bound: bound, degraded: degraded,
		lateness: int64(3 * time.Second), retain: int64(30 * time.Second),
		keys: make(map[string]*keyState), nsLoss: make(map[string][]window),
		Figures: Figures{StaleByBound: make(map[string]int64), Violations: make(map[string]int64)},
	}
}

func (c *checker) addWindow(start, end int64) {
	c.mu.Lock()
	c.windows = append(c.windows, window{start, end})
	c.mu.Unlock()
}

func (c *checker) addLoss(start, end int64) {
	c.mu.Lock()
	c.losses = append(c.losses, window{start, end})
	c.mu.Unlock()
}

func (c *checker) addNamespaceLoss(ns string, start, end int64) {
	c.mu.Lock()
	c.nsLoss[ns] = append(c.nsLoss[ns], window{start, end})
	c.mu.Unlock()
}

// addGenLoss records that Redis lost every namespace generation key at t.
func (c *checker) addGenLoss(t int64) {
	c.mu.Lock()
	c.genLoss = append(c.genLoss, t)
	c.mu.Unlock()
}

// genVanished reports whether a reader that starts now may legitimately miss writes of key's
// namespace: its generation key is absent from Redis (genPresent false), Redis lost it after
// the namespace had a generation (an InvalidateNamespace of it began before the loss), and no
// instance has synced the generation since (a sync writes it back). Per docs/CONSISTENCY.md
// ("Namespace generations"), an instance that starts then uses the namespace's generation-0
// keys, while the long-lived ones keep writing under the generation they know until their next
// sync: the fresh final reader does not see those writes, though none is lost for the others.
func (c *checker) genVanished(key string, genPresent bool) bool {
	if genPresent {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	bumps := c.nsLoss[namespaceOf(key)]
	for _, t := range c.genLoss {
		for _, b := range bumps {
			if b.start < t {
				return true
			}
		}
	}
	return false
}

func (c *checker) addWrite(key string, w write) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !w.maybe {
		c.Writes++
	}
	ks := c.keys[key]
	if ks == nil {
		ks = new(keyState)
		c.keys[key] = ks
	}
	i := sort.Search(len(ks.writes), func(i int) bool { return ks.writes[i].end > w.end })
	ks.writes = slices.Insert(ks.writes, i, w)
	// Fold writes older than retain into one: reads that old are not judged exactly.
	if n := len(ks.writes); n > 64 && ks.writes[n/2].end < w.end-c.retain {
		f := ks.writes[0]
		for _, o := range ks.writes[1 : n/2+1] {
			if !o.maybe && o.version > f.version {
				f.version, f.del, f.inst = o.version, o.del, o.inst
			}
			f.start, f.end = o.start, o.end
		}
		ks.writes = append(ks.writes[:1], ks.writes[n/2+1:]...)
		ks.writes[0] = f
		ks.folded = true
	}
}

// addBreaker records that inst's breaker opened (seen at t, up to 50 ms late).
func (c *checker) addBreaker(inst int, t int64) {
	c.mu.Lock()
	c.breakers = append(c.breakers, breakerOpen{inst, t})
	c.mu.Unlock()
}

// judgeBreakers checks, once every window is known, that each breaker opening fell inside a
// fault window: "nothing counts against Redis" but Redis itself (not a caller's deadline, not
// a busy CPU, not a lost subscription).
func (c *checker) judgeBreakers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.breakers {
		if _, in := c.windowAt(b.t); in {
			continue
		}
		if _, in := c.windowAt(b.t - int64(50*time.Millisecond)); in {
			continue
		}
		c.violate("breaker-without-fault", "instance %d: the breaker opened at %s, outside every fault window", b.inst, stamp(b.t))
	}
}

func (c *checker) addRead(r read) {
	c.mu.Lock()
	c.Reads++
	c.pending = append(c.pending, r)
	c.mu.Unlock()
}

func (c *checker) violate(rule, format string, args ...any) {
	c.Violations[rule]++
	if c.Violations[rule] <= 4 && len(c.Examples) < 24 {
		c.Examples = append(c.Examples, rule+": "+fmt.Sprintf(format, args...))
	}
}

// judgeUpTo judges the pending reads that ended before now - lateness (all of them when
// final).
func (c *checker) judgeUpTo(now int64, final bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := c.pending[:0]
	for _, r := range c.pending {
		if !final && r.end > now-c.lateness {
			keep = append(keep, r)
			continue
		}
		c.judge(r)
	}
	clear(c.pending[len(keep):])
	c.pending = keep
}

// voidBefore returns the time before which writes of key may have been lost, as seen by a
// read that ended at end.
func (c *checker) voidBefore(key string, end int64) int64 {
	var t int64
	for _, l := range c.losses {
		if l.start < end {
			t = max(t, l.end)
		}
	}
	for _, l := range c.nsLoss[namespaceOf(key)] {
		if l.start < end {
			t = max(t, l.end)
		}
	}
	return t
}

// windowAt returns the excuse window holding t (merged with the windows it overlaps).
func (c *checker) windowAt(t int64) (window, bool) {
	var w window
	found := false
	for _, x := range c.windows {
		if x.start <= t && t <= x.end {
			if !found {
				w, found = x, true
			} else {
				w.start, w.end = min(w.start, x.start), max(w.end, x.end)
			}
		}
	}
	if !found {
		return w, false
	}
	// Extend through chained overlapping windows.
	for changed := true; changed; {
		changed = false
		for _, x := range c.windows {
			if x.start <= w.end && x.end >= w.start && (x.start < w.start || x.end > w.end) {
				w.start, w.end = min(w.start, x.start), max(w.end, x.end)
				changed = true
			}
		}
	}
	return w, true
}

func (c *checker) judge(r read) {
	if r.flag == 's' {
		c.FailSafe++
		return
	}
	ks := c.keys[r.key]
	if ks == nil {
		return
	}
	void := c.voidBefore(r.key, r.end)
	eff := r.version
	if !r.found {
		eff = 0
		for _, w := range ks.writes {
			if w.del && w.start < r.end && (w.start >= void || w.maybe) {
				eff = max(eff, w.version)
			}
		}
	}
	// Read-your-writes.
	var own uint64
	var ownW write
	for _, w := range ks.writes {
		if w.end >= r.start {
			break
		}
		if w.inst == r.inst && !w.maybe && w.start >= void && w.version > own {
			own, ownW = w.version, w
		}
	}
	if eff < own {
		c.violate("read-your-writes", "key %q on instance %d: read [%s] returned %s after its own %s acknowledged at %s",
			r.key, r.inst, span(r.start, r.end), got(r, eff), wdesc(ownW), stamp(ownW.end))
	}
	// Staleness.
	var newer *write
	for i := range ks.writes {
		w := &ks.writes[i]
		if w.end >= r.start {
			break
		}
		if !w.maybe && w.start >= void && w.version > eff {
			newer = w
			break
		}
	}
	if newer == nil {
		return
	}
	d := time.Duration(r.start - newer.end)
	// from is when the bound starts to run for W: its acknowledgement, or the end of the
	// fault window it was acknowledged in.
	from := newer.end
	rule := "staleness"
	if ww, in := c.windowAt(newer.end); in {
		from, rule = ww.end, "convergence"
	}
	if rw, in := c.windowAt(r.start); in {
		if from < rw.start && time.Duration(r.start-from) > c.degraded {
			c.violate("degraded-bound", "key %q on instance %d: read [%s] returned %s, stale by %v, inside fault window [%s]; %s by instance %d acknowledged before it",
				r.key, r.inst, span(r.start, r.end), got(r, eff), d, span(rw.start, rw.end), wdesc(*newer), newer.inst)
			return
		}
		c.Excused++
		c.MaxExcusedStaleness = max(c.MaxExcusedStaleness, d)
		return
	}
	c.StaleByBound[bucket(d)]++
	c.MaxStaleness = max(c.MaxStaleness, d)
	if over := time.Duration(r.start - from); over > c.bound {
		c.violate(rule, "key %q on instance %d: read [%s] returned %s, stale by %v (%v past the bound's start): %s by instance %d acknowledged at %s",
			r.key, r.inst, span(r.start, r.end), got(r, eff), d, over, wdesc(*newer), newer.inst, stamp(newer.end))
	}
}

// highest returns the highest acknowledged, not voided version of key at the end of the run,
// whether it is a delete, and whether some loss voided a write of the key.
func (c *checker) highest(key string, end int64) (w write, ok, voided bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ks := c.keys[key]
	if ks == nil {
		return w, false, false
	}
	void := c.voidBefore(key, end)
	for _, x := range ks.writes {
		if x.maybe {
			continue
		}
		if x.start < void {
			voided = true
			continue
		}
		if !ok || x.version > w.version {
			w, ok = x, true
		}
	}
	return w, ok, voided
}

// maybeDeletedAbove reports whether a delete of key above version v was attempted (acknowledged
// or not): it explains a key Redis no longer holds.
func (c *checker) maybeDeletedAbove(key string, v uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ks := c.keys[key]; ks != nil {
		for _, w := range ks.writes {
			if w.del && w.version > v {
				return true
			}
		}
	}
	return false
}

func (c *checker) keyList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.keys))
	for k := range c.keys {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func bucket(d time.Duration) string {
	switch {
	case d <= time.Millisecond:
		return "<=1ms"
	case d <= 10*time.Millisecond:
		return "<=10ms"
	case d <= 100*time.Millisecond:
		return "<=100ms"
	case d <= time.Second:
		return "<=1s"
	default:
		return ">1s"
	}
}

var t0 int64 // the run's start, for readable times in messages

func stamp(t int64) string { return fmt.Sprintf("%.3fs", float64(t-t0)/1e9) }
func span(a, b int64) string {
	return strings.TrimSuffix(stamp(a), "s") + ", " + stamp(b)
}

var callNames = map[byte]string{
	'g': "Get", 'p': "Peek", 'o': "GetOrLoad", 'm': "GetOrLoadMany", 's': "fail-safe",
	'S': "Set", 'A': "Set (automatic version)", 'M': "SetMany", 'D': "Delete", 'E': "DeleteMany",
}

func got(r read, eff uint64) string {
	if r.found {
		return fmt.Sprintf("%s v%d", callNames[r.flag], r.version)
	}
	return fmt.Sprintf("%s not found (newest delete seen v%d)", callNames[r.flag], eff)
}

func wdesc(w write) string {
	name := callNames[w.call]
	if name == "" {
		name = "write"
	}
	return fmt.Sprintf("%s v%d", name, w.version)
}
