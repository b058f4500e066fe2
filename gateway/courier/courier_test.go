package courier

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/policy"
)

// testTransport stands in for deliver.Transport: these tests are about
// orchestration (decisions, grouping, fall-through, bounces), not SMTP,
// which gateway/deliver tests against real receivers. fn answers each
// request; every request is recorded.
type testTransport struct {
	mu   sync.Mutex
	reqs []*deliver.Request
	fn   func(ctx context.Context, req *deliver.Request) []deliver.Result
}

func (tt *testTransport) Deliver(ctx context.Context, req *deliver.Request) []deliver.Result {
	tt.mu.Lock()
	tt.reqs = append(tt.reqs, req)
	tt.mu.Unlock()
	return tt.fn(ctx, req)
}

func (tt *testTransport) requests() []*deliver.Request {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return slices.Clone(tt.reqs)
}

// answer makes every recipient of a request get outcome o.
func answer(o deliver.Outcome, status, resp string) func(context.Context, *deliver.Request) []deliver.Result {
	return func(_ context.Context, req *deliver.Request) []deliver.Result {
		out := make([]deliver.Result, len(req.Rcpts))
		for i, r := range req.Rcpts {
			out[i] = deliver.Result{Rcpt: r.Addr, Outcome: o, Status: status, Response: resp, MX: "mx1." + req.Domain}
		}
		return out
	}
}

// testChecker says which methods are available, as the gateway's checker
// would; tls is "decided at delivery".
type testChecker map[string]bool

func (c testChecker) Available(_ context.Context, method, _ string) (bool, string) {
	if method == policy.TLS {
		return true, "decided at delivery"
	}
	if c[method] {
		return true, method + " ok"
	}
	return false, method + " not available"
}

type fixture struct {
	t        *testing.T
	qdir     string
	q        *queue.Queue
	audit    *audit.Log
	auditLog string
	m        *metrics.Metrics
	tt       *testTransport
	c        *Courier
}

var testRetry = []time.Duration{time.Minute, 5 * time.Minute}

func newFixture(t *testing.T, policyYAML string, checker policy.Checker) *fixture {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(filepath.Join(dir, "queue"), log)
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	al, err := audit.Open(auditPath, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	pol := policy.Default()
	if policyYAML != "" {
		pol, err = policy.Parse([]byte(policyYAML), "policy.yaml")
		if err != nil {
			t.Fatal(err)
		}
	}
	m := metrics.New(q)
	tt := &testTransport{fn: answer(deliver.Delivered, "2.0.0", "250 2.0.0 OK")}
	c := &Courier{Queue: q, Transport: tt, Policy: policy.NewHolder(pol), Checker: checker, Audit: al,
		Metrics: m, Hostname: "gw.example.org", Retry: testRetry, MaxAge: 120 * time.Hour, PerDestination: 4, Log: log}
	return &fixture{t: t, qdir: filepath.Join(dir, "queue"), q: q, audit: al, auditLog: auditPath, m: m, tt: tt, c: c}
}

const testMessage = "From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: quarterly\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n"

// enqueue commits a message from sender to rcpts.
func (f *fixture) enqueue(env queue.Envelope, rcpts ...*queue.Recipient) *queue.Item {
	f.t.Helper()
	w, err := f.q.NewMessage()
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := io.WriteString(w, testMessage); err != nil {
		f.t.Fatal(err)
	}
	it, err := w.Commit(env, rcpts, "<m1@example.org>", "127.0.0.1")
	if err != nil {
		f.t.Fatal(err)
	}
	return it
}

func rcpts(addrs ...string) []*queue.Recipient {
	out := make([]*queue.Recipient, len(addrs))
	for i, a := range addrs {
		out[i] = &queue.Recipient{Addr: a}
	}
	return out
}

// onDisk reads an item's metadata as committed to disk.
func (f *fixture) onDisk(id string) *queue.Item {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.qdir, "meta", id+".json"))
	if err != nil {
		f.t.Fatal(err)
	}
	var it queue.Item
	if err := json.Unmarshal(b, &it); err != nil {
		f.t.Fatal(err)
	}
	return &it
}

