// Package audit writes and checks postern's audit log (SPEC.md §6): one JSON
// object per line at audit.path, one record per per-recipient decision and per
// delivery outcome, linked into a SHA-256 hash chain.
//
// # Line format
//
// A record is serialised with encoding/json (struct field order, HTML escaping
// off, the hash field left out), giving
//
//	{"ts":"2026-12-03T10:00:00.123Z","event":"decision",…,"prev":"<64 hex>"}
//
// Those exact bytes are the record's pre-image: hash = hex(SHA-256(pre-image)).
// The stored line is the pre-image with its final "}" replaced by
// `,"hash":"<64 hex>"}`, followed by "\n". Because prev is never omitted and
// is always 64 hex digits, every line ends in the fixed-width suffix
//
//	,"prev":"<64 hex>","hash":"<64 hex>"}\n
//
// so a verifier recomputes the hash over the line bytes themselves (cutting
// the hash suffix) and never depends on re-marshalling. The first record's
// prev is [GenesisPrev], 64 zeros.
//
// # What the chain detects
//
// [Verify] reports, naming the first bad line: an edit of any byte of any
// line, an inserted line, reordered lines, and a deleted line anywhere except
// at the end (deleting the first line is caught because line 1 must have prev
// [GenesisPrev]). It cannot detect, from the file alone:
//   - removal of the last N lines (truncation): compare the last hash that
//     [VerifyChain] returns with an anchor kept elsewhere, e.g. [Log.Head]
//     recorded periodically off the host;
//   - a rewrite that recomputes every hash from the edit onwards: the chain
//     is unkeyed, so it proves integrity against accidents and naive edits,
//     not against an attacker who can write the file and knows the scheme.
//     External anchoring of the head defeats that too.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Event values (SPEC.md §6).
const (
	EventDecision = "decision"
	EventFallback = "fallback"
	EventDelivery = "delivery"
	EventBounce   = "bounce"
	EventPortal   = "portal" // portal opens, replies, revocations
)

// Result values (SPEC.md §6).
const (
	ResultDelivered = "delivered"
	ResultDeferred  = "deferred"
	ResultBounced   = "bounced"
)

// TLS policy values for [TLSInfo.Policy].
const (
	PolicyDANE   = "dane"
	PolicyMTASTS = "mta-sts"
	PolicyPKIX   = "pkix"
	PolicyNone   = "none"
)

// GenesisPrev is the prev value of the first record of a log: 64 zeros.
const GenesisPrev = "0000000000000000000000000000000000000000000000000000000000000000"

// MaxLineSize bounds one stored line, newline included. Append refuses larger
// records; Verify and Search reject longer lines instead of buffering them.
const MaxLineSize = 1 << 20

// tsLayout is RFC 3339 (section 5.6) with exactly three fractional digits;
// records are always written in UTC, so the offset is "Z".
const tsLayout = "2006-01-02T15:04:05.000Z07:00"

// Considered is one method the policy engine weighed for a recipient.
type Considered struct {
	Method string `json:"method"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// TLSInfo describes the TLS session a delivery used.
type TLSInfo struct {
	Version  string `json:"version,omitempty"` // "TLS1.3"
	Cipher   string `json:"cipher,omitempty"`
	Verified bool   `json:"verified"`
	Policy   string `json:"policy,omitempty"` // "dane" | "mta-sts" | "pkix" | "none"
}

// Record is one audit log line. Its JSON form (see [Record.MarshalJSON]) is
// byte-for-byte the stored line, without the trailing newline.
type Record struct {
	TS         time.Time    `json:"ts"`    // written as RFC 3339 with milliseconds, UTC, e.g. 2026-12-03T10:00:00.123Z
	Event      string       `json:"event"` // decision | fallback | delivery | bounce | portal
	QueueID    string       `json:"queue_id,omitempty"`
	MessageID  string       `json:"message_id,omitempty"`
	From       string       `json:"from,omitempty"`
	Rcpt       string       `json:"rcpt,omitempty"`
	Rule       string       `json:"rule,omitempty"`
	Method     string       `json:"method,omitempty"`
	Reason     string       `json:"reason,omitempty"`
	Considered []Considered `json:"considered,omitempty"`
	Result     string       `json:"result,omitempty"` // delivered | deferred | bounced
	MX         string       `json:"mx,omitempty"`
	TLS        *TLSInfo     `json:"tls,omitempty"`
	Response   string       `json:"response,omitempty"`
	PortalID   string       `json:"portal_id,omitempty"`
	Prev       string       `json:"prev"`
	Hash       string       `json:"hash"` // hex SHA-256 of the record serialised without the hash field
}

// wireRecord is the pre-image layout: Record with ts as a fixed-format string
// and no hash field. Field order is the on-disk order and must not change.
type wireRecord struct {
	TS         string       `json:"ts"`
	Event      string       `json:"event"`
	QueueID    string       `json:"queue_id,omitempty"`
	MessageID  string       `json:"message_id,omitempty"`
	From       string       `json:"from,omitempty"`
	Rcpt       string       `json:"rcpt,omitempty"`
	Rule       string       `json:"rule,omitempty"`
	Method     string       `json:"method,omitempty"`
	Reason     string       `json:"reason,omitempty"`
	Considered []Considered `json:"considered,omitempty"`
	Result     string       `json:"result,omitempty"`
	MX         string       `json:"mx,omitempty"`
	TLS        *TLSInfo     `json:"tls,omitempty"`
	Response   string       `json:"response,omitempty"`
	PortalID   string       `json:"portal_id,omitempty"`
	Prev       string       `json:"prev"`
}

// Fixed pieces of the line suffix.
const (
	prevKey    = `,"prev":"`
	hashKey    = `","hash":"`
	lineEnd    = `"}`
	hexLen     = 2 * sha256.Size
	hashSuffix = len(`,"hash":"`) + hexLen + len(lineEnd)                     // cut from a line to get the pre-image (minus "}")
	tailLen    = len(prevKey) + hexLen + len(hashKey) + hexLen + len(lineEnd) // fixed-width end of every line
)

