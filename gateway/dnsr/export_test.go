package dnsr

import "time"

// NewClientUntrusted is NewClient as if addr were not on loopback, for
// checking that the AD bit is then ignored.
func NewClientUntrusted(addr string, timeout time.Duration) Resolver {
	c := NewClient(addr, timeout).(*client)
	c.trustAD = false
	return c
}

// NewSystemTLSAServers is NewSystem with the TLSA name servers given.
func NewSystemTLSAServers(servers ...string) Resolver {
	s := NewSystem().(*system)
	s.servers = func() ([]string, error) { return servers, nil }
	return s
}

// SystemError exposes the net.Resolver error mapping.
var SystemError = systemError