// records returns the audit records matching q, after checking the chain.
func (f *fixture) records(q audit.Query) []audit.Record {
	f.t.Helper()
	fh, err := os.Open(f.auditLog)
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	if _, err := audit.Verify(fh); err != nil {
		f.t.Fatalf("audit chain: %v", err)
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		f.t.Fatal(err)
	}
	var out []audit.Record
	err = audit.Search(fh, q, func(r audit.Record) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// dsns returns the queued items other than the given ones: the DSNs.
func (f *fixture) dsns(exclude ...string) []*queue.Item {
	f.t.Helper()
	var out []*queue.Item
	for _, id := range f.q.Items() {
		if !slices.Contains(exclude, id) {
			out = append(out, f.onDisk(id))
		}
	}
	return out
}

func (f *fixture) body(id string) string {
	f.t.Helper()
	r, err := f.q.OpenBody(id)
	if err != nil {
		f.t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

// metric returns the value of the counter name with the given label
// values (in the family's label order), as scraped from the registry.
func (f *fixture) metric(name string, values ...string) float64 {
	f.t.Helper()
	fams, err := f.m.Registry.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetValue())
			}
			if slices.Equal(got, values) {
				return m.GetCounter().GetValue()
			}
		}
	}
	f.t.Fatalf("no series %s%q", name, values)
	return 0
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDeliveredAndDecisionRecorded(t *testing.T) {
	f := newFixture(t, "methods: [smime, tls, portal]\n", testChecker{})
	f.tt.fn = func(_ context.Context, req *deliver.Request) []deliver.Result {
		out := answer(deliver.Delivered, "2.0.0", "250 2.0.0 OK")(context.Background(), req)
		for i := range out {
			out[i].TLS = &deliver.TLSState{Version: "TLS1.3", Cipher: "TLS_AES_128_GCM_SHA256", Verified: true, Policy: "pkix"}
		}
		return out
	}
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("bob@dest.test")...)
	f.c.Process(ctxT(t), it)

	if got := it.Rcpts[0]; got.State != queue.Delivered || got.Method != policy.TLS || got.Rule != "default" ||
		got.LastMX != "mx1.dest.test" || got.Status != "2.0.0" || got.TLSLevel != policy.TLSVerify {
		t.Errorf("recipient %+v", got)
	}
	dec := f.records(audit.Query{Event: audit.EventDecision})
	if len(dec) != 1 {
		t.Fatalf("%d decision records, want 1", len(dec))
	}
	d := dec[0]
	wantConsidered := []audit.Considered{
		{Method: "smime", OK: false, Reason: "smime not available"},
		{Method: "tls", OK: true, Reason: "decided at delivery"},
		{Method: "portal", OK: false, Reason: "portal not available"},
	}
	if d.QueueID != it.ID || d.MessageID != "<m1@example.org>" || d.From != "alice@example.org" || d.Rcpt != "bob@dest.test" ||
		d.Rule != "default" || d.Method != "tls" || d.Reason != "decided at delivery" || !slices.Equal(d.Considered, wantConsidered) {
		t.Errorf("decision record %+v", d)
	}
	del := f.records(audit.Query{Event: audit.EventDelivery})
	if len(del) != 1 {
		t.Fatalf("%d delivery records, want 1", len(del))
	}
	r := del[0]
	if r.Result != "delivered" || r.Method != "tls" || r.MX != "mx1.dest.test" || r.Response != "250 2.0.0 OK" ||
		r.TLS == nil || r.TLS.Version != "TLS1.3" || !r.TLS.Verified || r.TLS.Policy != "pkix" {
		t.Errorf("delivery record %+v (tls %+v)", r, r.TLS)
	}
	if v := f.metric("postern_decisions_total", "tls"); v != 1 {
		t.Errorf("postern_decisions_total{method=tls} = %v", v)
	}
	if v := f.metric("postern_deliveries_total", "tls", "delivered"); v != 1 {
		t.Errorf("postern_deliveries_total{tls,delivered} = %v", v)
	}
	if n := len(f.records(audit.Query{Event: audit.EventBounce})); n != 0 {
		t.Errorf("%d bounce records", n)
	}
}

