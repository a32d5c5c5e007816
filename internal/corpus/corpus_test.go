package corpus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"testing"
)

func TestChatContextDeterministic(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1 << 10, 10 << 10, 100 << 10} {
		a := ChatContext(size, 42)
		b := ChatContext(size, 42)
		if !bytes.Equal(a, b) {
			t.Errorf("ChatContext(%d, 42) differs between calls", size)
		}
		if c := ChatContext(size, 43); bytes.Equal(a, c) {
			t.Errorf("ChatContext(%d, 42) == ChatContext(%d, 43), want different documents", size, size)
		}
	}
}

func TestChatContextShape(t *testing.T) {
	t.Parallel()
	shortID := regexp.MustCompile(`^n[0-9]+$`)
	tests := []struct {
		name string
		size int
	}{
		{name: "tiny", size: 10},
		{name: "500B", size: 500},
		{name: "1KiB", size: 1 << 10},
		{name: "10KiB", size: 10 << 10},
		{name: "100KiB", size: 100 << 10},
		{name: "1MiB", size: 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := ChatContext(tt.size, 7)
			var ctx Context
			if err := json.Unmarshal(doc, &ctx); err != nil {
				t.Fatalf("ChatContext(%d, 7) is not valid JSON: %v", tt.size, err)
			}
			if len(ctx.Nodes) == 0 {
				t.Fatalf("ChatContext(%d, 7) has no nodes", tt.size)
			}
			if ctx.Nodes[0].Role != "system" {
				t.Errorf("first node role = %q, want system", ctx.Nodes[0].Role)
			}
			for i, n := range ctx.Nodes {
				if !shortID.MatchString(n.ShortID) {
					t.Errorf("node %d short_id = %q, want n<digits>", i, n.ShortID)
				}
				if n.Content == "" || n.ID == "" || n.CreatedAt == "" {
					t.Errorf("node %d has empty content, id or created_at: %+v", i, n)
				}
			}
			if tt.size >= 1<<10 && len(doc) != tt.size {
				t.Errorf("len(ChatContext(%d, 7)) = %d, want %d", tt.size, len(doc), tt.size)
			}
		})
	}
}

func ExampleChatContext() {
	doc := ChatContext(2048, 1)
	var ctx Context
	_ = json.Unmarshal(doc, &ctx)
	fmt.Println(ctx.Nodes[0].Role, len(doc))
	// Output: system 2048
}
