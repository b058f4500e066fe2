package policy

import (
	"sync/atomic"
)

// Holder holds the running policy and swaps it atomically on reload. The
// zero Holder holds no policy (Get returns nil) until Set or a successful
// Reload.
type Holder struct {
	p atomic.Pointer[Policy]
}

// NewHolder returns a Holder holding p.
func NewHolder(p *Policy) *Holder {
	h := &Holder{}
	h.p.Store(p)
	return h
}

// Get returns the running policy, nil when none has been loaded.
func (h *Holder) Get() *Policy { return h.p.Load() }

// Set makes p the running policy.
func (h *Holder) Set(p *Policy) { h.p.Store(p) }

// Reload loads the policy file at path (the built-in Default when path is
// "") and makes it the running policy only when it is valid. On error the
// running policy stays and the error, an *Error with each problem's
// file:line or an error reading the file, is returned.
func (h *Holder) Reload(path string) error {
	if path == "" {
		h.p.Store(Default())
		return nil
	}
	p, err := Load(path)
	if err != nil {
		return err
	}
	h.p.Store(p)
	return nil
}
