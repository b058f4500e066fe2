// Package queue is postern's durable message queue: one message file and one
// JSON metadata file per message on local disk, per-recipient state, and a
// scheduler with a timer heap.
//
// Durability (SPEC §8): a message is committed by writing and fsyncing its
// body and its metadata to temporary files, renaming them into place and
// fsyncing the directories. Only then does ingress answer 250. The presence
// of the metadata file is the commit point: a body without metadata is a
// transaction that was never acknowledged and is removed on start-up.
package queue

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// State of one recipient.
type State string

// Recipient states.
const (
	Pending   State = "pending"
	Delivered State = "delivered"
	Bounced   State = "bounced"
)

// Envelope holds the SMTP envelope parameters kept with a message so they
// can be honoured and relayed at the next hop (RFC 3461 DSN, RFC 6531
// SMTPUTF8, RFC 8689 REQUIRETLS).
type Envelope struct {
	From       string `json:"from"`
	UTF8       bool   `json:"smtputf8,omitempty"`
	RequireTLS bool   `json:"requiretls,omitempty"`
	Ret        string `json:"ret,omitempty"`   // FULL | HDRS
	EnvID      string `json:"envid,omitempty"` // ENVID (decoded)
	Body       string `json:"body,omitempty"`  // 7BIT | 8BITMIME | BINARYMIME
	// Report marks a report postern generated for another organisation
	// (RFC 8460 TLS report): it bypasses the policy engine and goes out
	// over opportunistic TLS, as RFC 8460 §5.3 asks.
	Report bool `json:"report,omitempty"`
	// TLSRequiredNo: the message carries "TLS-Required: No" (RFC 8689 §5)
	// and no REQUIRETLS: recipient-published DANE/MTA-STS policies are not
	// enforced (postern's own policy still is).
	TLSRequiredNo bool `json:"tls_required_no,omitempty"`
}

// Recipient is the per-recipient state kept in the queue record.
type Recipient struct {
	Addr   string   `json:"addr"`
	Notify []string `json:"notify,omitempty"` // NEVER | SUCCESS,FAILURE,DELAY
	ORCPT  string   `json:"orcpt,omitempty"`  // "rfc822;addr" as received

	State State `json:"state"`

	// The decision, made at the first delivery attempt and kept.
	Decided bool     `json:"decided,omitempty"`
	Rule    string   `json:"rule,omitempty"`
	Plan    []string `json:"plan,omitempty"`
	Method  string   `json:"method,omitempty"`
	// TLSLevel is what the tls method needs for this recipient (policy
	// tls.level raised by the domain's requirement); OnUnavailable is the
	// rule's on_unavailable.
	TLSLevel      string `json:"tls_level,omitempty"`
	OnUnavailable string `json:"on_unavailable,omitempty"`
	// DomainTLS is the recipient domain's TLS requirement (policy
	// domains:), applied to encrypted copies too; StripSubjectTag the tag
	// to remove from the Subject of encrypted copies.
	DomainTLS       string `json:"domain_tls,omitempty"`
	StripSubjectTag string `json:"strip_subject_tag,omitempty"`
	PortalID        string `json:"portal_id,omitempty"` // portal message id once sent to the portal

	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastMX      string    `json:"last_mx,omitempty"`
	Status      string    `json:"status,omitempty"` // last enhanced status code, e.g. 4.4.1
}

// WantsDSN reports whether a DSN of kind "FAILURE", "DELAY" or "SUCCESS"
// should be sent for this recipient (RFC 3461 §4.1: absent NOTIFY means
// FAILURE, and DELAY at the MTA's discretion, which we treat as no).
func (r *Recipient) WantsDSN(kind string) bool {
	if len(r.Notify) == 0 {
		return kind == "FAILURE"
	}
	for _, n := range r.Notify {
		if strings.EqualFold(n, kind) {
			return true
		}
	}
	return false
}

// Item is one queued message: its metadata, not its body.
type Item struct {
	ID        string       `json:"id"`
	Received  time.Time    `json:"received"`
	Envelope  Envelope     `json:"envelope"`
	MessageID string       `json:"message_id,omitempty"`
	Size      int64        `json:"size"`
	Client    string       `json:"client,omitempty"` // remote address of the submitting client
	Rcpts     []*Recipient `json:"rcpts"`

	next     time.Time // scheduled run, guarded by Queue.mu
	inFlight bool      // guarded by Queue.mu
}

