package pgpkeys

import (
	"slices"
	"sync"
	"time"
)

// maxCacheEntries bounds the look-up cache; beyond it expired entries are
// swept, and if that is not enough the oldest-expiring half is dropped.
const maxCacheEntries = 20000

type cacheEntry struct {
	keys    []*parsedKey
	expires time.Time
}

// cache keeps remote answers until they expire.
type cache struct {
	mu sync.Mutex
	m  map[string]cacheEntry
}

func newCache() *cache { return &cache{m: map[string]cacheEntry{}} }

func (c *cache) get(key string, now time.Time) ([]*parsedKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		delete(c.m, key)
		return nil, false
	}
	return e.keys, true
}

func (c *cache) put(key string, keys []*parsedKey, now, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCacheEntries {
		c.sweep(now)
	}
	c.m[key] = cacheEntry{keys: keys, expires: expires}
}

// sweep drops expired entries and, when the cache is still full, those
// expiring soonest until it is half full. Called with mu held.
func (c *cache) sweep(now time.Time) {
	for k, e := range c.m {
		if !now.Before(e.expires) {
			delete(c.m, k)
		}
	}
	if len(c.m) < maxCacheEntries {
		return
	}
	times := make([]time.Time, 0, len(c.m))
	for _, e := range c.m {
		times = append(times, e.expires)
	}
	// The median expiry: entries expiring before it go. Sorting happens
	// only when the cache is full.
	slices.SortFunc(times, time.Time.Compare)
	cutoff := times[len(times)/2]
	for k, e := range c.m {
		if e.expires.Before(cutoff) {
			delete(c.m, k)
		}
	}
}

// call is one in-flight remote look-up.
type call struct {
	done chan struct{}
	keys []*parsedKey
	err  error
}

// flightGroup runs one fetch per key at a time; concurrent callers share it.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*call
}

func newFlightGroup() *flightGroup { return &flightGroup{m: map[string]*call{}} }

// do starts fn for key unless a call for key is already running, and
// returns the call; its done channel closes when the result is set.
func (g *flightGroup) do(key string, fn func() ([]*parsedKey, error)) *call {
	g.mu.Lock()
	if c, ok := g.m[key]; ok {
		g.mu.Unlock()
		return c
	}
	c := &call{done: make(chan struct{})}
	g.m[key] = c
	g.mu.Unlock()
	go func() {
		defer func() {
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(c.done)
		}()
		c.keys, c.err = fn()
	}()
	return c
}
