package l1

import (
	"hash/maphash"
	"math"
	"strconv"
	"sync/atomic"

	"github.com/maypok86/otter/v2"
)

// numStripes is the number of stripes that keys hash to (see stripe).
const numStripes = 4096

// stripe is what closes the L1 fill race for the keys that hash to it. A reader takes a ticket
// (a copy of its key's stripe counters) before it reads Redis, and its result lands in L1 only if
// the ticket is still good when it lands (checked inside otter's per-key Compute, so the check
// and the store are atomic with respect to an eviction). Local writes, deletes and flushes bump
// the stripe's hard counter after Redis acknowledged them and before they touch L1: any ticket
// taken earlier is refused. A peer's invalidation raises the stripe's announced version and then
// bumps its soft counter: a ticket taken earlier is refused only if what its reader read is older
// than that version, so a reader that already saw the new value still fills L1. Keys share
// stripes: a collision only costs a skipped fill. The counters work whether or not L1 stores
// anything (a Ticket also tells GetOrLoad's flights apart).
type stripe struct {
	hard   atomic.Uint64 // bumped by local writes, deletes and flushes
	soft   atomic.Uint64 // bumped by peers' invalidations, after maxVer is raised
	maxVer atomic.Uint64 // the announced version: the highest a peer's invalidation announced
	_      [40]byte
}

// Ticket is a reader's or writer's copy of its key's stripe counters, taken before it goes to
// Redis (see stripe). The zero Ticket is refused by Land (and must not be given to Put).
type Ticket struct {
	s          *stripe
	hard, soft uint64
}

// Ticket returns key's ticket as of now.
func (c *Cache) Ticket(key string) Ticket {
	s := c.stripe(key)
	return Ticket{s: s, hard: s.hard.Load(), soft: s.soft.Load()}
}

// Tag returns key qualified by the counters t saw. Two tickets of key give the same tag only if
// nothing moved the stripe between them (a local write, delete or evict, a peer's announcement,
// a flush): GetOrLoad keys its flights by it, so that a caller that starts after a write never
// joins a load that began before it.
func (t Ticket) Tag(key string) string {
	return key + "\x00" + strconv.FormatUint(t.hard, 36) + "." + strconv.FormatUint(t.soft, 36)
}

// allows reports whether a value of version v read after t was taken may still enter L1.
func (t Ticket) allows(v uint64) bool {
	if t.s == nil || t.s.hard.Load() != t.hard {
		return false
	}
	return t.s.soft.Load() == t.soft || t.s.maxVer.Load() <= v
}

func (c *Cache) stripe(key string) *stripe {
	return &c.stripes[maphash.String(c.seed, key)&(numStripes-1)]
}

// Land stores e under key, read from Redis after t was taken, unless t is refused (see stripe)
// or L1 already holds a newer version. A refused landing also drops whatever older entry L1
// holds: something newer may exist. It does nothing when e.Life <= 0 or L1 stores nothing.
// Landing again an entry L1 keeps past its life (see Held), with the version Redis was found to
// hold after t was taken, revalidates it.
func (c *Cache) Land(key string, t Ticket, e Entry) {
	if !c.on || e.Life <= 0 {
		return
	}
	now := c.now()
	s := slot{val: e.Val, version: e.Version, serve: now + int64(e.Life), keep: now + int64(max(e.Keep, e.Life)), size: e.Size}
	c.store.Compute(key, func(old slot, found bool) (slot, otter.ComputeOp) {
		switch {
		case found && old.version > s.version:
			return old, otter.CancelOp
		case !t.allows(s.version):
			// Something newer may exist; whatever L1 holds is no newer than e: drop it too.
			return old, otter.InvalidateOp
		}
		return s, otter.WriteOp
	})
}

// Put stores a value the caller has just written; t is key's ticket from before the write was
// sent. Bumping hard refuses tickets taken earlier; if anything else bumped it meanwhile (a
// concurrent local write or delete of a key in the stripe, which may have been acknowledged after
// ours), or a peer announced a newer version (its write may have reached Redis after ours and its
// invalidation arrived before ours returned), the value does not enter L1 and whatever older
// entry is there is dropped. A newer version already in L1 is kept. The counters move even when
// e.Life <= 0 or L1 stores nothing.
func (c *Cache) Put(key string, t Ticket, e Entry) {
	if t.s.hard.Add(1) == t.hard+1 {
		t.hard++ // nothing else moved the stripe: our own bump keeps t good
	} // else t.hard is behind the stripe's, and Land refuses it
	c.Land(key, t, e)
}

// Evict drops key from L1 after bumping its stripe's hard counter, so no ticket taken earlier
// lands.
func (c *Cache) Evict(key string) {
	c.stripe(key).hard.Add(1)
	if c.on {
		c.store.Invalidate(key)
	}
}

// Announce applies a peer's write of key at version: tickets taken earlier are refused for
// values older than version, and an entry older than version is dropped. Version
// math.MaxUint64 stands for any version (a batch write with automatic versions): every ticket of
// the stripe taken earlier is refused, whatever its reader read.
func (c *Cache) Announce(key string, version uint64) {
	s := c.stripe(key)
	if version == math.MaxUint64 {
		// Not through maxVer, which would stay at the top and refuse every later announcement's
		// readers whatever they read.
		s.hard.Add(1)
	} else {
		for {
			m := s.maxVer.Load()
			if version <= m || s.maxVer.CompareAndSwap(m, version) {
				break
			}
		}
		s.soft.Add(1)
	}
	if !c.on {
		return
	}
	c.store.ComputeIfPresent(key, func(old slot) (slot, otter.ComputeOp) {
		if old.version < version {
			return old, otter.InvalidateOp
		}
		return old, otter.CancelOp
	})
}

// Flush refuses every ticket taken so far (every stripe's hard counter moves) and then drops the
// entries for which drop reports true, or all of them when drop is nil.
func (c *Cache) Flush(drop func(key string) bool) {
	for i := range c.stripes {
		c.stripes[i].hard.Add(1)
	}
	switch {
	case !c.on:
	case drop == nil:
		c.store.InvalidateAll()
	default:
		for k := range c.store.Keys() {
			if drop(k) {
				c.store.Invalidate(k)
			}
		}
	}
}