// The request carries the envelope, the recipients' DSN parameters, the
// TLS level the policy requires, and the queued body.
func TestRequestBuilt(t *testing.T) {
	f := newFixture(t, "methods: [tls]\ntls: {level: encrypt}\ndomains:\n  partner.test: {tls: dane}\n", testChecker{})
	it := f.enqueue(queue.Envelope{From: "alice@example.org", UTF8: true, Ret: "HDRS", EnvID: "env-1"},
		&queue.Recipient{Addr: "b@dest.test", Notify: []string{"FAILURE"}, ORCPT: "rfc822;b@dest.test"},
		&queue.Recipient{Addr: "c@Dest.test"},
		&queue.Recipient{Addr: "d@partner.test"})
	f.c.Process(ctxT(t), it)
	reqs := f.tt.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2 (one per domain)", len(reqs))
	}
	byDomain := map[string]*deliver.Request{}
	for _, r := range reqs {
		byDomain[r.Domain] = r
	}
	r := byDomain["dest.test"]
	if r == nil || r.QueueID != it.ID || r.From != "alice@example.org" || r.TLSLevel != deliver.LevelEncrypt ||
		r.Params != (deliver.MailParams{Size: it.Size, UTF8: true, Ret: "HDRS", EnvID: "env-1"}) ||
		len(r.Rcpts) != 2 || r.Rcpts[0].Addr != "b@dest.test" || !slices.Equal(r.Rcpts[0].Notify, []string{"FAILURE"}) ||
		r.Rcpts[0].ORCPT != "rfc822;b@dest.test" || r.Rcpts[1].Addr != "c@Dest.test" {
		t.Fatalf("dest.test request %+v", r)
	}
	body, err := r.Open()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	body.Close()
	if string(b) != testMessage {
		t.Errorf("body %q", b)
	}
	// The domain's requirement raises the level; it is never lowered to
	// something the transport would treat as weaker.
	if p := byDomain["partner.test"]; p == nil || p.TLSLevel != policy.TLSDANE {
		t.Errorf("partner.test request %+v, want TLS level dane", p)
	}
}

func TestDecisionWrittenOnce(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = answer(deliver.Temporary, "4.4.1", "connection refused")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test", "c@dest.test")...)
	f.c.Process(ctxT(t), it)

	// Not due yet: nothing happens.
	f.c.Process(ctxT(t), it)
	if n := len(f.tt.requests()); n != 1 {
		t.Fatalf("%d transport calls, want 1 (second run was not due)", n)
	}

	later := time.Now().Add(time.Hour)
	f.c.Now = func() time.Time { return later }
	f.c.Process(ctxT(t), it)
	if n := len(f.tt.requests()); n != 2 {
		t.Fatalf("%d transport calls, want 2", n)
	}
	for _, rcpt := range []string{"b@dest.test", "c@dest.test"} {
		if n := len(f.records(audit.Query{Event: audit.EventDecision, Rcpt: rcpt})); n != 1 {
			t.Errorf("%s: %d decision records, want 1", rcpt, n)
		}
		if n := len(f.records(audit.Query{Event: audit.EventDelivery, Rcpt: rcpt})); n != 2 {
			t.Errorf("%s: %d delivery records, want 2", rcpt, n)
		}
	}
	disk := f.onDisk(it.ID)
	for _, r := range disk.Rcpts {
		if r.Attempts != 2 || r.State != queue.Pending || !r.Decided || r.LastError != "connection refused" {
			t.Errorf("on disk %+v", r)
		}
	}
	if v := f.metric("postern_decisions_total", "tls"); v != 2 {
		t.Errorf("postern_decisions_total{tls} = %v, want 2 (one per recipient)", v)
	}
}