// formatTS renders t as stored: UTC, millisecond precision.
func formatTS(t time.Time) string {
	return t.UTC().Format(tsLayout)
}

// preimage returns the canonical serialisation of r without its hash.
func preimage(r *Record) ([]byte, error) {
	w := wireRecord{
		TS:         formatTS(r.TS),
		Event:      r.Event,
		QueueID:    r.QueueID,
		MessageID:  r.MessageID,
		From:       r.From,
		Rcpt:       r.Rcpt,
		Rule:       r.Rule,
		Method:     r.Method,
		Reason:     r.Reason,
		Considered: r.Considered,
		Result:     r.Result,
		MX:         r.MX,
		TLS:        r.TLS,
		Response:   r.Response,
		PortalID:   r.PortalID,
		Prev:       r.Prev,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Keep message ids like "<a@b>" readable; the hash covers bytes, so the
	// escaping choice only has to be stable, which it is.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&w); err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	b := buf.Bytes()
	// Encode appends exactly one '\n'.
	return b[:len(b)-1], nil
}

// hashOf returns the hex SHA-256 of a pre-image.
func hashOf(pre []byte) string {
	sum := sha256.Sum256(pre)
	return hex.EncodeToString(sum[:])
}

// appendLine appends pre-image pre with hash h as a stored line (without the
// newline) to dst.
func appendLine(dst, pre []byte, h string) []byte {
	dst = append(dst, pre[:len(pre)-1]...)
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, h...)
	return append(dst, lineEnd...)
}

// MarshalJSON returns the record exactly as a stored line (without newline),
// hash included as it is in r. For a record read back from a log, this is the
// stored line byte for byte.
func (r Record) MarshalJSON() ([]byte, error) {
	pre, err := preimage(&r)
	if err != nil {
		return nil, err
	}
	if r.Hash == "" {
		// No hash to append: still emit the field, as its tag promises.
		return appendLine(nil, pre, ""), nil
	}
	return appendLine(make([]byte, 0, len(pre)+hashSuffix), pre, r.Hash), nil
}

// WriteJSON writes r to w as one stored-format JSON line (for
// `postern audit search -format json`).
func WriteJSON(w io.Writer, r Record) error {
	b, err := r.MarshalJSON()
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("audit: write json: %w", err)
	}
	return nil
}

// validate checks the fields SPEC.md enumerates, so that a caller bug shows up
// as an error instead of as an undocumented value in the log.
func validate(r *Record) error {
	switch r.Event {
	case EventDecision, EventFallback, EventDelivery, EventBounce, EventPortal:
	case "":
		return errors.New("audit: record has no event")
	default:
		return fmt.Errorf("audit: unknown event %q", r.Event)
	}
	switch r.Result {
	case "", ResultDelivered, ResultDeferred, ResultBounced:
	default:
		return fmt.Errorf("audit: unknown result %q", r.Result)
	}
	if r.TLS != nil {
		switch r.TLS.Policy {
		case "", PolicyDANE, PolicyMTASTS, PolicyPKIX, PolicyNone:
		default:
			return fmt.Errorf("audit: unknown tls policy %q", r.TLS.Policy)
		}
	}
	if y := r.TS.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("audit: timestamp %v outside RFC 3339 range", r.TS)
	}
	return nil
}

// isLowerHex reports whether b is all lowercase hex digits.
func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// foldEqual is an exact, case-insensitive comparison; empty want matches all.
func foldEqual(want, got string) bool {
	return want == "" || strings.EqualFold(want, got)
}
