package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLoneSurrogate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"none", `{"a":"b"}`, -1},
		{"pair", `{"a":"\ud83d\ude00"}`, -1},
		{"upper-case pair", `{"a":"\uD83D\uDE00"}`, -1},
		{"lone high", `{"a":"\ud800"}`, 6},
		{"lone low", `{"a":"x\udc00"}`, 7},
		{"high then other escape", `{"a":"\ud800\n"}`, 6},
		{"high then high", `{"a":"\ud800\ud800"}`, 6},
		{"escaped backslash before u", `{"a":"\\ud800"}`, -1},
		{"escaped backslash then lone", `{"a":"\\\ud800"}`, 8},
		{"plain escapes", `{"a":"\u00e9\t\"\\"}`, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := loneSurrogate([]byte(tt.in)); got != tt.want {
				t.Errorf("loneSurrogate(%s) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	if got := clip("short"); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
	long := strings.Repeat("é", 100) // 200 bytes, two per rune
	got := clip(long)
	if !utf8.ValidString(got) || len(got) > maxEcho+32 || !strings.Contains(got, "(200 bytes)") {
		t.Errorf("clip(200 bytes) = %q, want at most %d bytes of valid UTF-8 and the length", got, maxEcho)
	}
}

// FuzzDecodeJSON: the body decoder never panics, and whatever it accepts is
// one valid JSON object of valid UTF-8 whose keys are all documented
// fields, decoding to what encoding/json makes of it.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"session_id":"s","content":"hi","role":"user","metadata":{"k":[1,2]}}`,
		`null`, `{}`, `[]`, `{"Content":"x"}`, `{"content":"a","content":"b"}`,
		`{"content":"\ud800"}`, `{"content":"\ud83d\ude00"}`, "{\"content\":\"\xff\"}",
		`{"content":"x"} {}`, `{"metadata":null}`, `{"session_id":5}`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	fields := fieldsOf(&chatRequest{})
	f.Fuzz(func(t *testing.T, body []byte) {
		var got chatRequest
		err := decodeJSON(body, &got)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status != 400 || ae.Message == "" {
				t.Fatalf("decodeJSON(%q) = %v, want a 400 apiError", body, err)
			}
			return
		}
		if !utf8.Valid(body) || !json.Valid(body) {
			t.Fatalf("decodeJSON accepted %q: not valid UTF-8 JSON", body)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil || m == nil {
			t.Fatalf("decodeJSON accepted %q, which is no object", body)
		}
		for k := range m {
			if _, ok := fields[k]; !ok {
				t.Fatalf("decodeJSON accepted %q with unknown field %q", body, k)
			}
		}
		var want chatRequest
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("decodeJSON accepted %q, which encoding/json refuses: %v", body, err)
		}
		if got.SessionID != want.SessionID || got.Content != want.Content || got.Role != want.Role {
			t.Fatalf("decodeJSON(%q) = %+v, encoding/json %+v", body, got, want)
		}
	})
}