func TestAttemptBookedBeforeTransport(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	start := time.Now()
	var it *queue.Item
	called := false
	f.tt.fn = func(ctx context.Context, req *deliver.Request) []deliver.Result {
		called = true
		disk := f.onDisk(it.ID)
		r := disk.Rcpts[0]
		if r.Attempts != 1 {
			t.Errorf("attempts on disk during delivery = %d, want 1", r.Attempts)
		}
		if !r.NextAttempt.After(start.Add(testRetry[0]-time.Second)) || r.LastAttempt.Before(start) {
			t.Errorf("next attempt on disk %v (last %v), want about %v after %v", r.NextAttempt, r.LastAttempt, testRetry[0], start)
		}
		if !r.Decided || r.Method != "tls" {
			t.Errorf("decision not saved before delivery: %+v", r)
		}
		return answer(deliver.Temporary, "4.4.1", "refused")(ctx, req)
	}
	it = f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	f.c.Process(ctxT(t), it)
	if !called {
		t.Fatal("transport not called")
	}
	// The second attempt follows the schedule's second step.
	later := start.Add(2 * time.Minute)
	f.c.Now = func() time.Time { return later }
	f.tt.fn = func(ctx context.Context, req *deliver.Request) []deliver.Result {
		r := f.onDisk(it.ID).Rcpts[0]
		if r.Attempts != 2 || !r.NextAttempt.Equal(later.Add(testRetry[1])) {
			t.Errorf("second attempt booked as %d at %v, want 2 at %v", r.Attempts, r.NextAttempt, later.Add(testRetry[1]))
		}
		return answer(deliver.Temporary, "4.4.1", "refused")(ctx, req)
	}
	f.c.Process(ctxT(t), it)
	if n := len(f.tt.requests()); n != 2 {
		t.Errorf("%d transport calls, want 2", n)
	}
}

func TestBackoff(t *testing.T) {
	c := &Courier{Retry: []time.Duration{time.Minute, 5 * time.Minute, time.Hour}}
	for n, want := range map[int]time.Duration{1: time.Minute, 2: 5 * time.Minute, 3: time.Hour, 4: time.Hour, 50: time.Hour} {
		if got := c.backoff(n); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
	if got := (&Courier{}).backoff(1); got <= 0 {
		t.Errorf("backoff with no schedule = %v", got)
	}
}

func TestTLSUnavailableDefers(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{"portal": true})
	f.tt.fn = answer(deliver.TLSUnavailable, "4.7.5", "mx1.dest.test does not offer STARTTLS; TLS level verify required")
	start := time.Now()
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	f.c.Process(ctxT(t), it)

	r := f.onDisk(it.ID).Rcpts[0]
	if r.State != queue.Pending || !r.NextAttempt.After(start) || r.Method != "tls" || !strings.Contains(r.LastError, "STARTTLS") {
		t.Errorf("recipient %+v, want pending with a future next attempt", r)
	}
	del := f.records(audit.Query{Event: audit.EventDelivery})
	if len(del) != 1 || del[0].Result != "deferred" || !strings.Contains(del[0].Reason, "TLS requirement not met") ||
		!strings.Contains(del[0].Reason, "STARTTLS") {
		t.Errorf("delivery records %+v", del)
	}
	if n := len(f.records(audit.Query{Event: audit.EventFallback})); n != 0 {
		t.Errorf("%d fallback records; the plan has no next method", n)
	}
	if n := len(f.records(audit.Query{Event: audit.EventBounce})); n != 0 || len(f.dsns(it.ID)) != 0 {
		t.Errorf("bounced: %d records", n)
	}
	if v := f.metric("postern_deliveries_total", "tls", "deferred"); v < 1 {
		t.Errorf("postern_deliveries_total{tls,deferred} = %v", v)
	}
}

