// Package tlsmemory remembers, per recipient domain, the best transport
// security a delivery to it has achieved, so that a later delivery at a
// lower level is noticed (the idea of chasquid's domaininfo; security
// levels only go up). It reports; refusing is policy's business.
package tlsmemory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/mtasts"
)

// Level orders what a delivery achieved.
type Level int

// Levels, weakest first.
const (
	None    Level = iota // plaintext
	Encrypt              // TLS, certificate not verified
	PKIX                 // TLS, certificate valid for the MX name
	Policy               // TLS validated by a published policy: DANE or MTA-STS
)

func (l Level) String() string {
	switch l {
	case None:
		return "none"
	case Encrypt:
		return "encrypt"
	case PKIX:
		return "verified TLS (pkix)"
	case Policy:
		return "policy-validated TLS (dane/mta-sts)"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// Of maps a delivery's TLS state (encrypted, verified and the policy
// name "dane" | "mta-sts" | "pkix" | "none") to a Level.
func Of(encrypted, verified bool, policy string) Level {
	switch {
	case !encrypted:
		return None
	case verified && (policy == "dane" || policy == "mta-sts"):
		return Policy
	case verified:
		return PKIX
	}
	return Encrypt
}

type entry struct {
	Best Level     `json:"best"`
	How  string    `json:"how"` // policy name of the best delivery
	Seen time.Time `json:"seen"`
}

// Memory is the per-domain record, kept in one JSON file. It is safe for
// concurrent use.
type Memory struct {
	path string
	mu   sync.Mutex
	m    map[string]entry
}

// Open loads the memory from path; a missing file is an empty memory.
func Open(path string) (*Memory, error) {
	m := &Memory{path: path, m: map[string]entry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tls memory: %w", err)
	}
	if err := json.Unmarshal(b, &m.m); err != nil {
		return nil, fmt.Errorf("tls memory %s: %w", path, err)
	}
	return m, nil
}

// Observe records that a delivery to domain achieved level (how names the
// policy, e.g. "dane") and returns a note when the domain previously did
// better, "" otherwise. The best level is kept; it is never lowered.
func (m *Memory) Observe(domain string, level Level, how string, now time.Time) (string, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.m[domain]
	note := ""
	if ok && level < prev.Best {
		note = fmt.Sprintf("domain previously did %s (%s, %s); now %s only",
			prev.Best, prev.How, prev.Seen.UTC().Format("2006-01-02"), level)
	}
	if ok && level < prev.Best {
		return note, nil
	}
	if ok && level == prev.Best && now.Sub(prev.Seen) < time.Hour {
		return note, nil // nothing new worth a write
	}
	m.m[domain] = entry{Best: level, How: how, Seen: now}
	b, err := json.Marshal(m.m)
	if err != nil {
		return note, fmt.Errorf("tls memory: %w", err)
	}
	if err := mtasts.WriteFileAtomic(m.path, b); err != nil {
		return note, fmt.Errorf("tls memory: %w", err)
	}
	return note, nil
}

// Best returns the best level seen for domain.
func (m *Memory) Best(domain string) (Level, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[strings.ToLower(strings.TrimSuffix(domain, "."))]
	return e.Best, ok
}

// Path is the file the memory is kept in.
func (m *Memory) Path() string { return m.path }
