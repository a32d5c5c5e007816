// Package corpus generates deterministic synthetic data for tests and
// benchmarks: chat-session contexts shaped like the ones the contextd service
// caches, so that compression and size figures mean something.
package corpus

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Node is one piece of a synthetic chat context, shaped like a session node
// of the contextd service.
type Node struct {
	ID         string            `json:"id"`
	ShortID    string            `json:"short_id"`
	SessionID  string            `json:"session_id"`
	Role       string            `json:"role"`
	Content    string            `json:"content"`
	Metadata   map[string]string `json:"metadata"`
	References []string          `json:"references"`
	Version    uint64            `json:"version"`
	CreatedAt  string            `json:"created_at"`
	UpdatedAt  string            `json:"updated_at"`
}

// Context is a synthetic session context: the session's nodes in order.
type Context struct {
	SessionID string `json:"session_id"`
	OwnerID   string `json:"owner_id"`
	Title     string `json:"title"`
	CreatedAt string `json:"created_at"`
	Nodes     []Node `json:"nodes"`
}

// epoch is the fixed start of every synthetic timeline, so output does not
// depend on the wall clock.
var epoch = time.Date(2025, time.March, 3, 9, 0, 0, 0, time.UTC)

// ChatContext returns the JSON encoding of a synthetic chat-session context
// of about size bytes: a system prompt followed by alternating user and
// assistant messages of English-like sentences from a fixed vocabulary, with
// ids, short ids ("n123"), metadata, references to earlier nodes (some in
// other sessions) and timestamps. The same (size, seed) always gives the same
// bytes. The result is exactly size bytes long, except that it is never
// shorter than a minimal one-node document of about 450 bytes. It is safe
// for concurrent use.
func ChatContext(size int, seed uint64) []byte {
	g := newGen(seed)
	ctx := Context{
		SessionID: g.uuid(),
		OwnerID:   "owner-" + g.hex(8),
		Title:     g.title(),
		CreatedAt: g.at(0),
	}
	base := 1 + g.r.IntN(400) // first short id number
	otherSessions := []string{"s-" + g.hex(6), "s-" + g.hex(6), "s-" + g.hex(6)}

	fixed := len(mustJSON(ctx)) // document without nodes
	total := fixed
	elapsed := time.Duration(0)
	for i := 0; ; i++ {
		elapsed += time.Duration(5+g.r.IntN(90)) * time.Second
		n := g.node(ctx.SessionID, i, base, otherSessions, elapsed)
		skeleton := len(mustJSON(n)) + 1 // +1 for the comma between nodes
		remaining := size - total - skeleton
		if i > 0 && remaining < 40 {
			// No room for another node: lengthen the last one instead.
			if extra := size - total; extra > 1 {
				last := &ctx.Nodes[len(ctx.Nodes)-1]
				last.Content += " " + g.text(extra-1)
			}
			break
		}
		want := g.contentLen(n.Role)
		last := want >= remaining
		if last {
			want = max(remaining, 1)
		}
		n.Content = g.text(want)
		ctx.Nodes = append(ctx.Nodes, n)
		total += skeleton + len(n.Content)
		if last {
			break
		}
	}
	doc := mustJSON(ctx)
	if d := size - len(doc); d > 0 {
		// The estimate above counts a comma before the first node; make up
		// the difference so the document is exactly size bytes.
		ctx.Nodes[len(ctx.Nodes)-1].Content += g.text(d)
		doc = mustJSON(ctx)
	}
	return doc
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("corpus: " + err.Error()) // unreachable: plain structs of strings
	}
	return b
}

// gen carries the random source of one document.
type gen struct {
	r    *rand.Rand
	zipf *rand.Zipf
}

func newGen(seed uint64) *gen {
	r := rand.New(rand.NewPCG(seed, 0x7469657263616368)) // "tiercach"
	// Word frequencies in real text are roughly Zipf-distributed; uniform
	// choice would make the text both less realistic and less compressible.
	return &gen{r: r, zipf: rand.NewZipf(r, 1.07, 2, uint64(len(words)-1))}
}

