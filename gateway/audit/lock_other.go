//go:build !unix

package audit

import "os"

// lockFile does nothing on platforms without flock(2): there, running two
// processes on one audit log is not prevented and would fork the chain.
func lockFile(*os.File) error { return nil }