// Pending returns the recipients still to be delivered.
func (it *Item) Pending() []*Recipient {
	var out []*Recipient
	for _, r := range it.Rcpts {
		if r.State == Pending {
			out = append(out, r)
		}
	}
	return out
}

// nextRun is the earliest NextAttempt of a pending recipient; zero if none.
func (it *Item) nextRun() time.Time {
	var t time.Time
	for _, r := range it.Rcpts {
		if r.State == Pending && (t.IsZero() || r.NextAttempt.Before(t)) {
			t = r.NextAttempt
		}
	}
	return t
}

// Processor attempts the due recipients of an item. It updates the
// recipients' state and saves it with Queue.Save as it goes (booking the next
// attempt before trying). When it returns, the queue removes the item if no
// recipient is pending, else schedules it at its earliest NextAttempt.
type Processor interface {
	Process(ctx context.Context, it *Item)
}

// Queue is the on-disk queue plus its scheduler.
type Queue struct {
	dir string
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	items map[string]*Item
	sched schedHeap
	wake  chan struct{}
}

// Open opens (creating) the queue directory and loads every committed item.
func Open(dir string, log *slog.Logger) (*Queue, error) {
	for _, sub := range []string{"", "tmp", "msg", "meta", "corrupt"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("queue: create %s: %w", filepath.Join(dir, sub), err)
		}
	}
	q := &Queue{dir: dir, log: log, now: time.Now, items: map[string]*Item{}, wake: make(chan struct{}, 1)}
	if err := q.load(); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *Queue) msgPath(id string) string  { return filepath.Join(q.dir, "msg", id) }
func (q *Queue) metaPath(id string) string { return filepath.Join(q.dir, "meta", id+".json") }

func (q *Queue) load() error {
	// Temporary files are transactions that never reached 250.
	tmps, err := os.ReadDir(filepath.Join(q.dir, "tmp"))
	if err != nil {
		return fmt.Errorf("queue: read tmp: %w", err)
	}
	for _, e := range tmps {
		_ = os.Remove(filepath.Join(q.dir, "tmp", e.Name()))
	}
	metas, err := os.ReadDir(filepath.Join(q.dir, "meta"))
	if err != nil {
		return fmt.Errorf("queue: read meta: %w", err)
	}
	for _, e := range metas {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		it, err := q.readMeta(id)
		if err != nil {
			q.quarantine(id, err)
			continue
		}
		if _, err := os.Stat(q.msgPath(id)); err != nil {
			q.quarantine(id, fmt.Errorf("message body missing: %w", err))
			continue
		}
		if len(it.Pending()) == 0 {
			q.remove(id)
			continue
		}
		q.items[id] = it
		q.scheduleLocked(it, it.nextRun())
	}
	// Bodies without metadata were never acknowledged.
	msgs, err := os.ReadDir(filepath.Join(q.dir, "msg"))
	if err != nil {
		return fmt.Errorf("queue: read msg: %w", err)
	}
	for _, e := range msgs {
		if _, ok := q.items[e.Name()]; !ok {
			if _, err := os.Stat(q.metaPath(e.Name())); errors.Is(err, os.ErrNotExist) {
				q.log.Warn("removing uncommitted message body", "queue_id", e.Name())
				_ = os.Remove(q.msgPath(e.Name()))
			}
		}
	}
	q.log.Info("queue loaded", "dir", q.dir, "messages", len(q.items))
	return nil
}

func (q *Queue) readMeta(id string) (*Item, error) {
	b, err := os.ReadFile(q.metaPath(id))
	if err != nil {
		return nil, fmt.Errorf("read metadata: %w", err)
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		return nil, fmt.Errorf("parse metadata: %w", err)
	}
	if it.ID != id {
		return nil, fmt.Errorf("metadata id %q does not match file name", it.ID)
	}
	return &it, nil
}

// quarantine moves a damaged item aside; it is never silently deleted.
func (q *Queue) quarantine(id string, why error) {
	q.log.Error("queue item damaged, moved to corrupt/", "queue_id", id, "err", why)
	_ = os.Rename(q.metaPath(id), filepath.Join(q.dir, "corrupt", id+".json"))
	_ = os.Rename(q.msgPath(id), filepath.Join(q.dir, "corrupt", id))
}