func TestTLSUnavailableBounce(t *testing.T) {
	f := newFixture(t, `methods: [tls]
rules:
  - name: partner
    when: {recipient_domain: [dest.test]}
    methods: [tls]
    on_unavailable: bounce
`, testChecker{})
	f.tt.fn = answer(deliver.TLSUnavailable, "4.7.5", "certificate of mx1.dest.test not valid")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	f.c.Process(ctxT(t), it)

	if r := it.Rcpts[0]; r.State != queue.Bounced || r.Rule != "partner" {
		t.Errorf("recipient %+v, want bounced by rule partner", r)
	}
	if r := f.onDisk(it.ID).Rcpts[0]; r.State != queue.Bounced {
		t.Errorf("bounce not saved: %+v", r)
	}
	b := f.records(audit.Query{Event: audit.EventBounce})
	if len(b) != 1 || b[0].Result != "bounced" || !strings.HasPrefix(b[0].Reason, "5.7.10 ") {
		t.Errorf("bounce records %+v", b)
	}
	ds := f.dsns(it.ID)
	if len(ds) != 1 {
		t.Fatalf("%d DSNs queued, want 1", len(ds))
	}
	if ds[0].Envelope.From != "" || len(ds[0].Rcpts) != 1 || ds[0].Rcpts[0].Addr != "alice@example.org" {
		t.Errorf("DSN envelope %+v to %+v", ds[0].Envelope, ds[0].Rcpts)
	}
	if body := f.body(ds[0].ID); !strings.Contains(body, "Status: 5.7.10") || !strings.Contains(body, "b@dest.test") {
		t.Errorf("DSN body lacks status or recipient:\n%s", body)
	}
}

func TestFallThroughToPortal(t *testing.T) {
	f := newFixture(t, "methods: [tls, portal]\n", testChecker{"portal": true})
	f.tt.fn = answer(deliver.TLSUnavailable, "4.7.5", "mx1.dest.test does not offer STARTTLS")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	before := f.metric("postern_fallbacks_total", "tls", "portal")
	f.c.Process(ctxT(t), it)

	if v := f.metric("postern_fallbacks_total", "tls", "portal") - before; v != 1 {
		t.Errorf("postern_fallbacks_total{from=tls,to=portal} went up by %v, want 1", v)
	}
	fb := f.records(audit.Query{Event: audit.EventFallback})
	if len(fb) != 1 {
		t.Fatalf("%d fallback records, want 1", len(fb))
	}
	r := fb[0]
	if r.Rcpt != "b@dest.test" || r.Method != "portal" || r.Rule != "default" ||
		!strings.Contains(r.Reason, "tls -> portal") || !strings.Contains(r.Reason, "STARTTLS") {
		t.Errorf("fallback record %+v", r)
	}
	last := r.Considered[len(r.Considered)-1]
	if len(r.Considered) < 2 || last.Method != "portal" || !last.OK {
		t.Errorf("considered %+v, want tls refused then portal ok", r.Considered)
	}
	rc := f.onDisk(it.ID).Rcpts[0]
	if rc.Method != "portal" || rc.State != queue.Pending {
		t.Errorf("recipient on disk %+v, want pending with method portal", rc)
	}
	// At once, not after the backoff.
	if rc.NextAttempt.After(time.Now()) {
		t.Errorf("next attempt %v is in the future; a fall-through goes at once", rc.NextAttempt)
	}
	if len(f.dsns(it.ID)) != 0 {
		t.Error("DSN queued on fall-through")
	}
}

