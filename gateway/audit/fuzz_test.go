package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fuzzSeeds adds a valid log and some damaged variants.
func fuzzSeeds(f *testing.F) {
	data, err := os.ReadFile(writeLog(f, 3))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:len(data)-7])
	f.Add(append(bytes.Clone(data), `{"ts":"2026-12-03T10:00:00.000Z","event":"decision","prev":"`+GenesisPrev+`","hash":"`+GenesisPrev+`"}`+"\n"...))
	f.Add([]byte(""))
	f.Add([]byte("\n"))
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"prev":"` + GenesisPrev + `","hash":"` + GenesisPrev + `"}`))
}

// FuzzVerify: arbitrary input never panics; a log that verifies is also
// fully searchable and yields exactly the verified count.
func FuzzVerify(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, last, err := VerifyChain(bytes.NewReader(data))
		var ve *VerifyError
		if err != nil && !errors.As(err, &ve) {
			t.Fatalf("non-VerifyError from a bytes.Reader: %v", err)
		}
		if len(last) != hexLen {
			t.Fatalf("last hash %q", last)
		}
		found := 0
		serr := Search(bytes.NewReader(data), Query{}, func(Record) error { found++; return nil })
		if err == nil {
			if serr != nil || found != n {
				t.Fatalf("verified %d records but Search found %d: %v", n, found, serr)
			}
		}
	})
}

// FuzzOpen: Open on arbitrary file contents never panics; it either refuses
// or leaves a file whose chain, after one more Append, verifies byte-wise;
// and it never cuts anything from a log that verifies.
func FuzzOpen(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		wasValid := false
		if _, err := Verify(bytes.NewReader(data)); err == nil {
			wasValid = true
		}
		l, err := open(path, discardLogger(), testClock())
		if err != nil {
			if wasValid {
				t.Fatalf("Open refused a valid log: %v", err)
			}
			return
		}
		after, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if wasValid && !bytes.Equal(after, data) {
			t.Fatal("Open changed a valid log")
		}
		if !bytes.HasPrefix(data, after) {
			t.Fatal("Open did more than cut a tail")
		}
		if _, err := l.Append(sampleRecord(1)); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		final, _ := os.ReadFile(path)
		lr := newLineReader(bytes.NewReader(final))
		prev := GenesisPrev
		for lineNo := 1; ; lineNo++ {
			rl, err := lr.next()
			if err != nil {
				break
			}
			if p := rl.shapeProblem(); p != "" {
				t.Fatalf("line %d after Open+Append: %s", lineNo, p)
			}
			h, k, reason := checkChain(rl.b, prev, lineNo)
			if k != lineOK {
				t.Fatalf("line %d after Open+Append: %s", lineNo, reason)
			}
			prev = h
		}
		if wasValid {
			if _, err := Verify(bytes.NewReader(final)); err != nil {
				t.Fatalf("valid log + Append no longer verifies: %v", err)
			}
		}
	})
}
