package queue

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openQueue(t *testing.T, dir string) *Queue {
	t.Helper()
	q, err := Open(dir, discard())
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return q
}

// commit queues body for rcpts and returns the committed item.
func commit(t *testing.T, q *Queue, body string, rcpts ...string) *Item {
	t.Helper()
	w, err := q.NewMessage()
	if err != nil {
		t.Fatalf("NewMessage: %v", err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatalf("Write: %v", err)
	}
	var rs []*Recipient
	for _, r := range rcpts {
		rs = append(rs, &Recipient{Addr: r})
	}
	it, err := w.Commit(Envelope{From: "a@example.org"}, rs, "<m@example.org>", "127.0.0.1:1234")
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return it
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s): %v", dir, err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestCommitReopen(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	const body = "Subject: hi\r\n\r\nhello\r\n"
	it := commit(t, q, body, "b@x.example", "c@y.example")
	if it.Size != int64(len(body)) {
		t.Errorf("Size = %d, want %d", it.Size, len(body))
	}
	if got := len(it.Pending()); got != 2 {
		t.Fatalf("Pending = %d, want 2", got)
	}

	// One recipient done: it stays done after a restart.
	it.Rcpts[0].State = Delivered
	if err := q.Save(it); err != nil {
		t.Fatalf("Save: %v", err)
	}

	q2 := openQueue(t, dir)
	if got := q2.Items(); !slices.Equal(got, []string{it.ID}) {
		t.Fatalf("Items after reopen = %v, want [%s]", got, it.ID)
	}
	got := q2.items[it.ID]
	if got.Envelope.From != "a@example.org" || got.MessageID != "<m@example.org>" || got.Client != "127.0.0.1:1234" {
		t.Errorf("reloaded item = %+v", got)
	}
	p := got.Pending()
	if len(p) != 1 || p[0].Addr != "c@y.example" {
		t.Fatalf("pending after reopen = %+v, want only c@y.example", p)
	}
	f, err := q2.OpenBody(it.ID)
	if err != nil {
		t.Fatalf("OpenBody: %v", err)
	}
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil || string(b) != body {
		t.Fatalf("body = %q, %v; want %q", b, err, body)
	}
}

func TestLoadRemovesFinishedItems(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	it := commit(t, q, "x\r\n", "b@x.example", "c@y.example")
	it.Rcpts[0].State = Delivered
	it.Rcpts[1].State = Bounced
	if err := q.Save(it); err != nil {
		t.Fatalf("Save: %v", err)
	}
	q2 := openQueue(t, dir)
	if n := q2.Len(); n != 0 {
		t.Fatalf("Len after reopen = %d, want 0", n)
	}
	if exists(q.metaPath(it.ID)) || exists(q.msgPath(it.ID)) {
		t.Errorf("finished item's files still on disk: %v %v", dirNames(t, filepath.Join(dir, "meta")), dirNames(t, filepath.Join(dir, "msg")))
	}
}

func TestLoadRemovesUncommittedBody(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	kept := commit(t, q, "kept\r\n", "b@x.example")
	orphan := filepath.Join(dir, "msg", NewID(time.Now()))
	if err := os.WriteFile(orphan, []byte("never acknowledged"), 0o600); err != nil {
		t.Fatal(err)
	}
	q2 := openQueue(t, dir)
	if exists(orphan) {
		t.Errorf("body without metadata was not removed")
	}
	if q2.Len() != 1 || !exists(q.msgPath(kept.ID)) {
		t.Errorf("committed item lost: Len=%d", q2.Len())
	}
}

