package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendVerifyRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "audit.jsonl") // parent created by Open
	l, _ := openTest(t, path)
	if h, n := l.Head(); h != GenesisPrev || n != 0 {
		t.Fatalf("Head of new log = %s, %d", h, n)
	}
	recs := appendN(t, l, 20)
	if h, n := l.Head(); h != recs[19].Hash || n != 20 {
		t.Fatalf("Head = %s, %d; want %s, 20", h, n, recs[19].Hash)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	n, err := verifyFile(t, path)
	if err != nil || n != 20 {
		t.Fatalf("Verify = %d, %v; want 20, nil", n, err)
	}

	lines := readLines(t, path)
	if len(lines) != 20 {
		t.Fatalf("%d lines, want 20", len(lines))
	}
	tsRE := regexp.MustCompile(`^\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","event":"`)
	for i, line := range lines {
		if !tsRE.Match(line) {
			t.Errorf("line %d does not start with a millisecond UTC ts: %s", i+1, line)
		}
		var got Record
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		// Stored record == returned record, byte for byte through MarshalJSON.
		b1, _ := got.MarshalJSON()
		b2, _ := recs[i].MarshalJSON()
		if !bytes.Equal(b1, line) || !bytes.Equal(b2, line) {
			t.Errorf("line %d:\nstored   %s\nreparsed %s\nreturned %s", i+1, line, b1, b2)
		}
		if !got.TS.Equal(recs[i].TS) || got.Hash != recs[i].Hash || got.Prev != recs[i].Prev {
			t.Errorf("line %d: parsed %+v, returned %+v", i+1, got, recs[i])
		}
		wantPrev := GenesisPrev
		if i > 0 {
			wantPrev = recs[i-1].Hash
		}
		if got.Prev != wantPrev {
			t.Errorf("line %d prev = %s, want %s", i+1, got.Prev, wantPrev)
		}
	}
	if !bytes.Contains(lines[0], []byte(`"message_id":"<m0@example.org>"`)) {
		t.Errorf("message id escaped or missing: %s", lines[0])
	}
	if !bytes.Contains(lines[0], []byte(`"considered":[{"method":"smime","ok":false,"reason":"no certificate"},{"method":"pgp","ok":true,"reason":"key from wkd"}]`)) {
		t.Errorf("considered missing or reordered: %s", lines[0])
	}
	if !bytes.Contains(lines[1], []byte(`"tls":{"version":"TLS1.3","cipher":"TLS_AES_128_GCM_SHA256","verified":true,"policy":"mta-sts"}`)) {
		t.Errorf("tls missing: %s", lines[1])
	}
}

// TestHashScheme recomputes the documented scheme independently of the
// package code: hash = sha256(line with `,"hash":"…"` cut and "}" restored).
func TestHashScheme(t *testing.T) {
	path := writeLog(t, 4)
	re := regexp.MustCompile(`^(.*),"hash":"([0-9a-f]{64})"\}$`)
	prev := GenesisPrev
	for i, line := range readLines(t, path) {
		m := re.FindSubmatch(line)
		if m == nil {
			t.Fatalf("line %d has no hash suffix: %s", i+1, line)
		}
		sum := sha256.Sum256(append(append([]byte{}, m[1]...), '}'))
		if hex.EncodeToString(sum[:]) != string(m[2]) {
			t.Errorf("line %d: hash %s, want %x", i+1, m[2], sum)
		}
		if !bytes.HasSuffix(m[1], []byte(`,"prev":"`+prev+`"`)) {
			t.Errorf("line %d: pre-image does not end with prev %s: %s", i+1, prev, m[1])
		}
		prev = string(m[2])
	}
}

func TestAppendFillsAndNormalisesTS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	defer l.Close()
	zone := time.FixedZone("X", 2*3600)
	in := sampleRecord(0)
	in.TS = time.Date(2026, 1, 2, 5, 4, 5, 987_654_321, zone)
	in.Prev, in.Hash = "caller-prev", "caller-hash" // ignored
	r, err := l.Append(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := formatTS(r.TS); got != "2026-01-02T03:04:05.987Z" {
		t.Errorf("ts = %s", got)
	}
	if r.Prev != GenesisPrev || len(r.Hash) != 64 {
		t.Errorf("prev/hash not filled: %q %q", r.Prev, r.Hash)
	}
	r2, err := l.Append(sampleRecord(1)) // zero TS: from the clock
	if err != nil {
		t.Fatal(err)
	}
	if r2.TS.IsZero() || r2.TS.Location() != time.UTC || r2.TS.Nanosecond()%int(time.Millisecond) != 0 {
		t.Errorf("filled ts = %v", r2.TS)
	}
	if r2.Prev != r.Hash {
		t.Errorf("second prev = %s, want %s", r2.Prev, r.Hash)
	}
}

func TestAppendRejectsInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	appendN(t, l, 2)
	bad := []Record{
		{},
		{Event: "opened"},
		{Event: EventDelivery, Result: "sent"},
		{Event: EventDelivery, TLS: &TLSInfo{Policy: "opportunistic"}},
		{Event: EventDecision, TS: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Event: EventDelivery, Response: strings.Repeat("x", MaxLineSize)},
	}
	for i, r := range bad {
		if _, err := l.Append(r); err == nil {
			t.Errorf("bad record %d accepted", i)
		}
	}
	appendN(t, l, 2) // chain unaffected by the refusals
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := verifyFile(t, path); err != nil || n != 4 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestReopenContinuesChain(t *testing.T) {
	path := writeLog(t, 3)
	l, lb := openTest(t, path)
	if _, n := l.Head(); n != 3 {
		t.Fatalf("reopened count = %d", n)
	}
	appendN(t, l, 2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := verifyFile(t, path); err != nil || n != 5 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	if s := lb.String(); s != "" {
		t.Errorf("clean reopen logged: %s", s)
	}
	if m, _ := filepath.Glob(path + ".torn-*"); len(m) != 0 {
		t.Errorf("clean reopen left %v", m)
	}
}

func TestCloseAndAppendAfterClose(t *testing.T) {
	l, _ := openTest(t, filepath.Join(t.TempDir(), "audit.jsonl"))
	appendN(t, l, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(sampleRecord(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
}

func TestOpenLocksFile(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock")
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	if l2, err := Open(path, nil); err == nil {
		l2.Close()
		t.Fatal("second Open of a locked log succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l3, _ := openTest(t, path) // lock released by Close
	l3.Close()
}

func TestWriteFailureIsSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	appendN(t, l, 2)
	l.f.Close() // pull the file out from under the log
	if _, err := l.Append(sampleRecord(2)); err == nil {
		t.Fatal("Append on a closed file succeeded")
	}
	if _, err := l.Append(sampleRecord(3)); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("second Append = %v, want sticky error", err)
	}
	if h, n := l.Head(); n != 2 || h == GenesisPrev {
		t.Errorf("Head after failure = %s, %d", h, n)
	}
	l.Close()
	// Reopening recovers: the two durable records are intact.
	l2, _ := openTest(t, path)
	appendN(t, l2, 1)
	l2.Close()
	if n, err := verifyFile(t, path); err != nil || n != 3 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestConcurrentAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	const workers, each = 32, 40
	var wg sync.WaitGroup
	hashes := make(chan string, workers*each)
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r := sampleRecord(i)
				r.QueueID = fmt.Sprintf("w%d-%d", w, i)
				got, err := l.Append(r)
				if err != nil {
					errs <- err
					return
				}
				if i%10 != 0 {
					hashes <- got.Hash
					continue
				}
				// Durable before return: the line is already in the file.
				data, err := os.ReadFile(path)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Contains(data, []byte(`"hash":"`+got.Hash+`"}`+"\n")) {
					errs <- fmt.Errorf("record %s not in file when Append returned", got.QueueID)
					return
				}
				hashes <- got.Hash
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	close(hashes)
	n, err := verifyFile(t, path)
	if err != nil || n != workers*each {
		t.Fatalf("Verify = %d, %v; want %d", n, err, workers*each)
	}
	seen := map[string]bool{}
	for _, line := range readLines(t, path) {
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		seen[r.Hash] = true
	}
	count := 0
	for h := range hashes {
		count++
		if !seen[h] {
			t.Errorf("returned hash %s not in the log", h)
		}
	}
	if count != workers*each {
		t.Errorf("%d hashes returned", count)
	}
}

// TestCloseWhileAppending: Close must let in-flight appends finish or fail
// cleanly, never lose a record that Append reported as written.
func TestCloseWhileAppending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, _ := openTest(t, path)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if _, err := l.Append(sampleRecord(i)); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Error(err)
					}
					return
				}
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	n, err := verifyFile(t, path)
	if err != nil || n != ok {
		t.Fatalf("Verify = %d, %v; %d appends succeeded", n, err, ok)
	}
}

func BenchmarkAppend(b *testing.B) {
	l, _ := openTest(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	defer l.Close()
	r := sampleRecord(1)
	b.ResetTimer()
	for b.Loop() {
		if _, err := l.Append(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkAppendParallel shows group commit: many appenders share fsyncs.
func BenchmarkAppendParallel(b *testing.B) {
	l, _ := openTest(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	defer l.Close()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := sampleRecord(1)
		for pb.Next() {
			if _, err := l.Append(r); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
