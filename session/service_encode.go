package session

import (
	"context"
	"encoding/json"
	"hash/maphash"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// encodedSlots is the number of encoded contexts kept for ContextJSON, and
// maxEncodedBody the largest one kept, so the memo holds at most 64 MiB.
const (
	encodedSlots   = 1024
	maxEncodedBody = 64 << 10
)

// encodedContext is one memoized encoding of a context: key names exactly
// what was encoded (owner, session and every node with its version).
type encodedContext struct {
	key  string
	etag string
	body []byte
}

// encodedCache is a direct-mapped cache of encoded contexts. A slot is
// replaced whole with one atomic store; a reader compares the full key, so a
// slot collision costs an encoding, never a wrong answer.
type encodedCache struct {
	seed  maphash.Seed
	slots [encodedSlots]atomic.Pointer[encodedContext]
}

// ContextJSON returns the JSON encoding of [Service.Context] and an ETag
// for it. The context is assembled as Context does (from the cache); its
// encoding is reused while the session, its node list and every node in it
// keep their versions, since the store bumps a version on every change, so
// the bytes are always those of the current context. The returned slice is
// shared: do not modify it.
func (s *Service) ContextJSON(ctx context.Context, owner, sessionID string) ([]byte, string, error) {
	defer s.latency.since("context", time.Now())
	c, err := s.context(ctx, owner, sessionID)
	if err != nil {
		return nil, "", err
	}
	key := contextKey(owner, c)
	h := maphash.String(s.encoded.seed, key)
	slot := &s.encoded.slots[h%encodedSlots]
	if e := slot.Load(); e != nil && e.key == key {
		return e.body, e.etag, nil
	}
	body, err := json.Marshal(c)
	if err != nil {
		return nil, "", err
	}
	body = append(body, '\n')
	e := &encodedContext{key: key, body: body, etag: `"` + strconv.FormatUint(h, 36) + `"`}
	if len(body) <= maxEncodedBody {
		slot.Store(e)
	}
	return e.body, e.etag, nil
}

// contextKey names everything a context's encoding depends on: the owner,
// the session and its version (title and timestamps change with it), and
// each node and referenced node with its version.
func contextKey(owner string, c Context) string {
	var b strings.Builder
	b.Grow(len(owner) + 32 + 28*(len(c.Nodes)+len(c.Refs)))
	b.WriteString(owner)
	b.WriteByte(0)
	b.WriteString(c.Session.ID)
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(c.Session.Version, 10))
	writeNodeVersions(&b, c.Nodes)
	b.WriteByte('|')
	writeNodeVersions(&b, c.Refs)
	return b.String()
}

// writeNodeVersions writes ";<id>:<version>" for each node.
func writeNodeVersions(b *strings.Builder, nodes []Node) {
	for _, n := range nodes {
		b.WriteByte(';')
		b.WriteString(n.ID)
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(n.Version, 10))
	}
}
