package mtasts

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Cached is a policy as kept in the cache.
type Cached struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"` // the TXT record's id when fetched
	Policy  Policy    `json:"policy"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"` // Fetched + max_age
}

// Store keeps cached policies. Implementations are safe for concurrent use.
type Store interface {
	// Load returns the cached policy of domain, or nil and no error.
	Load(domain string) (*Cached, error)
	Save(c *Cached) error
	// Domains lists the domains with a cached policy.
	Domains() ([]string, error)
}

// DirStore keeps one JSON file per domain in Dir, written atomically
// (temporary file, fsync, rename, directory fsync).
type DirStore struct{ Dir string }

func (s DirStore) path(domain string) (string, error) {
	if !validPattern(domain) || strings.HasPrefix(domain, "*.") || strings.ContainsAny(domain, "/\\") {
		return "", fmt.Errorf("mta-sts cache: bad domain %q", domain)
	}
	return filepath.Join(s.Dir, domain+".json"), nil
}

// Load implements Store.
func (s DirStore) Load(domain string) (*Cached, error) {
	p, err := s.path(domain)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mta-sts cache: %w", err)
	}
	var c Cached
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("mta-sts cache %s: %w", p, err)
	}
	if c.Domain != domain {
		return nil, fmt.Errorf("mta-sts cache %s: holds domain %q", p, c.Domain)
	}
	return &c, nil
}

// Save implements Store.
func (s DirStore) Save(c *Cached) error {
	p, err := s.path(c.Domain)
	if err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	if err := WriteFileAtomic(p, b); err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	return nil
}

// Domains implements Store.
func (s DirStore) Domains() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mta-sts cache: %w", err)
	}
	var out []string
	for _, e := range entries {
		if d, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() && !strings.HasPrefix(d, ".") {
			out = append(out, d)
		}
	}
	return out, nil
}

// WriteFileAtomic replaces path with data durably: a temporary file in the
// same directory, fsync, rename, fsync of the directory.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