// NewID returns a new queue id: time-ordered, with 48 random bits.
func NewID(now time.Time) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%013x%s", now.UnixMilli(), hex.EncodeToString(b[:]))
}

// Writer receives one message body. Nothing is visible to the queue until
// Commit returns nil.
type Writer struct {
	q    *Queue
	f    *os.File
	id   string
	n    int64
	done bool
}

// NewMessage starts a new message.
func (q *Queue) NewMessage() (*Writer, error) {
	id := NewID(q.now())
	f, err := os.OpenFile(filepath.Join(q.dir, "tmp", id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: create message: %w", err)
	}
	return &Writer{q: q, f: f, id: id}, nil
}

// ID is the queue id the message will have.
func (w *Writer) ID() string { return w.id }

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

// Abort discards the message.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	_ = os.Remove(w.f.Name())
}

// Commit makes the message durable and schedules it: body fsynced and
// renamed, metadata written, fsynced and renamed, directories fsynced. When
// it returns nil the message may be acknowledged.
func (w *Writer) Commit(env Envelope, rcpts []*Recipient, messageID, client string) (*Item, error) {
	if w.done {
		return nil, errors.New("queue: message already finished")
	}
	q := w.q
	now := q.now()
	it := &Item{ID: w.id, Received: now, Envelope: env, MessageID: messageID, Size: w.n, Client: client}
	for _, r := range rcpts {
		rc := *r
		rc.State = Pending
		rc.NextAttempt = now
		it.Rcpts = append(it.Rcpts, &rc)
	}
	fail := func(err error) (*Item, error) {
		w.Abort()
		_ = os.Remove(w.f.Name()) // Abort is a no-op once the body is closed
		_ = os.Remove(q.msgPath(w.id))
		_ = os.Remove(q.metaPath(w.id))
		return nil, err
	}
	if err := w.f.Sync(); err != nil {
		return fail(fmt.Errorf("queue: fsync message: %w", err))
	}
	if err := w.f.Close(); err != nil {
		return fail(fmt.Errorf("queue: close message: %w", err))
	}
	w.done = true
	if err := os.Rename(w.f.Name(), q.msgPath(w.id)); err != nil {
		return fail(fmt.Errorf("queue: commit message: %w", err))
	}
	if err := syncDir(filepath.Join(q.dir, "msg")); err != nil {
		return fail(err)
	}
	if err := q.writeMeta(it); err != nil {
		return fail(err)
	}
	q.mu.Lock()
	q.items[it.ID] = it
	q.scheduleLocked(it, now)
	q.mu.Unlock()
	q.poke()
	return it, nil
}

// Save persists an item's metadata atomically and durably.
func (q *Queue) Save(it *Item) error {
	return q.writeMeta(it)
}

func (q *Queue) writeMeta(it *Item) error {
	b, err := json.Marshal(it)
	if err != nil {
		return fmt.Errorf("queue: encode metadata: %w", err)
	}
	tmp := filepath.Join(q.dir, "tmp", it.ID+".json."+hex.EncodeToString(randBytes(4)))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("queue: write metadata: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("queue: write metadata: %w", err)
	}
	if err := os.Rename(tmp, q.metaPath(it.ID)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("queue: commit metadata: %w", err)
	}
	return syncDir(filepath.Join(q.dir, "meta"))
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("queue: open dir for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("queue: fsync dir %s: %w", dir, err)
	}
	return nil
}

// TempFile creates a scratch file in the queue's tmp directory (removed
// at start-up if left behind), e.g. for an encrypted copy.
func (q *Queue) TempFile() (*os.File, error) {
	f, err := os.CreateTemp(filepath.Join(q.dir, "tmp"), "copy-")
	if err != nil {
		return nil, fmt.Errorf("queue: temp file: %w", err)
	}
	return f, nil
}

// OpenBody opens a message body for reading.
func (q *Queue) OpenBody(id string) (*os.File, error) {
	f, err := os.Open(q.msgPath(id))
	if err != nil {
		return nil, fmt.Errorf("queue: open message %s: %w", id, err)
	}
	return f, nil
}