func (g *gen) hex(n int) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	sb.Grow(n)
	for range n {
		sb.WriteByte(digits[g.r.IntN(16)])
	}
	return sb.String()
}

func (g *gen) uuid() string {
	return g.hex(8) + "-" + g.hex(4) + "-4" + g.hex(3) + "-" + "89ab"[g.r.IntN(4):][:1] + g.hex(3) + "-" + g.hex(12)
}

func (g *gen) at(d time.Duration) string {
	return epoch.Add(d).Format(time.RFC3339Nano)
}

func (g *gen) word() string { return words[g.zipf.Uint64()] }

func (g *gen) title() string {
	n := 3 + g.r.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		parts[i] = g.word()
	}
	t := strings.Join(parts, " ")
	return strings.ToUpper(t[:1]) + t[1:]
}

var (
	roles  = []string{"user", "assistant"}
	models = []string{"gpt-4o", "claude-sonnet", "llama-3-70b", "mistral-large"}
	langs  = []string{"en", "en", "en", "de", "fr"}
	tags   = []string{"draft", "pinned", "summary", "code", "question", "followup", "todo", "reviewed"}
)

// node builds node i without its content.
func (g *gen) node(session string, i, base int, others []string, elapsed time.Duration) Node {
	role := "system"
	if i > 0 {
		role = roles[(i-1)%2]
	}
	n := Node{
		ID:        g.uuid(),
		ShortID:   fmt.Sprintf("n%d", base+i),
		SessionID: session,
		Role:      role,
		Metadata: map[string]string{
			"lang":   langs[g.r.IntN(len(langs))],
			"source": "web",
		},
		References: []string{},
		Version:    uint64(1 + g.r.IntN(3)),
		CreatedAt:  g.at(elapsed),
		UpdatedAt:  g.at(elapsed + time.Duration(g.r.IntN(3000))*time.Millisecond),
	}
	if role == "assistant" {
		n.Metadata["model"] = models[g.r.IntN(len(models))]
		n.Metadata["tokens"] = fmt.Sprint(20 + g.r.IntN(900))
		n.Metadata["latency_ms"] = fmt.Sprint(150 + g.r.IntN(4000))
	}
	if g.r.IntN(3) == 0 {
		n.Metadata["tag"] = tags[g.r.IntN(len(tags))]
	}
	if i > 1 {
		for range g.r.IntN(3) {
			if g.r.IntN(4) == 0 {
				n.References = append(n.References, fmt.Sprintf("%s/n%d", others[g.r.IntN(len(others))], 1+g.r.IntN(base+i)))
			} else {
				n.References = append(n.References, fmt.Sprintf("n%d", base+g.r.IntN(i)))
			}
		}
	}
	return n
}

// contentLen picks a natural content length for a role.
func (g *gen) contentLen(role string) int {
	switch role {
	case "system":
		return 150 + g.r.IntN(250)
	case "user":
		return 30 + g.r.IntN(300)
	}
	return 200 + g.r.IntN(1400)
}

// text returns English-like sentences of exactly n bytes (n >= 1). Every
// byte is plain ASCII that JSON does not escape, so the encoded length is n.
func (g *gen) text(n int) string {
	var sb strings.Builder
	sb.Grow(n + 32)
	for sb.Len() < n {
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		words := 4 + g.r.IntN(14)
		for w := range words {
			word := g.word()
			if g.r.IntN(40) == 0 {
				word = fmt.Sprintf("@n%d", 1+g.r.IntN(300))
			}
			if w == 0 {
				word = strings.ToUpper(word[:1]) + word[1:]
			} else {
				if g.r.IntN(12) == 0 {
					sb.WriteByte(',')
				}
				sb.WriteByte(' ')
			}
			sb.WriteString(word)
		}
		if g.r.IntN(6) == 0 {
			sb.WriteByte('?')
		} else {
			sb.WriteByte('.')
		}
	}
	return sb.String()[:n]
}
