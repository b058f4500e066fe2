package pgpkeys

import (
	"sync"
)

// maxCacheEntries bounds the look-up cache (see ttlcache for eviction).
const maxCacheEntries = 20000

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
