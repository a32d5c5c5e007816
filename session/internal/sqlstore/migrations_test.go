package sqlstore

import (
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
)

func TestLoadMigrations(t *testing.T) {
	t.Parallel()
	file := func(sql string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(sql)} }
	tests := []struct {
		name    string
		files   fstest.MapFS
		want    []int // versions, in order
		wantErr string
	}{
		{
			name:  "ordered by version",
			files: fstest.MapFS{"m/0010_b.sql": file("B"), "m/0002_a.sql": file("A")},
			want:  []int{2, 10},
		},
		{name: "empty", files: fstest.MapFS{"m": &fstest.MapFile{Mode: fs.ModeDir | 0o755}}},
		{name: "no version", files: fstest.MapFS{"m/init.sql": file("")}, wantErr: "positive version"},
		{name: "zero version", files: fstest.MapFS{"m/0000_a.sql": file("")}, wantErr: "positive version"},
		{
			name:    "shared version",
			files:   fstest.MapFS{"m/0001_a.sql": file(""), "m/01_b.sql": file("")},
			wantErr: "share version 1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ms, err := LoadMigrations(tt.files, "m")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadMigrations() error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadMigrations() error = %v", err)
			}
			if len(ms) != len(tt.want) {
				t.Fatalf("LoadMigrations() = %d migrations, want %d", len(ms), len(tt.want))
			}
			for i, m := range ms {
				if m.Version != tt.want[i] || m.SQL != string(tt.files["m/"+m.Name].Data) {
					t.Errorf("LoadMigrations()[%d] = %+v, want version %d with its file's SQL", i, m, tt.want[i])
				}
			}
		})
	}
}

func TestCheckRefs(t *testing.T) {
	t.Parallel()
	if err := CheckRefs([]string{"a", "b"}, []string{"b", "a"}); err != nil {
		t.Errorf("CheckRefs(all found) = %v, want nil", err)
	}
	if err := CheckRefs([]string{"a", "b", "c"}, []string{"a"}); err == nil || !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("CheckRefs(b, c missing) = %v, want an error naming \"b\"", err)
	}
}
