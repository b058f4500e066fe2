package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// forge re-signs a record line the way someone who knows the scheme would:
// mutate it, set prev, recompute its own hash.
func forge(t *testing.T, line []byte, prev string, mutate func(*Record)) []byte {
	t.Helper()
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	mutate(&r)
	r.Prev = prev
	pre, err := preimage(&r)
	if err != nil {
		t.Fatal(err)
	}
	return appendLine(nil, pre, hashOf(pre))
}

func hashField(t *testing.T, line []byte) string {
	t.Helper()
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	return r.Hash
}

func TestVerifyDetectsTampering(t *testing.T) {
	path := writeLog(t, 10)
	orig := readLines(t, path)
	clone := func() [][]byte {
		out := make([][]byte, len(orig))
		for i, l := range orig {
			out[i] = slices.Clone(l)
		}
		return out
	}
	tests := []struct {
		name     string
		tamper   func() []byte
		wantLine int
	}{
		{"edit one char in a middle line", func() []byte {
			l := clone()
			i := bytes.Index(l[4], []byte("x.example"))
			l[4][i] = 'y'
			return joinLines(l)
		}, 5},
		{"edit the hash of a line", func() []byte {
			l := clone()
			n := len(l[6])
			if l[6][n-3] == '0' {
				l[6][n-3] = '1'
			} else {
				l[6][n-3] = '0'
			}
			return joinLines(l)
		}, 7},
		{"edit the prev of a line", func() []byte {
			l := clone()
			i := bytes.Index(l[3], []byte(`"prev":"`)) + len(`"prev":"`)
			l[3][i] ^= 1
			return joinLines(l)
		}, 4},
		{"edit the last line", func() []byte {
			l := clone()
			l[9] = bytes.Replace(l[9], []byte("delivered"), []byte("deferred!"), 1)
			return joinLines(l)
		}, 10},
		{"whitespace added to a line", func() []byte {
			l := clone()
			l[2] = append([]byte("{ "), l[2][1:]...)
			return joinLines(l)
		}, 3},
		{"delete a middle line", func() []byte {
			l := clone()
			return joinLines(slices.Delete(l, 4, 5))
		}, 5},
		{"delete the first line", func() []byte {
			return joinLines(clone()[1:])
		}, 1},
		{"swap two lines", func() []byte {
			l := clone()
			l[3], l[4] = l[4], l[3]
			return joinLines(l)
		}, 4},
		{"insert a naively forged line", func() []byte {
			l := clone()
			f := bytes.Replace(slices.Clone(l[2]), []byte("b2@x.example"), []byte("evil@x.example"), 1)
			return joinLines(slices.Insert(l, 3, f))
		}, 4},
		{"insert a re-hashed forged line", func() []byte {
			l := clone()
			f := forge(t, l[2], hashField(t, l[1]), func(r *Record) { r.Rcpt = "evil@x.example" })
			// Its own hash and prev are right; the next line no longer links.
			return joinLines(slices.Insert(l, 2, f))
		}, 4},
		{"replace a line with a re-hashed forgery", func() []byte {
			l := clone()
			l[5] = forge(t, l[5], hashField(t, l[4]), func(r *Record) { r.Method = "none" })
			return joinLines(l)
		}, 7},
		{"duplicate a line", func() []byte {
			l := clone()
			return joinLines(slices.Insert(l, 6, l[5]))
		}, 7},
		{"empty line inserted", func() []byte {
			l := clone()
			return joinLines(slices.Insert(l, 8, []byte{}))
		}, 9},
		{"last newline missing", func() []byte {
			b := joinLines(clone())
			return b[:len(b)-1]
		}, 10},
		{"garbage appended", func() []byte {
			return append(joinLines(clone()), "hello\n"...)
		}, 11},
		{"duplicate hash key inside the line", func() []byte {
			l := clone()
			// A second hash key before the real suffix: parsed value still
			// comes from the suffix, but the bytes changed, so the hash fails.
			l[1] = append([]byte(`{"hash":"x",`), l[1][1:]...)
			return joinLines(l)
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.tamper()
			n, err := Verify(bytes.NewReader(data))
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify = %d, %v; want *VerifyError", n, err)
			}
			if ve.Line != tc.wantLine {
				t.Errorf("VerifyError line %d (%s), want %d", ve.Line, ve.Reason, tc.wantLine)
			}
			if n != tc.wantLine-1 {
				t.Errorf("good count %d, want %d", n, tc.wantLine-1)
			}
			if !strings.Contains(err.Error(), "line ") {
				t.Errorf("error %q does not name the line", err)
			}
		})
	}
}

// Removing the last line cannot be seen in the file itself; it is seen
// against an anchor (Log.Head) kept elsewhere.
func TestTruncationNeedsAnchor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	appendN(t, l, 5)
	anchor, count := l.Head()
	l.Close()

	lines := readLines(t, path)
	n, last, err := VerifyChain(bytes.NewReader(joinLines(lines)))
	if err != nil || n != count || last != anchor {
		t.Fatalf("intact: VerifyChain = %d, %s, %v; anchor %d, %s", n, last, err, count, anchor)
	}
	n, last, err = VerifyChain(bytes.NewReader(joinLines(lines[:4])))
	if err != nil || n != 4 {
		t.Fatalf("truncated: VerifyChain = %d, %v", n, err)
	}
	if last == anchor {
		t.Fatal("truncated log still matches the anchor")
	}
}

