package sqlstore

import (
	"fmt"
	"time"

	"github.com/tiercache/tiercache/session"
)

// Now reads the clock once per operation, at the precision both stores
// keep (microseconds, UTC).
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// NewSession validates in and returns the session a create at t writes:
// version 1, a fresh ID when in has none, both times t.
func NewSession(in session.Session, t time.Time) (session.Session, error) {
	if err := in.Validate(); err != nil {
		return session.Session{}, err
	}
	out := session.Session{ID: in.ID, Owner: in.Owner, Title: in.Title, Version: 1}
	if out.ID == "" {
		out.ID = session.NewSessionID()
	}
	out.CreatedAt, out.UpdatedAt = t, t
	return out, nil
}

// NewNode validates in and returns the node a create at t writes (version
// 1, a fresh ID when in has none, both times t; Seq and ShortID are the
// store's to assign) with its metadata in stored form, as [EncodeNode].
func NewNode(in session.Node, t time.Time) (session.Node, []byte, error) {
	if err := in.Validate(); err != nil {
		return session.Node{}, nil, err
	}
	n, meta, err := EncodeNode(in)
	if err != nil {
		return session.Node{}, nil, err
	}
	if n.ID == "" {
		n.ID = session.NewNodeID()
	}
	n.Version, n.CreatedAt, n.UpdatedAt = 1, t, t
	return n, meta, nil
}

// EncodeNode returns the stored form of n's metadata (nil, stored as NULL,
// when empty), and n with Metadata and Refs as a read would return them:
// Refs nil when empty, otherwise a copy the caller's slice does not share.
func EncodeNode(n session.Node) (session.Node, []byte, error) {
	meta, err := session.EncodeMetadata(n.Metadata)
	if err != nil {
		return n, nil, err
	}
	if n.Metadata, err = session.DecodeMetadata(meta); err != nil {
		return n, nil, err
	}
	if len(n.Refs) == 0 {
		n.Refs = nil
	} else {
		n.Refs = append([]string(nil), n.Refs...)
	}
	return n, meta, nil
}

// DecodeNode fills the fields of a scanned node that are derived from their
// stored forms: ShortID from shortNo and Metadata from meta. A metadata
// decode error names the node.
func DecodeNode(n *session.Node, shortNo int64, meta []byte) error {
	n.ShortID = session.FormatShortID(shortNo)
	var err error
	if n.Metadata, err = session.DecodeMetadata(meta); err != nil {
		return fmt.Errorf("node %s: %w", n.ID, err)
	}
	return nil
}

// CheckIfVersion rejects a negative expected version with an ErrInvalid
// error; 0 means unconditional.
func CheckIfVersion(ifVersion int64) error {
	if ifVersion < 0 {
		return session.Invalidf("if_version", "%d is negative", ifVersion)
	}
	return nil
}

// CheckUpdate validates the arguments of UpdateNode before any I/O: the
// expected version, as [CheckIfVersion], and an update that changes
// something.
func CheckUpdate(ifVersion int64, upd session.NodeUpdate) error {
	if err := CheckIfVersion(ifVersion); err != nil {
		return err
	}
	if upd.Empty() {
		return session.Invalidf("update", "no fields to change")
	}
	return nil
}

// CheckSessionUpdate validates the arguments of UpdateSession before any
// I/O: the new title, and the expected version as [CheckIfVersion].
func CheckSessionUpdate(owner, id string, ifVersion int64, title string) error {
	if err := (session.Session{ID: id, Owner: owner, Title: title}).Validate(); err != nil {
		return err
	}
	return CheckIfVersion(ifVersion)
}

// CheckVersion returns a *session.VersionMismatchError when ifVersion is
// set (non-zero) and differs from the current version of node id.
func CheckVersion(id string, ifVersion, current int64) error {
	return checkVersion("node", id, ifVersion, current)
}

// CheckSessionVersion is [CheckVersion] for session id.
func CheckSessionVersion(id string, ifVersion, current int64) error {
	return checkVersion("session", id, ifVersion, current)
}

func checkVersion(kind, id string, ifVersion, current int64) error {
	if ifVersion != 0 && ifVersion != current {
		return &session.VersionMismatchError{Kind: kind, ID: id, Want: ifVersion, Current: current}
	}
	return nil
}

// ApplyUpdate returns cur with upd applied at t (the next version,
// UpdatedAt t), validated and encoded as [EncodeNode].
func ApplyUpdate(cur session.Node, upd session.NodeUpdate, t time.Time) (session.Node, []byte, error) {
	n := upd.Apply(cur)
	if err := n.Validate(); err != nil {
		return session.Node{}, nil, err
	}
	n.Version, n.UpdatedAt = cur.Version+1, t
	return EncodeNode(n)
}

// CheckRefs returns an ErrInvalid error naming the first of refs that is
// not among found, the IDs a store's lookup of refs returned.
func CheckRefs(refs, found []string) error {
	have := make(map[string]bool, len(found))
	for _, id := range found {
		have[id] = true
	}
	for _, r := range refs {
		if !have[r] {
			return session.Invalidf("refs", "node %q not found", r)
		}
	}
	return nil
}

// ParseShortIDs parses each of shortIDs and returns their numbers in order;
// the first malformed one fails with its ErrInvalid error.
func ParseShortIDs(shortIDs []string) ([]int64, error) {
	nums := make([]int64, 0, len(shortIDs))
	for _, sid := range shortIDs {
		num, err := session.ParseShortID(sid)
		if err != nil {
			return nil, err
		}
		nums = append(nums, num)
	}
	return nums, nil
}
