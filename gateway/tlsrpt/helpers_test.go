package tlsrpt

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// fakeResolver answers TXT look-ups from a map; other look-ups fail.
type fakeResolver struct {
	mu   sync.Mutex
	txt  map[string][]string
	fail map[string]bool // temporary failure
	n    int
}

func newResolver() *fakeResolver {
	return &fakeResolver{txt: map[string][]string{}, fail: map[string]bool{}}
}

func (f *fakeResolver) set(name string, txt ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txt[strings.ToLower(name)] = txt
}

func (f *fakeResolver) LookupTXT(_ context.Context, name string) ([]string, dnsr.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	name = strings.ToLower(name)
	if f.fail[name] {
		return nil, dnsr.Result{}, &dnsr.Error{Name: name, Kind: dnsr.Temporary}
	}
	if t, ok := f.txt[name]; ok {
		return t, dnsr.Result{}, nil
	}
	return nil, dnsr.Result{}, &dnsr.Error{Name: name, Kind: dnsr.NotFound}
}

func (f *fakeResolver) LookupMX(context.Context, string) ([]dnsr.MX, dnsr.Result, error) {
	return nil, dnsr.Result{}, &dnsr.Error{Kind: dnsr.Permanent}
}

func (f *fakeResolver) LookupIP(context.Context, string) ([]netip.Addr, dnsr.Result, error) {
	return nil, dnsr.Result{}, &dnsr.Error{Kind: dnsr.Permanent}
}

func (f *fakeResolver) LookupTLSA(context.Context, int, string) ([]dnsr.TLSA, dnsr.Result, error) {
	return nil, dnsr.Result{}, &dnsr.Error{Kind: dnsr.Permanent}
}

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// outbox captures enqueued mails.
type outbox struct {
	mu   sync.Mutex
	msgs []queued
	err  error
}

type queued struct {
	from string
	to   []string
	msg  []byte
}

func (o *outbox) enqueue(from string, to []string, msg []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	o.msgs = append(o.msgs, queued{from, append([]string(nil), to...), append([]byte(nil), msg...)})
	return nil
}

func (o *outbox) all() []queued {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]queued(nil), o.msgs...)
}

var day1 = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

func openT(t *testing.T, dir string, clk *clock) *Collector {
	t.Helper()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Now = clk.Now
	return c
}