func TestNoFallThroughOnTemporary(t *testing.T) {
	f := newFixture(t, "methods: [tls, portal]\n", testChecker{"portal": true})
	f.tt.fn = answer(deliver.Temporary, "4.4.1", "connection refused")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	f.c.Process(ctxT(t), it)
	if n := len(f.records(audit.Query{Event: audit.EventFallback})); n != 0 {
		t.Errorf("%d fallback records on a temporary failure", n)
	}
	if r := it.Rcpts[0]; r.Method != "tls" || r.State != queue.Pending || !r.NextAttempt.After(time.Now()) {
		t.Errorf("recipient %+v", r)
	}
}

func TestPermanentBounces(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = func(_ context.Context, req *deliver.Request) []deliver.Result {
		var out []deliver.Result
		for _, r := range req.Rcpts {
			res := deliver.Result{Rcpt: r.Addr, MX: "mx1.dest.test", Outcome: deliver.Delivered, Status: "2.0.0", Response: "250 OK"}
			if strings.HasPrefix(r.Addr, "nobody@") {
				res.Outcome, res.Status, res.Response = deliver.Permanent, "5.1.1", "550 5.1.1 no such user here"
			}
			out = append(out, res)
		}
		return out
	}
	it := f.enqueue(queue.Envelope{From: "alice@example.org", EnvID: "env-7"},
		&queue.Recipient{Addr: "nobody@dest.test", ORCPT: "rfc822;nobody@dest.test"},
		&queue.Recipient{Addr: "ok@dest.test"})
	f.c.Process(ctxT(t), it)

	if it.Rcpts[0].State != queue.Bounced || it.Rcpts[1].State != queue.Delivered {
		t.Fatalf("states %s, %s", it.Rcpts[0].State, it.Rcpts[1].State)
	}
	b := f.records(audit.Query{Event: audit.EventBounce})
	if len(b) != 1 || b[0].Rcpt != "nobody@dest.test" || b[0].Result != "bounced" || !strings.Contains(b[0].Reason, "5.1.1") {
		t.Errorf("bounce records %+v", b)
	}
	del := f.records(audit.Query{Event: audit.EventDelivery, Rcpt: "nobody@dest.test"})
	if len(del) != 1 || del[0].Result != "bounced" || del[0].Response != "550 5.1.1 no such user here" {
		t.Errorf("delivery records %+v", del)
	}
	ds := f.dsns(it.ID)
	if len(ds) != 1 {
		t.Fatalf("%d DSNs, want 1", len(ds))
	}
	d := ds[0]
	if d.Envelope.From != "" || len(d.Rcpts) != 1 || d.Rcpts[0].Addr != "alice@example.org" || d.Rcpts[0].State != queue.Pending {
		t.Errorf("DSN item %+v rcpts %+v", d, d.Rcpts)
	}
	body := f.body(d.ID)
	for _, want := range []string{"multipart/report", "report-type=delivery-status", "Final-Recipient: rfc822; nobody@dest.test",
		"Status: 5.1.1", "Original-Envelope-Id: env-7", "no such user here", "Remote-MTA: dns; mx1.dest.test"} {
		if !strings.Contains(body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "ok@dest.test") {
		t.Error("DSN names the delivered recipient")
	}
	if v := f.metric("postern_deliveries_total", "tls", "bounced"); v != 1 {
		t.Errorf("postern_deliveries_total{tls,bounced} = %v", v)
	}
}

func TestNullSenderNoDSN(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = answer(deliver.Permanent, "5.1.1", "550 5.1.1 no such user")
	it := f.enqueue(queue.Envelope{From: ""}, rcpts("nobody@dest.test")...)
	f.c.Process(ctxT(t), it)
	if it.Rcpts[0].State != queue.Bounced {
		t.Fatalf("state %s", it.Rcpts[0].State)
	}
	if ds := f.dsns(it.ID); len(ds) != 0 {
		t.Errorf("%d DSNs queued for a bounce", len(ds))
	}
	b := f.records(audit.Query{Event: audit.EventBounce})
	if len(b) != 1 || !strings.Contains(b[0].Reason, "no DSN") {
		t.Errorf("bounce records %+v", b)
	}
}

func TestNotifyNeverNoDSN(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = answer(deliver.Permanent, "5.1.1", "550 5.1.1 no such user")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"},
		&queue.Recipient{Addr: "nobody@dest.test", Notify: []string{"NEVER"}})
	f.c.Process(ctxT(t), it)
	if ds := f.dsns(it.ID); len(ds) != 0 {
		t.Errorf("%d DSNs queued despite NOTIFY=NEVER", len(ds))
	}
	b := f.records(audit.Query{Event: audit.EventBounce})
	if len(b) != 1 || !strings.Contains(b[0].Reason, "NOTIFY") {
		t.Errorf("bounce records %+v", b)
	}
}