func TestVerifyEmpty(t *testing.T) {
	n, last, err := VerifyChain(strings.NewReader(""))
	if n != 0 || last != GenesisPrev || err != nil {
		t.Fatalf("VerifyChain(empty) = %d, %s, %v", n, last, err)
	}
}

func TestVerifyTooLongLine(t *testing.T) {
	data := append(joinLines(readLines(t, writeLog(t, 2))), bytes.Repeat([]byte("a"), MaxLineSize+10)...)
	data = append(data, '\n')
	_, err := Verify(bytes.NewReader(data))
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Line != 3 {
		t.Fatalf("Verify = %v, want VerifyError at line 3", err)
	}
}

type failReader struct{ err error }

func (f failReader) Read([]byte) (int, error) { return 0, f.err }

func TestVerifyReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Verify(failReader{boom})
	var ve *VerifyError
	if !errors.Is(err, boom) || errors.As(err, &ve) {
		t.Fatalf("Verify = %v, want wrapped I/O error", err)
	}
}

// tornCase damages the end of a good 5-record log.
func TestOpenRecoversTornLastLine(t *testing.T) {
	tests := []struct {
		name string
		tail func(last []byte) []byte // bytes that replace or follow the last good line
		good int                      // records kept
	}{
		{"partial line, no newline", func([]byte) []byte { return []byte(`{"ts":"2026-12-03T10:00:00.1`) }, 5},
		{"whole line without its newline", func(last []byte) []byte { return slices.Clone(last) }, 5},
		{"zero-filled line with newline", func([]byte) []byte { return append(bytes.Repeat([]byte{0}, 300), '\n') }, 5},
		{"line with bad hash and newline", func(last []byte) []byte {
			b := bytes.Replace(slices.Clone(last), []byte("x.example"), []byte("x.exampl3"), 1)
			return append(b, '\n')
		}, 5},
		{"single byte", func([]byte) []byte { return []byte("{") }, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, 5)
			lines := readLines(t, path)
			torn := tc.tail(lines[4])
			data := append(joinLines(lines), torn...)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := verifyFile(t, path); err == nil {
				t.Fatal("damaged log verifies before recovery")
			}

			l, lb := openTest(t, path)
			if _, n := l.Head(); n != tc.good {
				t.Errorf("count after recovery = %d, want %d", n, tc.good)
			}
			appendN(t, l, 2)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if n, err := verifyFile(t, path); err != nil || n != tc.good+2 {
				t.Fatalf("Verify after recovery = %d, %v", n, err)
			}
			m, _ := filepath.Glob(path + ".torn-*")
			if len(m) != 1 {
				t.Fatalf("torn files: %v", m)
			}
			saved, err := os.ReadFile(m[0])
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(saved, torn) {
				t.Errorf("torn file holds %q, want %q", saved, torn)
			}
			if fi, _ := os.Stat(m[0]); fi.Mode().Perm() != 0o600 {
				t.Errorf("torn file mode %v", fi.Mode().Perm())
			}
			if s := lb.String(); !strings.Contains(s, "torn") || !strings.Contains(s, m[0]) {
				t.Errorf("recovery not logged: %q", s)
			}
		})
	}
}

func TestOpenTornFileNameCollision(t *testing.T) {
	path := writeLog(t, 1)
	for range 2 {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(`{"partial`)
		f.Close()
		l, _ := openTest(t, path) // same fixed clock: same second both times
		l.Close()
	}
	m, _ := filepath.Glob(path + ".torn-*")
	if len(m) != 2 {
		t.Fatalf("torn files: %v", m)
	}
}

// Open must not "repair" damage that is not a torn final line.
func TestOpenRefusesTampering(t *testing.T) {
	tests := []struct {
		name     string
		tamper   func(l [][]byte) [][]byte
		wantLine int
	}{
		{"edited middle line", func(l [][]byte) [][]byte {
			l[2] = bytes.Replace(l[2], []byte("pgp"), []byte("PGP"), 1)
			return l
		}, 3},
		{"deleted middle line", func(l [][]byte) [][]byte { return slices.Delete(l, 2, 3) }, 3},
		{"deleted second-to-last line", func(l [][]byte) [][]byte { return slices.Delete(l, 3, 4) }, 4},
		{"swapped last two lines", func(l [][]byte) [][]byte {
			l[3], l[4] = l[4], l[3]
			return l
		}, 4},
		{"two bad lines at the end", func(l [][]byte) [][]byte {
			return append(l, []byte("garbage"), []byte("more garbage"))
		}, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, 5)
			data := joinLines(tc.tamper(readLines(t, path)))
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := Open(path, nil)
			if err == nil {
				l.Close()
				t.Fatal("Open accepted a tampered log")
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Line != tc.wantLine {
				t.Errorf("Open error %v, want VerifyError at line %d", err, tc.wantLine)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, data) {
				t.Error("Open modified a tampered log")
			}
			if m, _ := filepath.Glob(path + ".torn-*"); len(m) != 0 {
				t.Errorf("Open cut lines from a tampered log: %v", m)
			}
		})
	}
}
