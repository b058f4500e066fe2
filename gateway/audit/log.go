package audit

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log closed")

// Log is an open audit log. Append is safe for concurrent use.
//
// Concurrent appenders are group-committed: each Append encodes its record
// and chains it under the lock, then one appender at a time (the leader)
// writes every line buffered so far with a single write and fsync, while the
// others wait. An Append returns only after the batch holding its own line
// has been fsynced.
//
// After a failed write or fsync the Log refuses every later Append: what
// reached the disk is then unknown, so the chain cannot safely go on in this
// process. Reopening the file recovers (a torn tail is cut, see [Open]).
type Log struct {
	path   string
	logger *slog.Logger
	now    func() time.Time // test seam

	mu   sync.Mutex
	cond *sync.Cond // signalled when a flush ends

	f        *os.File
	prev     string // hash of the last record handed out (buffered or durable)
	buf      []byte // encoded lines not yet written
	spare    []byte // recycled buffer
	bufHead  string // hash of the last line in buf
	bufCount int    // records in buf
	seq      uint64 // id of the batch collecting in buf
	flushed  uint64 // id of the last batch durably written
	flushing bool   // a leader is writing outside the lock
	closed   bool
	err      error // sticky write/sync failure

	head  string // hash of the last durable record
	count int    // durable records in the file
}

// Open opens the audit log at path for appending, creating it (mode 0600)
// and its parent directory (0700) if needed. It takes an exclusive advisory
// lock on the file (flock, on Unix) so two processes never fork the chain.
//
// Open reads the whole file and checks the hash chain bytes of every line
// (hash and prev linkage, as [Verify] does, without parsing the JSON), then
// recovers from a crash: if the last line is torn — no trailing newline, or
// a hash that does not match its bytes — that line is cut off, its bytes
// saved to path+".torn-<unix-seconds>" (mode 0600) and a warning logged, and
// the chain continues from the last good record. Only the final line is ever
// cut. A bad line followed by more data, or an intact final line whose prev
// does not link, is tampering (or damage beyond a torn write): Open then
// refuses with an error wrapping a *VerifyError, and the operator decides
// (run `postern audit verify`, move the file aside to start a new chain).
//
// A nil logger means slog.Default().
func Open(path string, logger *slog.Logger) (*Log, error) {
	return open(path, logger, time.Now)
}

// open is Open with a clock.
func open(path string, logger *slog.Logger, now func() time.Time) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: create directory of %s: %w", path, err)
	}
	_, statErr := os.Lstat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: lock %s (is another postern using it?): %w", path, err)
	}
	if created {
		// Make the new directory entry durable too.
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	l := &Log{path: path, logger: logger, now: now, f: f, seq: 1}
	l.cond = sync.NewCond(&l.mu)
	if err := l.recover(); err != nil {
		f.Close()
		return nil, err
	}
	l.prev = l.head
	return l, nil
}

// recover scans the file, sets head and count, and cuts a torn final line.
func (l *Log) recover() error {
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: stat %s: %w", l.path, err)
	}
	size := fi.Size()
	lr := newLineReader(io.NewSectionReader(l.f, 0, size))
	prev := GenesisPrev
	count := 0
	var goodEnd int64
	var bad *VerifyError
	for lineNo := 1; ; lineNo++ {
		rl, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("audit: read %s line %d: %w", l.path, lineNo, err)
		}
		if bad != nil {
			return fmt.Errorf("audit: %s is damaged or tampered with before its last line, refusing to append: %w", l.path, bad)
		}
		if reason := rl.shapeProblem(); reason != "" {
			bad = &VerifyError{Line: lineNo, Reason: reason}
			continue
		}
		h, kind, reason := checkChain(rl.b, prev, lineNo)
		switch kind {
		case lineOK:
			prev = h
			count++
			goodEnd += rl.n
		case lineUnlinked:
			return fmt.Errorf("audit: %s: chain broken, refusing to append: %w", l.path, &VerifyError{Line: lineNo, Reason: reason})
		default:
			bad = &VerifyError{Line: lineNo, Reason: reason}
		}
	}
	l.head, l.count = prev, count
	if bad == nil {
		return nil
	}
	return l.cutTorn(goodEnd, size, bad)
}

