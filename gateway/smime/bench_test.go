package smime_test

import (
	"bytes"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/smime"
)

// heapPeak samples live heap objects every millisecond until stopped.
type heapPeak struct {
	stop chan struct{}
	done sync.WaitGroup
	base uint64 // live heap when sampling started
	peak uint64
}

const heapMetric = "/memory/classes/heap/objects:bytes"

func startHeapPeak() *heapPeak {
	h := &heapPeak{stop: make(chan struct{})}
	s := []metrics.Sample{{Name: heapMetric}}
	metrics.Read(s)
	h.base = s[0].Value.Uint64()
	h.peak = h.base
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
				metrics.Read(s)
				h.peak = max(h.peak, s[0].Value.Uint64())
			}
		}
	}()
	return h
}

func (h *heapPeak) Stop() uint64 {
	close(h.stop)
	h.done.Wait()
	return h.peak
}

// TestMemoryBound: encrypting allocates a small multiple of the message
// size (pkcs7 needs the plaintext whole and copies it while marshalling),
// and the output is streamed, not buffered.
func TestMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~100 MB")
	}
	p := newPKI(t)
	m := makeMessage(t, 16<<20)
	size := uint64(len(m.raw))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := smime.Encrypt(io.Discard, bytes.NewReader(m.raw), p.bob.Cert, smime.Options{}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("message %d MB: allocated %.1f MB (%.2f× the message)", size>>20, float64(alloc)/(1<<20), float64(alloc)/float64(size))
	if alloc > 11*size/2 {
		t.Errorf("allocated %d bytes for a %d-byte message: more than 5.5×", alloc, size)
	}
}

func benchmarkEncrypt(b *testing.B, attach int) {
	p := newPKI(b)
	m := makeMessage(b, attach)
	enc := func() {
		if err := smime.Encrypt(io.Discard, bytes.NewReader(m.raw), p.bob.Cert, smime.Options{}); err != nil {
			b.Fatal(err)
		}
	}
	// Memory of one encryption from a collected heap: the peak of live
	// heap objects above the baseline (which holds the message itself).
	runtime.GC()
	peak := startHeapPeak()
	enc()
	pk := peak.Stop()

	b.SetBytes(int64(len(m.raw)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		enc()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enc/s")
	b.ReportMetric(float64(len(m.raw))/(1<<20), "msg-MB")
	if len(m.raw) >= 1<<20 { // shorter runs fall between two 1 ms samples
		b.ReportMetric(float64(pk-peak.base)/(1<<20), "peak-extra-MB")
		b.ReportMetric(float64(pk-peak.base)/float64(len(m.raw)), "peak-extra/msg")
	}
}

// BenchmarkEncrypt10KB: throughput for a typical message.
func BenchmarkEncrypt10KB(b *testing.B) { benchmarkEncrypt(b, 7<<10) }

// BenchmarkEncrypt10MB: throughput for a large attachment.
func BenchmarkEncrypt10MB(b *testing.B) { benchmarkEncrypt(b, 7<<20+300<<10) }

// BenchmarkEncrypt50MB: memory for a 50 MB message. peak-extra-MB is the
// heap's peak during one encryption above the baseline that already holds
// the message (the caller's copy); B/op is what one encryption allocates.
func BenchmarkEncrypt50MB(b *testing.B) { benchmarkEncrypt(b, 36<<20+512<<10) }