func TestTemporaryBeyondMaxAgeBounces(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = answer(deliver.Temporary, "4.4.1", "connect to mx1.dest.test: connection refused")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	late := it.Received.Add(f.c.MaxAge + time.Minute)
	f.c.Now = func() time.Time { return late }
	f.c.Process(ctxT(t), it)

	if it.Rcpts[0].State != queue.Bounced {
		t.Fatalf("state %s, want bounced", it.Rcpts[0].State)
	}
	del := f.records(audit.Query{Event: audit.EventDelivery})
	if len(del) != 1 || del[0].Result != "bounced" || !strings.Contains(del[0].Reason, "max_age") {
		t.Errorf("delivery records %+v", del)
	}
	ds := f.dsns(it.ID)
	if len(ds) != 1 {
		t.Fatalf("%d DSNs, want 1", len(ds))
	}
	// RFC 3464 §2.3.4: a failed action carries a permanent status.
	if body := f.body(ds[0].ID); !strings.Contains(body, "Status: 5.4.7") || !strings.Contains(body, "connection refused") {
		t.Errorf("DSN body:\n%s", body)
	}
}

// TLS unavailable with no next method and the message too old: bounce,
// not defer for ever.
func TestTLSUnavailableBeyondMaxAgeBounces(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.tt.fn = answer(deliver.TLSUnavailable, "4.7.5", "no STARTTLS")
	it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
	late := it.Received.Add(f.c.MaxAge + time.Minute)
	f.c.Now = func() time.Time { return late }
	f.c.Process(ctxT(t), it)
	if it.Rcpts[0].State != queue.Bounced || len(f.dsns(it.ID)) != 1 {
		t.Errorf("state %s, %d DSNs; want bounced with one DSN", it.Rcpts[0].State, len(f.dsns(it.ID)))
	}
}

func TestNoMethodAvailable(t *testing.T) {
	t.Run("defer", func(t *testing.T) {
		f := newFixture(t, "methods: [smime, pgp]\n", testChecker{})
		it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
		f.c.Process(ctxT(t), it)
		if n := len(f.tt.requests()); n != 0 {
			t.Errorf("%d transport calls; nothing may leave without a method", n)
		}
		r := it.Rcpts[0]
		if r.State != queue.Pending || r.Method != "" || !r.NextAttempt.After(time.Now()) {
			t.Errorf("recipient %+v, want pending", r)
		}
		dec := f.records(audit.Query{Event: audit.EventDecision})
		if len(dec) != 1 || dec[0].Method != "" || dec[0].Reason != "no method available" || len(dec[0].Considered) != 2 {
			t.Errorf("decision records %+v", dec)
		}
	})
	t.Run("bounce", func(t *testing.T) {
		f := newFixture(t, `methods: [tls]
rules:
  - name: secret
    when: {subject_contains: [quarterly]}
    methods: [smime, pgp]
    on_unavailable: bounce
`, testChecker{})
		it := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@dest.test")...)
		f.c.Process(ctxT(t), it)
		if n := len(f.tt.requests()); n != 0 {
			t.Errorf("%d transport calls", n)
		}
		if r := it.Rcpts[0]; r.State != queue.Bounced || r.Rule != "secret" {
			t.Errorf("recipient %+v, want bounced by rule secret", r)
		}
		if len(f.dsns(it.ID)) != 1 {
			t.Error("no DSN")
		}
	})
}

