package tlsrpt

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/mtasts"
)

// Bounds on what one day's data may hold, so a flood of distinct failures
// cannot grow the state file without limit.
const (
	// DefaultMaxDetails caps the distinct failure-detail entries per
	// domain and day; further distinct failures are counted in one entry
	// per result type without host, address or reason.
	DefaultMaxDetails = 50
	// DefaultMaxDomains caps the domains kept per day; results for
	// further domains are dropped (and logged once).
	DefaultMaxDomains = 20000
	maxPolicies       = 8   // distinct policies per domain and day
	maxMXHosts        = 16  // MX hosts remembered per policy
	maxDetailLen      = 256 // bytes of failure-reason-code kept
	maxPolicyStrings  = 64
	keepSentDays      = 14 // sent-day markers are pruned after this
)

// DomainAggregate is one policy domain's counters for one day.
type DomainAggregate struct {
	Policies []*PolicyAggregate `json:"policies"`
}

// PolicyAggregate counts the sessions under one policy.
type PolicyAggregate struct {
	Type     string              `json:"type"`
	Strings  []string            `json:"strings,omitempty"`
	MXHosts  []string            `json:"mx_hosts,omitempty"`
	Success  int64               `json:"success"`
	Failure  int64               `json:"failure"`
	Failures []*FailureAggregate `json:"failures,omitempty"`
}

// FailureAggregate counts failures of one kind.
type FailureAggregate struct {
	ResultType  string `json:"result_type"`
	MXHost      string `json:"mx,omitempty"`
	ReceivingIP string `json:"ip,omitempty"`
	Detail      string `json:"detail,omitempty"`
	Count       int64  `json:"count"`
}

// dayState is the file content for one UTC day.
type dayState struct {
	Day     string                      `json:"day"` // 2006-01-02
	Sent    bool                        `json:"sent,omitempty"`
	Done    map[string]bool             `json:"done,omitempty"` // domains already reported (or without TLSRPT)
	Domains map[string]*DomainAggregate `json:"domains,omitempty"`

	dirty bool
}

// Collector aggregates results per UTC day and policy domain and persists
// them in Dir, one JSON file per day written atomically. It is safe for
// concurrent use. Counts recorded since the last Flush are lost on a
// crash; Run flushes every Tick and when it stops.
type Collector struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives warnings; nil discards.
	Log *slog.Logger
	// MaxDetails, MaxDomains: see DefaultMaxDetails, DefaultMaxDomains.
	MaxDetails, MaxDomains int
	// Tick is how often Run flushes and checks for a day to send; zero
	// means one minute.
	Tick time.Duration

	dir  string
	seed uint64 // per-process seed of the send delay

	mu       sync.Mutex
	days     map[string]*dayState
	warned   map[string]bool
	sendMu   sync.Mutex // one SendDay at a time
	attempts map[string]time.Time
}

// Open loads the state kept in dir, creating dir when missing.
func Open(dir string) (*Collector, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("tlsrpt: %w", err)
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	c := &Collector{dir: dir, seed: binary.LittleEndian.Uint64(seed[:]), days: map[string]*dayState{},
		warned: map[string]bool{}, attempts: map[string]time.Time{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		if _, err := time.Parse(time.DateOnly, name); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("tlsrpt: %w", err)
		}
		var st dayState
		if err := json.Unmarshal(b, &st); err != nil || st.Day != name {
			// A damaged file must not stop the gateway; move it aside.
			bad := filepath.Join(dir, e.Name()+".corrupt")
			_ = os.Rename(filepath.Join(dir, e.Name()), bad)
			c.log().Warn("tlsrpt: damaged state file moved aside", "file", bad, "err", err)
			continue
		}
		if st.Domains == nil {
			st.Domains = map[string]*DomainAggregate{}
		}
		if st.Done == nil {
			st.Done = map[string]bool{}
		}
		c.days[name] = &st
	}
	return c, nil
}

func (c *Collector) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Collector) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Collector) maxDetails() int {
	if c.MaxDetails > 0 {
		return c.MaxDetails
	}
	return DefaultMaxDetails
}

func (c *Collector) maxDomains() int {
	if c.MaxDomains > 0 {
		return c.MaxDomains
	}
	return DefaultMaxDomains
}

// validDomain keeps names that are safe in a DNS query, a mail header and
// a file name: letters, digits, '-', '_' and '.', or non-ASCII (IDN).
func validDomain(d string) bool {
	if d == "" || len(d) > 253 || strings.HasPrefix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for _, c := range d {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c >= 0x80 && c != 0xFFFD
		if !ok {
			return false
		}
	}
	return true
}

