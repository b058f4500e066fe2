// Package ttlcache is the bounded expiring cache shared by the key and
// certificate look-ups (certs/pgpkeys, certs/smimecerts).
package ttlcache

import (
	"slices"
	"sync"
	"time"
)

type entry[V any] struct {
	v       V
	expires time.Time
}

// Cache maps keys to values until each value's expiry. It holds at most
// Max entries: when full, expired entries are swept and, if that is not
// enough, those expiring soonest are dropped until it is half full. Safe
// for concurrent use.
type Cache[V any] struct {
	max int
	mu  sync.Mutex
	m   map[string]entry[V]
}

// New returns a cache of at most max entries.
func New[V any](max int) *Cache[V] {
	return &Cache[V]{max: max, m: map[string]entry[V]{}}
}

// Get returns the value for key unless it is absent or expired at now.
func (c *Cache[V]) Get(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if ok && now.Before(e.expires) {
		return e.v, true
	}
	if ok {
		delete(c.m, key)
	}
	var zero V
	return zero, false
}

// Put stores v for key until expires.
func (c *Cache[V]) Put(key string, v V, expires, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		c.sweep(now)
	}
	c.m[key] = entry[V]{v: v, expires: expires}
}

// Clear empties the cache.
func (c *Cache[V]) Clear() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// Len is the number of entries, expired ones included.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// sweep drops expired entries and, when still full, those expiring before
// the median expiry. Called with mu held; sorting happens only when full.
func (c *Cache[V]) sweep(now time.Time) {
	for k, e := range c.m {
		if !now.Before(e.expires) {
			delete(c.m, k)
		}
	}
	if len(c.m) < c.max {
		return
	}
	times := make([]time.Time, 0, len(c.m))
	for _, e := range c.m {
		times = append(times, e.expires)
	}
	slices.SortFunc(times, time.Time.Compare)
	cutoff := times[len(times)/2]
	for k, e := range c.m {
		if e.expires.Before(cutoff) {
			delete(c.m, k)
		}
	}
	if len(c.m) >= c.max { // all expiring at once: drop arbitrary ones
		for k := range c.m {
			if len(c.m) < c.max/2+1 {
				break
			}
			delete(c.m, k)
		}
	}
}
