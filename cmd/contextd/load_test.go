package main

import (
	"strings"
	"testing"
)

func TestLoadCommand(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	var out strings.Builder
	if err := load(t.Context(), []string{"-mode", "bench", "-url", in.URL, "-workers", "2", "-duration", "300ms", "-rounds", "2", "-nodes", "5"}, &out); err != nil {
		t.Fatalf("load: %v", err)
	}
	for _, want := range []string{"hello", "context(", "ratio context/hello throughput"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("load output lacks %q:\n%s", want, out.String())
		}
	}
	for _, args := range [][]string{
		{"-url", "http://example.com:8080"},
		{"-url", "http://10.0.0.1:8080"},
		{"-workers", "0"},
		{"-duration", "1h"},
		{"-target", "all"},
	} {
		if err := load(t.Context(), append([]string{"-mode=bench"}, args...), &out); err == nil {
			t.Errorf("load(%v) = nil error, want a refusal", args)
		}
	}
}
