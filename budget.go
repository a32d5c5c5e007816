package tiercache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The budget of a Redis call as a context (see l2doN). context.WithTimeout costs a timer of its
// own per call, armed and stopped again, plus three allocations: on a hot L2 read that was about
// half of the cache's own work. A call whose context can never be cancelled (Background, a
// context with values only: the common case for background work) instead gets a budgetCtx,
// whose Done channel is shared by every call whose budget ends within the same millisecond and
// closed by one timer. Its deadline, which a client with ContextTimeoutEnabled puts on the
// socket, is exact; only a wait that watches Done (the client waiting for a free connection, or
// l2doN waiting for a call it left running) may last up to a millisecond past it. Callers whose
// context can be cancelled get context.WithTimeout, since Done must then close with theirs.

// budgetTickSlots is how many ticks are reachable without the lock: deadlines within that many
// milliseconds of one another each keep a slot of their own.
const budgetTickSlots = 64

// budgetTicks hands out the Done channels of budgetCtx, one per millisecond of deadlines (a
// tick). mu serialises the creation of ticks; lookups read the slots without it.
type budgetTicks struct {
	mu    sync.Mutex
	slots [budgetTickSlots]atomic.Pointer[budgetTick]
}

// budgetTick is closed at the end of millisecond ms (counted from monoBase).
type budgetTick struct {
	ms   int64
	done chan struct{}
}

// monoBase is the origin of tick numbers, on this process's monotonic clock: a wall-clock step
// never makes a later deadline find an earlier tick that has already closed.
var monoBase = time.Now()

// tick returns the tick that closes at the first millisecond boundary at or after deadline.
func (b *budgetTicks) tick(deadline time.Time) *budgetTick {
	ms := int64((deadline.Sub(monoBase) + time.Millisecond - 1) / time.Millisecond)
	slot := &b.slots[uint64(ms)%budgetTickSlots]
	if t := slot.Load(); t != nil && t.ms == ms {
		return t
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := slot.Load(); t != nil && t.ms == ms {
		return t
	}
	t := &budgetTick{ms: ms, done: make(chan struct{})}
	// A tick replaced in its slot (by one 64 ms later, or earlier) still closes on time for
	// the calls holding it.
	time.AfterFunc(time.Until(monoBase.Add(time.Duration(ms)*time.Millisecond)), func() { close(t.done) })
	slot.Store(t)
	return t
}

// budgetCtx is a context with parent's values, which can never be cancelled, and deadline.
type budgetCtx struct {
	parent   context.Context
	deadline time.Time
	t        *budgetTick
}

func (c *budgetCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *budgetCtx) Done() <-chan struct{}       { return c.t.done }
func (c *budgetCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *budgetCtx) Err() error {
	select {
	case <-c.t.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// withBudget returns ctx bounded by the deadline start+budget, and the function that releases
// it (a no-op for a budgetCtx, whose tick closes on its own).
func (b *budgetTicks) withBudget(ctx context.Context, start time.Time, budget time.Duration) (context.Context, context.CancelFunc) {
	if ctx.Done() != nil {
		return context.WithDeadline(ctx, start.Add(budget))
	}
	if _, ok := ctx.Deadline(); ok {
		// A deadline without a Done channel: not a context of the standard library, and not
		// one a budgetCtx can bound without knowing how it ends.
		return context.WithDeadline(ctx, start.Add(budget))
	}
	d := start.Add(budget)
	return &budgetCtx{parent: ctx, deadline: d, t: b.tick(d)}, func() {}
}