// remove deletes a finished item: metadata first (the commit point), then body.
func (q *Queue) remove(id string) {
	if err := os.Remove(q.metaPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		q.log.Error("queue: remove metadata", "queue_id", id, "err", err)
		return
	}
	_ = syncDir(filepath.Join(q.dir, "meta"))
	if err := os.Remove(q.msgPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		q.log.Error("queue: remove message", "queue_id", id, "err", err)
	}
}

// Stats implements metrics.QueueStats.
func (q *Queue) Stats() (int, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest time.Time
	for _, it := range q.items {
		if oldest.IsZero() || it.Received.Before(oldest) {
			oldest = it.Received
		}
	}
	return len(q.items), oldest
}

// Len is the number of messages queued.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Writable reports whether the queue directory accepts a new file (for /readyz).
func (q *Queue) Writable() error {
	f, err := os.CreateTemp(filepath.Join(q.dir, "tmp"), "ready-")
	if err != nil {
		return fmt.Errorf("queue not writable: %w", err)
	}
	name := f.Name()
	_, err = f.Write([]byte("x"))
	f.Close()
	os.Remove(name)
	if err != nil {
		return fmt.Errorf("queue not writable: %w", err)
	}
	return nil
}

// Items returns a snapshot of the queued items' ids.
func (q *Queue) Items() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := make([]string, 0, len(q.items))
	for id := range q.items {
		ids = append(ids, id)
	}
	return ids
}

// Kick makes every pending recipient due now (admin "flush"). Items in
// flight are left alone. The earlier NextAttempt is not persisted: after a
// restart the booked schedule applies again.
func (q *Queue) Kick() {
	q.mu.Lock()
	now := q.now()
	for _, it := range q.items {
		if it.inFlight {
			continue
		}
		// A Processor attempts only recipients whose NextAttempt has come,
		// so scheduling the item alone would not make them due.
		for _, r := range it.Rcpts {
			if r.State == Pending && r.NextAttempt.After(now) {
				r.NextAttempt = now
			}
		}
		q.scheduleLocked(it, now)
	}
	q.mu.Unlock()
	q.poke()
}

func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) scheduleLocked(it *Item, at time.Time) {
	it.next = at
	heap.Push(&q.sched, schedEntry{id: it.ID, at: at})
}

// Run dispatches due items to p with at most concurrency in flight, until
// ctx is done; then it waits for in-flight items, which run under workCtx
// (cancel it to abort in-flight deliveries; their state is booked already).
func (q *Queue) Run(ctx, workCtx context.Context, p Processor, concurrency int) {
	if concurrency < 1 {
		concurrency = 1
	}
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		it, wait := q.nextDue()
		if it != nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				q.mu.Lock()
				it.inFlight = false
				q.scheduleLocked(it, it.next)
				q.mu.Unlock()
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				q.process(workCtx, p, it)
			}()
			continue
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		case <-timer.C:
		}
	}
}

// nextDue pops the next due item, marking it in flight, or returns how long
// to wait.
func (q *Queue) nextDue() (*Item, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	for q.sched.Len() > 0 {
		e := q.sched[0]
		it, ok := q.items[e.id]
		if !ok || it.inFlight || !e.at.Equal(it.next) {
			heap.Pop(&q.sched) // stale entry
			continue
		}
		if e.at.After(now) {
			return nil, e.at.Sub(now)
		}
		heap.Pop(&q.sched)
		it.inFlight = true
		return it, 0
	}
	return nil, time.Hour
}

func (q *Queue) process(ctx context.Context, p Processor, it *Item) {
	defer func() {
		if r := recover(); r != nil {
			// The next attempt was booked before trying, so a panic
			// never causes a tight retry loop.
			q.log.Error("panic while processing queue item", "queue_id", it.ID, "panic", fmt.Sprint(r))
		}
		q.mu.Lock()
		it.inFlight = false
		next := it.nextRun()
		if next.IsZero() {
			delete(q.items, it.ID)
			q.mu.Unlock()
			q.remove(it.ID)
			return
		}
		q.scheduleLocked(it, next)
		q.mu.Unlock()
		q.poke()
	}()
	p.Process(ctx, it)
}

type schedEntry struct {
	id string
	at time.Time
}

type schedHeap []schedEntry

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h schedHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *schedHeap) Push(x any)        { *h = append(*h, x.(schedEntry)) }
func (h *schedHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

var _ io.Writer = (*Writer)(nil)