// cutTorn saves the bytes [goodEnd, size) aside and truncates the log to
// goodEnd.
func (l *Log) cutTorn(goodEnd, size int64, bad *VerifyError) error {
	tf, tornPath, err := createTornFile(l.path, l.now())
	if err != nil {
		return err
	}
	if _, err := io.Copy(tf, io.NewSectionReader(l.f, goodEnd, size-goodEnd)); err != nil {
		tf.Close()
		return fmt.Errorf("audit: save torn line to %s: %w", tornPath, err)
	}
	if err := tf.Sync(); err != nil {
		tf.Close()
		return fmt.Errorf("audit: sync %s: %w", tornPath, err)
	}
	if err := tf.Close(); err != nil {
		return fmt.Errorf("audit: close %s: %w", tornPath, err)
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		return err
	}
	// Only now that the bytes are safe elsewhere, cut them.
	if err := l.f.Truncate(goodEnd); err != nil {
		return fmt.Errorf("audit: truncate torn line of %s: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", l.path, err)
	}
	l.logger.Warn("audit log: cut torn final line left by a crash",
		slog.String("path", l.path),
		slog.Int("line", bad.Line),
		slog.String("reason", bad.Reason),
		slog.Int64("bytes", size-goodEnd),
		slog.String("saved_to", tornPath),
		slog.Int("records", l.count))
	return nil
}

// createTornFile creates path+".torn-<unix>" exclusively, adding a counter
// if a file of that name already exists.
func createTornFile(path string, now time.Time) (*os.File, string, error) {
	base := path + ".torn-" + strconv.FormatInt(now.Unix(), 10)
	name := base
	for i := 1; ; i++ {
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			return f, name, nil
		}
		if !errors.Is(err, os.ErrExist) || i > 1000 {
			return nil, "", fmt.Errorf("audit: create %s: %w", name, err)
		}
		name = base + "." + strconv.Itoa(i)
	}
}

// syncDir fsyncs a directory so that entries created in it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync directory %s: %w", dir, err)
	}
	return nil
}

// Append fills in TS (with the current time if zero), Prev and Hash, writes
// the record as one line and fsyncs it before returning; it returns the
// completed record as stored (TS in UTC, truncated to milliseconds). Any
// Prev or Hash in r is ignored. The caller acknowledges the action the record
// describes only after Append returns nil (SPEC.md §6).
func (l *Log) Append(r Record) (Record, error) {
	if r.TS.IsZero() {
		r.TS = l.now()
	}
	r.TS = r.TS.UTC().Truncate(time.Millisecond)
	r.Hash = ""
	if err := validate(&r); err != nil {
		return Record{}, err
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Record{}, ErrClosed
	}
	if l.err != nil {
		return Record{}, l.err
	}
	r.Prev = l.prev
	pre, err := preimage(&r)
	if err != nil {
		return Record{}, err
	}
	if len(pre)+hashSuffix > MaxLineSize { // -1 for "}", +1 for "\n"
		return Record{}, fmt.Errorf("audit: record of %d bytes exceeds the %d-byte line limit", len(pre)+hashSuffix, MaxLineSize)
	}
	r.Hash = hashOf(pre)
	l.buf = appendLine(l.buf, pre, r.Hash)
	l.buf = append(l.buf, '\n')
	l.prev = r.Hash
	l.bufHead = r.Hash
	l.bufCount++
	mine := l.seq

	for l.flushed < mine {
		if l.err != nil {
			return Record{}, l.err
		}
		if l.flushing {
			l.cond.Wait()
			continue
		}
		l.flushBatch()
	}
	return r, nil
}

// flushBatch writes and fsyncs everything in buf. Called with mu held and
// flushing false; it releases mu during I/O and holds it again on return.
func (l *Log) flushBatch() {
	l.flushing = true
	data, head, n, id := l.buf, l.bufHead, l.bufCount, l.seq
	l.buf, l.spare = l.spare[:0], nil
	l.bufCount = 0
	l.seq++
	l.mu.Unlock()

	_, werr := l.f.Write(data)
	if werr == nil {
		werr = l.f.Sync()
	}

	l.mu.Lock()
	l.flushing = false
	if werr != nil {
		l.err = fmt.Errorf("audit: write %s (log unusable until reopened): %w", l.path, werr)
		l.logger.Error("audit log write failed", slog.String("path", l.path), slog.Any("err", werr))
	} else {
		l.flushed = id
		l.head = head
		l.count += n
	}
	if cap(data) <= 1<<20 {
		l.spare = data[:0]
	}
	l.cond.Broadcast()
}

// Head returns the hash of the last durable record ([GenesisPrev] for an
// empty log) and the number of durable records. Recording it somewhere the
// log's host cannot rewrite is what makes truncation of the log detectable:
// [VerifyChain] on a later copy must pass that hash at that record count.
func (l *Log) Head() (hash string, records int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head, l.count
}

// Path returns the file name the log was opened with.
func (l *Log) Path() string { return l.path }

// Close waits for appends in progress to reach the disk, then closes the
// file. Appends after Close fail with ErrClosed. Close is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	for l.err == nil && (l.flushing || len(l.buf) > 0) {
		if l.flushing {
			l.cond.Wait()
			continue
		}
		// Waiting appenders would flush this themselves once woken; doing
		// it here is equivalent and needs no hand-off.
		l.flushBatch()
	}
	l.mu.Unlock()
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit: close %s: %w", l.path, err)
	}
	return nil
}