func TestLoadQuarantinesDamagedItems(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	good := commit(t, q, "good\r\n", "b@x.example")
	noBody := commit(t, q, "lost\r\n", "b@x.example")
	wrongID := commit(t, q, "wrong\r\n", "b@x.example")

	// Garbage JSON, with its body.
	const garbageID = "0000000000001deadbeefcafe"
	garbage := []byte("{this is not json")
	if err := os.WriteFile(q.metaPath(garbageID), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(q.msgPath(garbageID), []byte("body"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Metadata whose body has gone.
	if err := os.Remove(q.msgPath(noBody.ID)); err != nil {
		t.Fatal(err)
	}
	// Metadata naming another id.
	b, err := os.ReadFile(q.metaPath(wrongID.ID))
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(wrongID.ID), []byte("someoneelse"), 1)
	if err := os.WriteFile(q.metaPath(wrongID.ID), b, 0o600); err != nil {
		t.Fatal(err)
	}

	q2, err := Open(dir, discard())
	if err != nil {
		t.Fatalf("Open with damaged items: %v", err)
	}
	if got := q2.Items(); !slices.Equal(got, []string{good.ID}) {
		t.Fatalf("Items = %v, want only %s", got, good.ID)
	}
	corrupt := filepath.Join(dir, "corrupt")
	moved, err := os.ReadFile(filepath.Join(corrupt, garbageID+".json"))
	if err != nil || !bytes.Equal(moved, garbage) {
		t.Errorf("garbage metadata in corrupt/ = %q, %v; want it unchanged", moved, err)
	}
	if !exists(filepath.Join(corrupt, garbageID)) {
		t.Errorf("garbage item's body not moved to corrupt/")
	}
	for _, id := range []string{garbageID, noBody.ID, wrongID.ID} {
		if exists(q.metaPath(id)) {
			t.Errorf("damaged metadata %s left in meta/", id)
		}
		if !exists(filepath.Join(corrupt, id+".json")) {
			t.Errorf("damaged metadata %s not in corrupt/ (must never be deleted)", id)
		}
	}
	if !exists(filepath.Join(corrupt, wrongID.ID)) {
		t.Errorf("body of mismatched item not kept in corrupt/")
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	w, err := q.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "some data\r\n"); err != nil {
		t.Fatal(err)
	}
	if w.Size() != 11 {
		t.Errorf("Size = %d, want 11", w.Size())
	}
	w.Abort()
	w.Abort() // idempotent
	if _, err := w.Commit(Envelope{}, []*Recipient{{Addr: "b@x.example"}}, "", ""); err == nil {
		t.Errorf("Commit after Abort succeeded")
	}
	for _, sub := range []string{"tmp", "msg", "meta"} {
		if n := dirNames(t, filepath.Join(dir, sub)); len(n) != 0 {
			t.Errorf("%s/ after Abort = %v, want empty", sub, n)
		}
	}
	if q.Len() != 0 {
		t.Errorf("Len = %d after Abort", q.Len())
	}
}

func TestOpenCleansTmp(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	w, err := q.NewMessage() // a transaction cut short by a crash
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "half a message"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "x.json.1234"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	q2 := openQueue(t, dir)
	if n := dirNames(t, filepath.Join(dir, "tmp")); len(n) != 0 {
		t.Errorf("tmp/ after Open = %v, want empty", n)
	}
	if q2.Len() != 0 {
		t.Errorf("Len = %d, want 0", q2.Len())
	}
	w.Abort()
}

func TestCommitFailureLeavesNothing(t *testing.T) {
	for _, sub := range []string{"msg", "meta"} {
		t.Run(sub, func(t *testing.T) {
			dir := t.TempDir()
			q := openQueue(t, dir)
			// Replace the directory by a regular file: renaming into it
			// fails (even as root).
			p := filepath.Join(dir, sub)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			w, err := q.NewMessage()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(w, "x\r\n"); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Commit(Envelope{}, []*Recipient{{Addr: "b@x.example"}}, "", ""); err == nil {
				t.Fatalf("Commit succeeded with %s/ unusable", sub)
			}
			for _, d := range []string{"msg", "tmp"} {
				if d == sub {
					continue
				}
				if n := dirNames(t, filepath.Join(dir, d)); len(n) != 0 {
					t.Errorf("%s/ after failed Commit = %v, want empty", d, n)
				}
			}
			if q.Len() != 0 {
				t.Errorf("Len = %d after failed Commit", q.Len())
			}
		})
	}
}

func TestStats(t *testing.T) {
	q := openQueue(t, t.TempDir())
	if n, oldest := q.Stats(); n != 0 || !oldest.IsZero() {
		t.Fatalf("empty Stats = %d, %v", n, oldest)
	}
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	var clock atomic.Int64
	clock.Store(t0.UnixNano())
	q.now = func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	commit(t, q, "1\r\n", "b@x.example")
	clock.Add(int64(time.Minute))
	commit(t, q, "2\r\n", "b@x.example")
	n, oldest := q.Stats()
	if n != 2 || !oldest.Equal(t0) {
		t.Fatalf("Stats = %d, %v; want 2, %v", n, oldest, t0)
	}
}

func TestNewIDOrderedAndUnique(t *testing.T) {
	t0 := time.Now()
	a, b := NewID(t0), NewID(t0.Add(time.Millisecond))
	if a >= b {
		t.Errorf("ids not time-ordered: %s >= %s", a, b)
	}
	if c := NewID(t0); c == a {
		t.Errorf("two ids for the same instant are equal: %s", a)
	}
}

func TestWantsDSN(t *testing.T) {
	for _, tc := range []struct {
		notify []string
		kind   string
		want   bool
	}{
		{nil, "FAILURE", true},
		{nil, "DELAY", false},
		{nil, "SUCCESS", false},
		{[]string{"NEVER"}, "FAILURE", false},
		{[]string{"SUCCESS", "DELAY"}, "DELAY", true},
		{[]string{"success"}, "SUCCESS", true},
		{[]string{"SUCCESS"}, "FAILURE", false},
	} {
		r := &Recipient{Notify: tc.notify}
		if got := r.WantsDSN(tc.kind); got != tc.want {
			t.Errorf("Notify=%v WantsDSN(%s) = %v, want %v", tc.notify, tc.kind, got, tc.want)
		}
	}
}

// --- scheduler ---

type procFunc func(ctx context.Context, it *Item)

func (f procFunc) Process(ctx context.Context, it *Item) { f(ctx, it) }

// startRun runs q with p until the test ends; stop cancels the dispatch
// context and returns once Run has returned.
func startRun(t *testing.T, q *Queue, p Processor, concurrency int) (stop func(), done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	go func() {
		q.Run(ctx, context.Background(), p, concurrency)
		close(ch)
	}()
	stop = func() {
		cancel()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop, ch
}

// deliverAll marks every pending recipient delivered and saves.
func deliverAll(t *testing.T, q *Queue, it *Item) {
	for _, r := range it.Rcpts {
		if r.State == Pending {
			r.State = Delivered
		}
	}
	if err := q.Save(it); err != nil {
		t.Errorf("Save: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type call struct {
	id   string
	at   time.Time
	next time.Time // earliest pending NextAttempt when called
}

type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) add(it *Item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{id: it.ID, at: time.Now(), next: it.nextRun()})
}

func (r *recorder) get() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func TestRunProcessesAtNextAttempt(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	now := time.Now()
	late := commit(t, q, "late\r\n", "b@x.example")
	soon := commit(t, q, "soon\r\n", "b@x.example")
	due := commit(t, q, "due\r\n", "b@x.example")
	book := func(it *Item, at time.Time) {
		it.Rcpts[0].NextAttempt = at
		if err := q.Save(it); err != nil {
			t.Fatal(err)
		}
	}
	book(late, now.Add(300*time.Millisecond))
	book(soon, now.Add(100*time.Millisecond))
	book(due, now.Add(-time.Minute))

	q2 := openQueue(t, dir) // schedules from the saved NextAttempt
	var rec recorder
	startRun(t, q2, procFunc(func(_ context.Context, it *Item) {
		rec.add(it)
		deliverAll(t, q2, it)
	}), 1) // one at a time: dispatch order is processing order
	waitFor(t, "all items processed", func() bool { return q2.Len() == 0 })

	calls := rec.get()
	var order []string
	for _, c := range calls {
		order = append(order, c.id)
		if c.at.Before(c.next) {
			t.Errorf("item %s processed at %v, before its NextAttempt %v", c.id, c.at, c.next)
		}
	}
	if want := []string{due.ID, soon.ID, late.ID}; !slices.Equal(order, want) {
		t.Errorf("processing order = %v, want %v", order, want)
	}
	// Finished items leave the disk (just after they leave the map).
	for _, id := range []string{late.ID, soon.ID, due.ID} {
		waitFor(t, "files of "+id+" removed", func() bool { return !exists(q2.metaPath(id)) && !exists(q2.msgPath(id)) })
	}
}

func TestRunReschedulesAtBookedAttempt(t *testing.T) {
	q := openQueue(t, t.TempDir())
	it := commit(t, q, "x\r\n", "b@x.example")
	const delay = 150 * time.Millisecond
	var rec recorder
	startRun(t, q, procFunc(func(_ context.Context, it *Item) {
		rec.add(it)
		if it.Rcpts[0].Attempts == 0 {
			it.Rcpts[0].Attempts++
			it.Rcpts[0].NextAttempt = time.Now().Add(delay)
			if err := q.Save(it); err != nil {
				t.Error(err)
			}
			return
		}
		deliverAll(t, q, it)
	}), 1)
	waitFor(t, "item delivered", func() bool { return q.Len() == 0 })
	calls := rec.get()
	if len(calls) != 2 {
		t.Fatalf("Process called %d times, want 2", len(calls))
	}
	if calls[1].at.Before(calls[1].next) || calls[1].at.Sub(calls[0].at) < delay {
		t.Errorf("second attempt %v after the first, booked %v later", calls[1].at.Sub(calls[0].at), delay)
	}
	if calls[0].id != it.ID || calls[1].id != it.ID {
		t.Errorf("calls = %+v, want two for %s", calls, it.ID)
	}
}

func TestRunConcurrencyLimit(t *testing.T) {
	q := openQueue(t, t.TempDir())
	for range 8 {
		commit(t, q, "x\r\n", "b@x.example")
	}
	const limit = 3
	var inFlight, maxInFlight atomic.Int32
	release := make(chan struct{})
	startRun(t, q, procFunc(func(_ context.Context, it *Item) {
		n := inFlight.Add(1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		deliverAll(t, q, it)
		inFlight.Add(-1)
	}), limit)
	waitFor(t, "limit reached", func() bool { return inFlight.Load() == limit })
	// Every item is due; give the scheduler a chance to overrun the limit.
	time.Sleep(100 * time.Millisecond)
	if n := inFlight.Load(); n != limit {
		t.Errorf("in flight = %d, want %d", n, limit)
	}
	close(release)
	waitFor(t, "all delivered", func() bool { return q.Len() == 0 })
	if m := maxInFlight.Load(); m != limit {
		t.Errorf("max in flight = %d, want %d", m, limit)
	}
}

func TestRunSurvivesPanic(t *testing.T) {
	q := openQueue(t, t.TempDir())
	bad := commit(t, q, "bad\r\n", "b@x.example")
	const delay = 300 * time.Millisecond
	var rec recorder
	var booked atomic.Int64
	startRun(t, q, procFunc(func(_ context.Context, it *Item) {
		rec.add(it)
		if it.ID == bad.ID && it.Rcpts[0].Attempts == 0 {
			// Book the next attempt before trying, as Processors must.
			r := it.Rcpts[0]
			r.Attempts++
			r.NextAttempt = time.Now().Add(delay)
			booked.Store(r.NextAttempt.UnixNano())
			if err := q.Save(it); err != nil {
				t.Error(err)
			}
			panic("processor bug")
		}
		deliverAll(t, q, it)
	}), 2)
	waitFor(t, "first attempt", func() bool { return booked.Load() != 0 })

	// The scheduler keeps dispatching other items after the panic.
	good := commit(t, q, "good\r\n", "c@y.example")
	waitFor(t, "other item delivered", func() bool { return !slices.Contains(q.Items(), good.ID) })
	waitFor(t, "panicking item retried and delivered", func() bool { return q.Len() == 0 })
	var badCalls []call
	for _, c := range rec.get() {
		if c.id == bad.ID {
			badCalls = append(badCalls, c)
		}
	}
	if len(badCalls) != 2 {
		t.Fatalf("panicking item processed %d times, want 2 (no tight loop)", len(badCalls))
	}
	// Retried at its booked attempt, not in a tight loop.
	if badCalls[1].at.UnixNano() < booked.Load() {
		t.Errorf("retried at %v, before the booked %v", badCalls[1].at, time.Unix(0, booked.Load()))
	}
}

func TestRunCancelWaitsForInFlight(t *testing.T) {
	q := openQueue(t, t.TempDir())
	first := commit(t, q, "1\r\n", "b@x.example")
	second := commit(t, q, "2\r\n", "b@x.example")
	started := make(chan string, 2)
	release := make(chan struct{})
	var workErr atomic.Value
	stop, done := startRun(t, q, procFunc(func(ctx context.Context, it *Item) {
		started <- it.ID
		<-release
		if err := ctx.Err(); err != nil {
			workErr.Store(err)
		}
		deliverAll(t, q, it)
	}), 1)
	var got string
	select {
	case got = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing processed")
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-done:
		t.Fatal("Run returned while an item was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-stopped
	select {
	case <-done:
	default:
		t.Fatal("Run still running")
	}
	select {
	case id := <-started:
		t.Errorf("item %s dispatched after cancel", id)
	default:
	}
	if err, _ := workErr.Load().(error); err != nil {
		t.Errorf("in-flight item's context cancelled with the dispatch context: %v", err)
	}
	// The processed item is gone; the other one is still queued, not in flight.
	other := second.ID
	if got == second.ID {
		other = first.ID
	}
	if ids := q.Items(); !slices.Equal(ids, []string{other}) {
		t.Errorf("Items after cancel = %v, want [%s]", ids, other)
	}
	q.mu.Lock()
	inFlight := q.items[other].inFlight
	q.mu.Unlock()
	if inFlight {
		t.Errorf("undispatched item left marked in flight")
	}
}

func TestKickMakesItemsDue(t *testing.T) {
	q := openQueue(t, t.TempDir())
	it := commit(t, q, "x\r\n", "b@x.example")
	var rec recorder
	var dueSeen atomic.Int32
	startRun(t, q, procFunc(func(_ context.Context, it *Item) {
		rec.add(it)
		// Like the courier: only recipients whose time has come are tried.
		now := time.Now()
		r := it.Rcpts[0]
		if r.NextAttempt.After(now) {
			return
		}
		if dueSeen.Add(1) == 1 {
			r.Attempts++
			r.NextAttempt = now.Add(time.Hour)
			if err := q.Save(it); err != nil {
				t.Error(err)
			}
			return
		}
		deliverAll(t, q, it)
	}), 1)
	waitFor(t, "first attempt", func() bool { return dueSeen.Load() == 1 })
	// Wait until the scheduler has put the item back (not in flight).
	waitFor(t, "item rescheduled", func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return !q.items[it.ID].inFlight
	})
	q.Kick()
	waitFor(t, "kicked item delivered", func() bool { return q.Len() == 0 })
	if n := dueSeen.Load(); n != 2 {
		t.Errorf("due attempts = %d, want 2", n)
	}
}

func TestWritable(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	if err := q.Writable(); err != nil {
		t.Fatalf("Writable on a fresh queue: %v", err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := q.Writable()
	if err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("Writable with tmp/ replaced by a file = %v", err)
	}
}