func dayKey(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// Record counts one session result under the current UTC day.
func (c *Collector) Record(r Result) {
	domain := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(r.Domain), "."))
	if !validDomain(domain) {
		return
	}
	switch r.PolicyType {
	case PolicySTS, PolicyTLSA, PolicyNotFound:
	default:
		r.PolicyType = PolicyNotFound
	}
	if !r.Success && !validResultType(r.FailureType) {
		r.FailureType = ValidationFailure
	}
	key := dayKey(c.now())
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.days[key]
	if st == nil {
		st = &dayState{Day: key, Domains: map[string]*DomainAggregate{}, Done: map[string]bool{}}
		c.days[key] = st
	}
	if st.Sent {
		return // the clock went back to a day already reported
	}
	agg := st.Domains[domain]
	if agg == nil {
		if len(st.Domains) >= c.maxDomains() {
			if !c.warned[key] {
				c.warned[key] = true
				c.log().Warn("tlsrpt: too many domains today; results for further domains are dropped", "day", key, "max", c.maxDomains())
			}
			return
		}
		agg = &DomainAggregate{}
		st.Domains[domain] = agg
	}
	st.dirty = true
	p := agg.policy(r.PolicyType, r.PolicyStrings)
	if r.MXHost != "" && len(p.MXHosts) < maxMXHosts && !slices.Contains(p.MXHosts, r.MXHost) {
		p.MXHosts = append(p.MXHosts, r.MXHost)
	}
	if r.Success {
		p.Success++
		return
	}
	p.Failure++
	detail := truncate(r.FailureDetail, maxDetailLen)
	for _, f := range p.Failures {
		if f.ResultType == r.FailureType && f.MXHost == r.MXHost && f.ReceivingIP == r.ReceivingIP && f.Detail == detail {
			f.Count++
			return
		}
	}
	if agg.details() >= c.maxDetails() {
		// Bounded: fold into a per-type entry without specifics.
		for _, f := range p.Failures {
			if f.ResultType == r.FailureType && f.MXHost == "" && f.ReceivingIP == "" && f.Detail == "" {
				f.Count++
				return
			}
		}
		p.Failures = append(p.Failures, &FailureAggregate{ResultType: r.FailureType, Count: 1})
		return
	}
	p.Failures = append(p.Failures, &FailureAggregate{ResultType: r.FailureType, MXHost: r.MXHost,
		ReceivingIP: r.ReceivingIP, Detail: detail, Count: 1})
}

// policy returns the aggregate of the policy, creating it; past
// maxPolicies distinct policies, the last one absorbs the rest.
func (a *DomainAggregate) policy(typ string, strs []string) *PolicyAggregate {
	if len(strs) > maxPolicyStrings {
		strs = strs[:maxPolicyStrings]
	}
	for _, p := range a.Policies {
		if p.Type == typ && slices.Equal(p.Strings, strs) {
			return p
		}
	}
	if len(a.Policies) >= maxPolicies {
		return a.Policies[len(a.Policies)-1]
	}
	p := &PolicyAggregate{Type: typ, Strings: slices.Clone(strs)}
	a.Policies = append(a.Policies, p)
	return p
}

func (a *DomainAggregate) details() int {
	n := 0
	for _, p := range a.Policies {
		n += len(p.Failures)
	}
	return n
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8Start(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1] >= 0x80 {
		s = s[:len(s)-1] // drop a cut multi-byte sequence's lead byte
	}
	return s
}

func utf8Start(b byte) bool { return b < 0x80 || b >= 0xC0 }

// Flush writes every day changed since the last Flush.
func (c *Collector) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, st := range c.days {
		if st.dirty {
			if err := c.saveLocked(st); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// saveLocked writes one day's file atomically (temporary file, fsync,
// rename, directory fsync).
func (c *Collector) saveLocked(st *dayState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("tlsrpt: encode %s: %w", st.Day, err)
	}
	if err := mtasts.WriteFileAtomic(filepath.Join(c.dir, st.Day+".json"), b); err != nil {
		return fmt.Errorf("tlsrpt: save %s: %w", st.Day, err)
	}
	st.dirty = false
	return nil
}

// Aggregate returns a copy of the counters of domain for the UTC day
// holding day, or nil when there are none.
func (c *Collector) Aggregate(day time.Time, domain string) *DomainAggregate {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.days[dayKey(day)]
	if st == nil || st.Domains[domain] == nil {
		return nil
	}
	return st.Domains[domain].clone()
}

func (a *DomainAggregate) clone() *DomainAggregate {
	out := &DomainAggregate{}
	for _, p := range a.Policies {
		q := *p
		q.Strings, q.MXHosts = slices.Clone(p.Strings), slices.Clone(p.MXHosts)
		q.Failures = nil
		for _, f := range p.Failures {
			g := *f
			q.Failures = append(q.Failures, &g)
		}
		out.Policies = append(out.Policies, &q)
	}
	return out
}

// pendingDays returns the unsent days before the UTC day of now, oldest
// first.
func (c *Collector) pendingDays(now time.Time) []string {
	today := dayKey(now)
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k, st := range c.days {
		if k < today && !st.Sent {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// pruneLocked forgets sent days older than keepSentDays.
func (c *Collector) pruneLocked(now time.Time) {
	limit := dayKey(now.Add(-keepSentDays * 24 * time.Hour))
	for k, st := range c.days {
		if st.Sent && k < limit {
			if err := os.Remove(filepath.Join(c.dir, k+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				c.log().Warn("tlsrpt: prune", "day", k, "err", err)
				continue
			}
			delete(c.days, k)
		}
	}
}
