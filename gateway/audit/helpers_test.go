package audit

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var testT0 = time.Date(2026, 12, 3, 10, 0, 0, 123_456_789, time.UTC)

// testClock returns a deterministic clock advancing 1 ms per call.
func testClock() func() time.Time {
	var mu sync.Mutex
	t := testT0
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Millisecond)
		return t
	}
}

// logBuffer captures slog output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func openTest(t testing.TB, path string) (*Log, *logBuffer) {
	t.Helper()
	lb := &logBuffer{}
	l, err := open(path, slog.New(slog.NewTextHandler(lb, nil)), testClock())
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return l, lb
}

// sampleRecord returns a varied record number i.
func sampleRecord(i int) Record {
	r := Record{
		Event:     EventDecision,
		QueueID:   fmt.Sprintf("q%04d", i),
		MessageID: fmt.Sprintf("<m%d@example.org>", i),
		From:      "a@example.org",
		Rcpt:      fmt.Sprintf("b%d@x.example", i%3),
		Rule:      "confidential",
		Method:    "pgp",
		Reason:    "key 0xABCD from wkd",
		Considered: []Considered{
			{Method: "smime", OK: false, Reason: "no certificate"},
			{Method: "pgp", OK: true, Reason: "key from wkd"},
		},
	}
	if i%2 == 1 {
		r.Event = EventDelivery
		r.Result = ResultDelivered
		r.Rule, r.Reason, r.Considered, r.MessageID = "", "", nil, ""
		r.MX = "mx1.x.example"
		r.TLS = &TLSInfo{Version: "TLS1.3", Cipher: "TLS_AES_128_GCM_SHA256", Verified: true, Policy: PolicyMTASTS}
		r.Response = "250 2.0.0 OK \"queued\" <&>"
	}
	return r
}

func appendN(t testing.TB, l *Log, n int) []Record {
	t.Helper()
	out := make([]Record, 0, n)
	for i := range n {
		r, err := l.Append(sampleRecord(i))
		if err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
		out = append(out, r)
	}
	return out
}

// writeLog creates a closed log of n sample records and returns its path.
func writeLog(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "var", "audit.jsonl")
	l, _ := openTest(t, path)
	appendN(t, l, n)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return path
}

// readLines returns the file's lines without their newlines.
func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 {
		return nil
	}
	if data[len(data)-1] != '\n' {
		t.Fatalf("%s does not end in a newline", path)
	}
	return bytes.Split(data[:len(data)-1], []byte("\n"))
}

func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func verifyFile(t testing.TB, path string) (int, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Verify(f)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
