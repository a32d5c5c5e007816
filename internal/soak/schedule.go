package soak

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Kind is one kind of fault.
type Kind string

// The fault kinds, in the order a schedule first draws them from.
const (
	Pause      Kind = "sigstop"         // SIGSTOP the server, SIGCONT after For
	Kill       Kind = "kill9"           // kill -9 and restart empty at once
	PubsubKill Kind = "pubsub-kill"     // CLIENT KILL TYPE pubsub
	ClientPaus Kind = "client-pause"    // CLIENT PAUSE For ALL
	Delay      Kind = "proxy-delay"     // one instance's proxy delays every chunk by Delay, for For
	Blackhole  Kind = "proxy-blackhole" // one instance's proxy swallows traffic, for For
	Reset      Kind = "proxy-reset"     // one instance's proxy resets every connection
	MaxMemory  Kind = "maxmemory"       // maxmemory just above used memory (noeviction), for For
	DelKeys    Kind = "delete-internal" // the namespace generations and stampede leases deleted behind the caches' back
	Hog        Kind = "cpu-hog"         // two spinning child processes, for For
)

// Kinds lists every fault kind.
var Kinds = []Kind{Pause, Kill, PubsubKill, ClientPaus, Delay, Blackhole, Reset, MaxMemory, DelKeys, Hog}

// Fault is one scheduled fault.
type Fault struct {
	Kind     Kind          `json:"kind"`
	At       time.Duration `json:"at"`                 // from the start of the run
	For      time.Duration `json:"for,omitempty"`      // how long it lasts (0: instant)
	Instance int           `json:"instance,omitempty"` // for proxy faults
	Delay    time.Duration `json:"delay,omitempty"`    // for proxy-delay
}

func (f Fault) String() string {
	s := fmt.Sprintf("%v %s", f.At.Round(time.Millisecond), f.Kind)
	if f.For > 0 {
		s += fmt.Sprintf(" for %v", f.For.Round(time.Millisecond))
	}
	switch f.Kind {
	case Delay:
		s += fmt.Sprintf(" instance %d delay %v", f.Instance, f.Delay)
	case Blackhole, Reset:
		s += fmt.Sprintf(" instance %d", f.Instance)
	}
	return s
}

// Excused reports whether the contract's staleness bound is lifted while the fault lasts (and
// for the convergence time after): Redis is unreachable or refuses writes for some instance.
// A lost subscription and a busy CPU lift nothing: Redis stays reachable.
func (f Fault) Excused() bool { return f.Kind != PubsubKill && f.Kind != Hog }

// Schedule is the fault schedule of a run: a pure function of seed, duration and the number
// of instances. Faults start after a warm-up and stop quiet before the end so the run ends
// with a stretch in which every guarantee holds unconditionally. Every kind appears once (in
// an order drawn from the seed) before kinds repeat at random, so a short run exercises all
// of them when it is long enough.
func Schedule(seed uint64, duration time.Duration, instances int, quiet time.Duration) []Fault {
	rng := rand.New(rand.NewPCG(seed, 0x50a4))
	warm := 2 * time.Second
	order := append([]Kind(nil), Kinds...)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	span := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)) }
	var out []Fault
	at := warm
	for n := 0; ; n++ {
		k := Kinds[rng.IntN(len(Kinds))]
		if n < len(order) {
			k = order[n]
		}
		f := Fault{Kind: k, At: at}
		switch k {
		case Pause:
			f.For = span(300*time.Millisecond, 2*time.Second)
		case ClientPaus:
			f.For = span(200*time.Millisecond, 1500*time.Millisecond)
		case Delay:
			f.For = span(500*time.Millisecond, 3*time.Second)
			f.Delay = span(20*time.Millisecond, 200*time.Millisecond).Round(time.Millisecond)
			f.Instance = rng.IntN(instances)
		case Blackhole:
			f.For = span(300*time.Millisecond, 2*time.Second)
			f.Instance = rng.IntN(instances)
		case Reset:
			f.Instance = rng.IntN(instances)
		case MaxMemory:
			f.For = span(500*time.Millisecond, 2*time.Second)
		case Hog:
			f.For = span(time.Second, 4*time.Second)
		}
		if at+f.For > duration-quiet {
			return out
		}
		out = append(out, f)
		at += f.For + span(300*time.Millisecond, 2500*time.Millisecond)
	}
}

// FormatSchedule renders a schedule one fault per line.
func FormatSchedule(fs []Fault) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}
