package audit

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Query selects records for Search. Zero fields match everything.
type Query struct {
	Rcpt, From, Method string    // exact, case-insensitive match; empty = any
	Since, Until       time.Time // zero = unbounded; Since inclusive, Until exclusive
	Event              string    // exact; empty = any
}

// Match reports whether rec satisfies q.
func (q Query) Match(rec Record) bool {
	if !foldEqual(q.Rcpt, rec.Rcpt) || !foldEqual(q.From, rec.From) || !foldEqual(q.Method, rec.Method) {
		return false
	}
	if q.Event != "" && q.Event != rec.Event {
		return false
	}
	if !q.Since.IsZero() && rec.TS.Before(q.Since) {
		return false
	}
	if !q.Until.IsZero() && !rec.TS.Before(q.Until) {
		return false
	}
	return true
}

// Search reads a log and calls fn, in file order, with every record matching
// q. It does not check the hash chain (that is Verify's job), but it fails on
// a line that is not a record, naming the line, rather than skip it. An error
// from fn stops the search and is returned as is.
func Search(r io.Reader, q Query, fn func(Record) error) error {
	lr := newLineReader(r)
	for lineNo := 1; ; lineNo++ {
		rl, err := lr.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: search: read line %d: %w", lineNo, err)
		}
		if rl.tooLong {
			return fmt.Errorf("audit: search: %w", &VerifyError{Line: lineNo, Reason: fmt.Sprintf("line longer than %d bytes", MaxLineSize)})
		}
		var rec Record
		if err := json.Unmarshal(rl.b, &rec); err != nil {
			return fmt.Errorf("audit: search: %w", &VerifyError{Line: lineNo, Reason: "not a valid record: " + err.Error()})
		}
		if !q.Match(rec) {
			continue
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// csvHeader returns the column list of `postern audit search -format csv`.
func csvHeader() []string {
	return []string{
		"ts", "event", "queue_id", "message_id", "from", "rcpt", "rule", "method",
		"result", "reason", "mx", "tls_version", "tls_verified", "tls_policy",
		"response", "portal_id", "hash",
	}
}

// CSVWriter writes records as CSV (RFC 4180): a header row, then one row per
// record. tls_* columns are empty for records without TLS information.
// Field values are written verbatim; a spreadsheet may interpret a value
// that starts with "=", "+", "-" or "@" as a formula.
type CSVWriter struct {
	w         *csv.Writer
	wroteHead bool
	row       []string
}

// NewCSVWriter returns a CSVWriter writing to w. Call Flush when done.
func NewCSVWriter(w io.Writer) *CSVWriter {
	return &CSVWriter{w: csv.NewWriter(w), row: make([]string, len(csvHeader()))}
}

func (c *CSVWriter) header() error {
	if c.wroteHead {
		return nil
	}
	c.wroteHead = true
	if err := c.w.Write(csvHeader()); err != nil {
		return fmt.Errorf("audit: write csv header: %w", err)
	}
	return nil
}

// Write writes one record as a row (after the header, on the first call).
func (c *CSVWriter) Write(r Record) error {
	if err := c.header(); err != nil {
		return err
	}
	var tlsVersion, tlsVerified, tlsPolicy string
	if r.TLS != nil {
		tlsVersion = r.TLS.Version
		tlsVerified = strconv.FormatBool(r.TLS.Verified)
		tlsPolicy = r.TLS.Policy
	}
	ts := ""
	if !r.TS.IsZero() {
		ts = formatTS(r.TS)
	}
	row := c.row
	row[0], row[1], row[2], row[3] = ts, r.Event, r.QueueID, r.MessageID
	row[4], row[5], row[6], row[7] = r.From, r.Rcpt, r.Rule, r.Method
	row[8], row[9], row[10], row[11] = r.Result, r.Reason, r.MX, tlsVersion
	row[12], row[13], row[14], row[15] = tlsVerified, tlsPolicy, r.Response, r.PortalID
	row[16] = r.Hash
	if err := c.w.Write(row); err != nil {
		return fmt.Errorf("audit: write csv row: %w", err)
	}
	return nil
}

// Flush writes the header if no record was written, then flushes buffered
// rows to the underlying writer.
func (c *CSVWriter) Flush() error {
	if err := c.header(); err != nil {
		return err
	}
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return fmt.Errorf("audit: flush csv: %w", err)
	}
	return nil
}
