package pgpmime

import (
	"bytes"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"
)

// genMessage produces a message of about size octets without holding it:
// a header, then CRLF text lines.
type genMessage struct {
	header []byte
	line   []byte
	left   int
	off    int
}

func newGenMessage(size int) *genMessage {
	return &genMessage{
		header: []byte("From: a@example.org\r\nTo: b@x.example\r\nSubject: big\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"),
		line:   []byte("The quick brown fox jumps over the lazy dog, again and again and again.\r\n"),
		left:   size,
	}
}

func (g *genMessage) Read(p []byte) (int, error) {
	n := 0
	if len(g.header) > 0 {
		n = copy(p, g.header)
		g.header = g.header[n:]
		return n, nil
	}
	if g.left <= 0 {
		return 0, io.EOF
	}
	for n < len(p) && g.left > 0 {
		c := copy(p[n:min(len(p), n+g.left)], g.line[g.off:])
		g.off = (g.off + c) % len(g.line)
		n += c
		g.left -= c
	}
	return n, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestStreamingMemory encrypts a 100 MB message and checks that the heap
// never grows by more than 32 MiB: the message is streamed, not held.
func TestStreamingMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MB encryption skipped with -short")
	}
	const size = 100 << 20
	key := newEntity(t, nil)
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	out := &countWriter{}
	start := time.Now()
	err := Encrypt(out, newGenMessage(size), key, Options{})
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	growth := int64(peak) - int64(base.HeapAlloc)
	t.Logf("100 MiB in %v (%.0f MB/s); output %d bytes; heap before %.1f MiB, peak %.1f MiB (growth %.1f MiB)",
		elapsed, float64(size)/elapsed.Seconds()/1e6, out.n, mib(base.HeapAlloc), mib(peak), float64(growth)/(1<<20))
	if out.n < size*4/3 {
		t.Errorf("output %d bytes, expected more than %d", out.n, size*4/3)
	}
	if growth > 32<<20 {
		t.Errorf("heap grew by %.1f MiB while encrypting 100 MiB", float64(growth)/(1<<20))
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

func benchmarkEncrypt(b *testing.B, size int) {
	key := newEntity(b, nil)
	var msg bytes.Buffer
	io.Copy(&msg, newGenMessage(size))
	data := msg.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := Encrypt(io.Discard, bytes.NewReader(data), key, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkEncrypt10KB(b *testing.B) { benchmarkEncrypt(b, 10<<10) }
func BenchmarkEncrypt10MB(b *testing.B) { benchmarkEncrypt(b, 10<<20) }
