package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic or hang,
// and must return either a config or an *Error whose problems all have a
// line ≥ 0 and a message. Minimizing the large seeds is slow; fuzz with
// -fuzzminimizetime=3s to keep the run moving.
func FuzzParse(f *testing.F) {
	if spec, err := os.ReadFile("testdata/spec.yaml"); err == nil {
		f.Add(spec)
	}
	for _, tc := range problemCases {
		f.Add([]byte(tc.yaml))
	}
	f.Add([]byte("a: &a [*a, *a]\nsmtp: {<<: [*a]}\n"))
	f.Add([]byte("delivery:\n  dkim:\n    - &k {<<: *k, domain: x.example}\n"))
	f.Add([]byte("x: &a {<<: *a}\nsmtp: &b {<<: [*a, *b], listen: \":25\"}\n"))
	dir := fixture(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "f.yaml", dir)
		if err == nil {
			if c == nil {
				t.Fatal("Parse returned neither a config nor an error")
			}
			return
		}
		if c != nil {
			t.Fatal("Parse returned a config and an error")
		}
		var cerr *Error
		if !errors.As(err, &cerr) {
			t.Fatalf("error %T is not *Error: %v", err, err)
		}
		if len(cerr.Problems) == 0 {
			t.Fatal("*Error without problems")
		}
		for _, p := range cerr.Problems {
			if p.Line < 0 || p.Msg == "" || p.File != "f.yaml" {
				t.Fatalf("bad problem %+v", p)
			}
		}
	})
}
