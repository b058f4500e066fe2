//go:build unix

package audit

import (
	"os"
	"syscall"
)

// lockFile takes a non-blocking exclusive flock(2) on f. The lock goes away
// when f is closed (or the process dies), so a crash never leaves it behind.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}
