package session

import (
	"errors"
	"strings"
	"testing"
)

func validNode() Node {
	return Node{SessionID: "s_1", Owner: "alice", Role: RoleUser, Content: "hi"}
}

func TestNodeValidate(t *testing.T) {
	t.Parallel()
	tooManyRefs := make([]string, MaxRefs+1)
	for i := range tooManyRefs {
		tooManyRefs[i] = FormatShortID(int64(i + 1))
	}
	tests := []struct {
		name      string
		mutate    func(*Node)
		wantField string // "" means valid
	}{
		{name: "valid", mutate: func(*Node) {}},
		{name: "every role", mutate: func(n *Node) { n.Role = RoleSummary }},
		{name: "max content", mutate: func(n *Node) { n.Content = strings.Repeat("x", MaxContentBytes) }},
		{name: "max refs", mutate: func(n *Node) { n.Refs = tooManyRefs[:MaxRefs] }},
		{name: "bad id", mutate: func(n *Node) { n.ID = "a/b" }, wantField: "id"},
		{name: "missing session", mutate: func(n *Node) { n.SessionID = "" }, wantField: "session_id"},
		{name: "missing owner", mutate: func(n *Node) { n.Owner = "" }, wantField: "owner"},
		{name: "bad role", mutate: func(n *Node) { n.Role = "admin" }, wantField: "role"},
		{name: "empty role", mutate: func(n *Node) { n.Role = "" }, wantField: "role"},
		{name: "content too big", mutate: func(n *Node) { n.Content = strings.Repeat("x", MaxContentBytes+1) }, wantField: "content"},
		{name: "content not utf8", mutate: func(n *Node) { n.Content = "\xff" }, wantField: "content"},
		{name: "content NUL", mutate: func(n *Node) { n.Content = "a\x00b" }, wantField: "content"},
		{name: "content empty", mutate: func(n *Node) { n.Content = "" }, wantField: "content"},
		{name: "content blank", mutate: func(n *Node) { n.Content = " \n\t " }, wantField: "content"},
		{name: "metadata too big", mutate: func(n *Node) { n.Metadata = map[string]any{"k": strings.Repeat("x", MaxMetadataBytes)} }, wantField: "metadata"},
		{name: "metadata not json", mutate: func(n *Node) { n.Metadata = map[string]any{"f": func() {}} }, wantField: "metadata"},
		{name: "metadata NUL", mutate: func(n *Node) { n.Metadata = map[string]any{"k": "\x00"} }, wantField: "metadata"},
		{name: "too many refs", mutate: func(n *Node) { n.Refs = tooManyRefs }, wantField: "refs"},
		{name: "duplicate ref", mutate: func(n *Node) { n.Refs = []string{"nd_a", "nd_a"} }, wantField: "refs"},
		{name: "self ref", mutate: func(n *Node) { n.ID = "nd_a"; n.Refs = []string{"nd_a"} }, wantField: "refs"},
		{name: "bad ref", mutate: func(n *Node) { n.Refs = []string{""} }, wantField: "refs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := validNode()
			tt.mutate(&n)
			err := n.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) || !errors.Is(err, ErrInvalid) || ie.Field != tt.wantField {
				t.Fatalf("Validate() = %v, want ErrInvalid for field %q", err, tt.wantField)
			}
			if !strings.HasPrefix(err.Error(), "session: invalid "+tt.wantField+": ") {
				t.Errorf("Validate() message %q does not name the field %q", err, tt.wantField)
			}
		})
	}
}

func TestSessionValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		s         Session
		wantField string
	}{
		{name: "valid", s: Session{Owner: "alice", Title: "t"}},
		{name: "valid with id", s: Session{ID: NewSessionID(), Owner: "alice"}},
		{name: "max title", s: Session{Owner: "alice", Title: strings.Repeat("t", MaxTitle)}},
		{name: "title too long", s: Session{Owner: "alice", Title: strings.Repeat("t", MaxTitle+1)}, wantField: "title"},
		{name: "no owner", s: Session{Title: "t"}, wantField: "owner"},
		{name: "owner too long", s: Session{Owner: strings.Repeat("o", MaxOwnerBytes+1)}, wantField: "owner"},
		{name: "bad id", s: Session{ID: "x y", Owner: "alice"}, wantField: "id"},
		{name: "long id", s: Session{ID: strings.Repeat("a", MaxIDBytes+1), Owner: "alice"}, wantField: "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate()
			var ie *InvalidError
			switch {
			case tt.wantField == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantField != "" && (!errors.As(err, &ie) || ie.Field != tt.wantField):
				t.Fatalf("Validate() = %v, want ErrInvalid for field %q", err, tt.wantField)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	s, n := NewSessionID(), NewNodeID()
	if !ValidID(s) || !strings.HasPrefix(s, "s_") || len(s) != 18 {
		t.Errorf("NewSessionID() = %q, want s_ and 16 hex digits", s)
	}
	if !ValidID(n) || !strings.HasPrefix(n, "nd_") || len(n) != 19 {
		t.Errorf("NewNodeID() = %q, want nd_ and 16 hex digits", n)
	}
	if NewNodeID() == n {
		t.Errorf("NewNodeID() returned %q twice", n)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	t.Parallel()
	b, err := EncodeMetadata(map[string]any{"a": 1, "b": []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMetadata(b)
	if err != nil || m["a"] != float64(1) {
		t.Fatalf("DecodeMetadata(%s) = %v, %v", b, m, err)
	}
	if b, err := EncodeMetadata(map[string]any{}); b != nil || err != nil {
		t.Errorf("EncodeMetadata(empty) = %q, %v; want nil, nil", b, err)
	}
	if m, err := DecodeMetadata([]byte("{}")); m != nil || err != nil {
		t.Errorf("DecodeMetadata({}) = %v, %v; want nil, nil", m, err)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	var err error = &VersionMismatchError{ID: "nd_1", Want: 1, Current: 3}
	var vm *VersionMismatchError
	if !errors.Is(err, ErrVersionMismatch) || !errors.As(err, &vm) || vm.Current != 3 {
		t.Errorf("VersionMismatchError %v does not match ErrVersionMismatch with Current 3", err)
	}
	if !strings.HasPrefix(err.Error(), "session: ") {
		t.Errorf("error %q lacks the session: prefix", err)
	}
}
