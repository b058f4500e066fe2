package tlsrpt

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func recordSome(c *Collector, domains ...string) {
	for _, d := range domains {
		c.Record(Result{Domain: d, PolicyType: PolicyNotFound, MXHost: "mx." + d, Success: true})
		c.Record(Result{Domain: d, PolicyType: PolicyNotFound, MXHost: "mx." + d, FailureType: StartTLSNotSupported})
	}
}

func TestSendDayOnceAndOnlyToPublishers(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: day1.Add(9 * time.Hour)}
	c := openT(t, dir, clk)
	recordSome(c, "wants.example", "silent.example", "bad.example")
	res := newResolver()
	res.set("_smtp._tls.wants.example", "v=TLSRPTv1; rua=mailto:r@wants.example")
	res.set("_smtp._tls.bad.example", "v=TLSRPTv1; rua=gopher://x")
	box := &outbox{}
	s := testSender(res, box)
	ctx := context.Background()

	if err := c.SendDay(ctx, s, day1); err == nil || !strings.Contains(err.Error(), "not over") {
		t.Errorf("sending the current day: %v", err)
	}
	clk.set(day1.Add(26 * time.Hour))
	if err := c.SendDay(ctx, s, day1.Add(5*time.Hour)); err != nil {
		t.Fatal(err)
	}
	msgs := box.all()
	if len(msgs) != 1 || msgs[0].to[0] != "r@wants.example" {
		t.Fatalf("queued %d mails: %+v", len(msgs), msgs)
	}
	if c.Aggregate(day1, "wants.example") != nil {
		t.Error("the day's data was not dropped")
	}
	if err := c.SendDay(ctx, s, day1); err != nil || len(box.all()) != 1 {
		t.Errorf("second SendDay: %v, %d mails", err, len(box.all()))
	}
	// The sent mark survives a restart.
	c2 := openT(t, dir, clk)
	if err := c2.SendDay(ctx, s, day1); err != nil || len(box.all()) != 1 {
		t.Errorf("SendDay after restart: %v, %d mails", err, len(box.all()))
	}
	// A day without data sends nothing.
	if err := c2.SendDay(ctx, s, day1.Add(-24*time.Hour)); err != nil || len(box.all()) != 1 {
		t.Errorf("empty day: %v", err)
	}
}

func TestSendDayRetriesFailedDomains(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: day1.Add(9 * time.Hour)}
	c := openT(t, dir, clk)
	recordSome(c, "a.example", "b.example", "c.example")
	res := newResolver()
	res.set("_smtp._tls.a.example", "v=TLSRPTv1; rua=mailto:r@a.example")
	res.set("_smtp._tls.b.example", "v=TLSRPTv1; rua=mailto:r@b.example")
	res.fail["_smtp._tls.c.example"] = true
	box := &outbox{}
	s := testSender(res, box)
	clk.set(day1.Add(26 * time.Hour))
	ctx := context.Background()
	err := c.SendDay(ctx, s, day1)
	if err == nil || !strings.Contains(err.Error(), "c.example") {
		t.Fatalf("SendDay with a DNS failure: %v", err)
	}
	if n := len(box.all()); n != 2 {
		t.Fatalf("%d mails, want 2", n)
	}
	if c.Aggregate(day1, "c.example") == nil {
		t.Fatal("failed domain's data dropped")
	}
	// Restart, DNS back, queue broken for a moment, then fine: only
	// c.example is sent, once.
	res.mu.Lock()
	res.fail = map[string]bool{}
	res.mu.Unlock()
	res.set("_smtp._tls.c.example", "v=TLSRPTv1; rua=mailto:r@c.example")
	c2 := openT(t, dir, clk)
	box.err = errors.New("queue full")
	if err := c2.SendDay(ctx, s, day1); err == nil {
		t.Error("no error when the queue refuses")
	}
	box.err = nil
	if err := c2.SendDay(ctx, s, day1); err != nil {
		t.Fatal(err)
	}
	msgs := box.all()
	if len(msgs) != 3 || msgs[2].to[0] != "r@c.example" {
		t.Errorf("mails: %d, last to %v", len(msgs), msgs[len(msgs)-1].to)
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: day1.Add(9 * time.Hour)}
	c := openT(t, dir, clk)
	c.Tick = 5 * time.Millisecond
	res := newResolver()
	res.set("_smtp._tls.a.example", "v=TLSRPTv1; rua=mailto:r@a.example")
	box := &outbox{}
	s := testSender(res, box)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, s); close(done) }()

	recordSome(c, "a.example")
	time.Sleep(50 * time.Millisecond)
	if len(box.all()) != 0 {
		t.Fatal("report sent before the day ended")
	}
	// Today's counts are flushed by Run: a new collector sees them.
	if a := openT(t, dir, clk).Aggregate(day1, "a.example"); a == nil || a.Policies[0].Success != 1 {
		t.Fatalf("not flushed: %+v", a)
	}
	clk.set(day1.Add(24*time.Hour + DefaultMaxDelay)) // past any delay
	deadline := time.Now().Add(5 * time.Second)
	for len(box.all()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond)
	if n := len(box.all()); n != 1 {
		t.Fatalf("%d reports sent by Run, want 1", n)
	}
	c.Record(Result{Domain: "a.example", PolicyType: PolicyNotFound, MXHost: "mx", Success: true}) // day 2
	cancel()
	<-done
	if a := openT(t, dir, clk).Aggregate(day1.Add(24*time.Hour), "a.example"); a == nil {
		t.Error("final flush missing")
	}
}

func TestRunGivesUp(t *testing.T) {
	clk := &clock{now: day1.Add(9 * time.Hour)}
	c := openT(t, t.TempDir(), clk)
	recordSome(c, "a.example")
	res := newResolver()
	res.fail["_smtp._tls.a.example"] = true
	s := testSender(res, &outbox{})
	clk.set(day1.Add(24*time.Hour + DefaultMaxDelay))
	c.step(context.Background(), s)
	if c.Aggregate(day1, "a.example") == nil {
		t.Fatal("dropped after one failure")
	}
	c.step(context.Background(), s) // within retryInterval: no attempt
	res.mu.Lock()
	n := res.n
	res.mu.Unlock()
	if n != 1 {
		t.Errorf("%d look-ups, want 1 (retry only after an hour)", n)
	}
	clk.set(day1.Add(24*time.Hour + giveUpAfter + 2*time.Hour))
	c.step(context.Background(), s)
	if c.Aggregate(day1, "a.example") != nil || len(c.pendingDays(clk.Now())) != 0 {
		t.Error("day kept past giveUpAfter")
	}
}