func TestPerDestinationLimit(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.c.PerDestination = 1
	var mu sync.Mutex
	inFlight, maxInFlight := map[string]int{}, map[string]int{}
	f.tt.fn = func(ctx context.Context, req *deliver.Request) []deliver.Result {
		mu.Lock()
		inFlight[req.Domain]++
		if inFlight[req.Domain] > maxInFlight[req.Domain] {
			maxInFlight[req.Domain] = inFlight[req.Domain]
		}
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		inFlight[req.Domain]--
		mu.Unlock()
		return answer(deliver.Delivered, "2.0.0", "250 OK")(ctx, req)
	}
	var items []*queue.Item
	for range 4 {
		items = append(items, f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@same.test")...))
	}
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Go(func() { f.c.Process(ctxT(t), it) })
	}
	wg.Wait()
	if maxInFlight["same.test"] != 1 {
		t.Errorf("%d deliveries to same.test at once, want 1", maxInFlight["same.test"])
	}
	for _, it := range items {
		if it.Rcpts[0].State != queue.Delivered {
			t.Errorf("%s: %s", it.ID, it.Rcpts[0].State)
		}
	}
}

// The limit is per domain: other domains are not held up.
func TestPerDestinationOtherDomainsProceed(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.c.PerDestination = 1
	arrived := make(chan string, 2)
	release := make(chan struct{})
	f.tt.fn = func(ctx context.Context, req *deliver.Request) []deliver.Result {
		arrived <- req.Domain
		<-release
		return answer(deliver.Delivered, "2.0.0", "250 OK")(ctx, req)
	}
	a := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@a.test")...)
	b := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@b.test")...)
	var wg sync.WaitGroup
	wg.Go(func() { f.c.Process(ctxT(t), a) })
	wg.Go(func() { f.c.Process(ctxT(t), b) })
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			close(release)
			wg.Wait()
			t.Fatal("deliveries to two domains did not run at the same time")
		}
	}
	close(release)
	wg.Wait()
}

// While waiting for a destination slot, a cancelled context gives up
// without delivering; the booked attempt stays.
func TestCancelWhileWaitingForDestination(t *testing.T) {
	f := newFixture(t, "methods: [tls]\n", testChecker{})
	f.c.PerDestination = 1
	entered := make(chan struct{})
	release := make(chan struct{})
	f.tt.fn = func(ctx context.Context, req *deliver.Request) []deliver.Result {
		close(entered)
		<-release
		return answer(deliver.Delivered, "2.0.0", "250 OK")(ctx, req)
	}
	a := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("b@same.test")...)
	b := f.enqueue(queue.Envelope{From: "alice@example.org"}, rcpts("c@same.test")...)
	var wg sync.WaitGroup
	wg.Go(func() { f.c.Process(ctxT(t), a) })
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.c.Process(ctx, b); close(done) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Process did not return after cancel")
	}
	close(release)
	wg.Wait()
	if n := len(f.tt.requests()); n != 1 {
		t.Errorf("%d transport calls, want 1", n)
	}
	r := f.onDisk(b.ID).Rcpts[0]
	if r.State != queue.Pending || r.Attempts != 1 || !r.NextAttempt.After(time.Now()) {
		t.Errorf("cancelled recipient %+v, want pending with its attempt booked", r)
	}
}

func TestToPermanent(t *testing.T) {
	for in, want := range map[string]string{"4.4.7": "5.4.7", "5.1.1": "5.1.1", "": "5.0.0", "4.7.5": "5.7.5"} {
		if got := toPermanent(in); got != want {
			t.Errorf("toPermanent(%q) = %q, want %q", in, got, want)
		}
	}
}
