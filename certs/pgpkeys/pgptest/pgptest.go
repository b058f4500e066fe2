// Package pgptest runs the real GnuPG (gpg) in a throw-away home directory,
// so tests can make OpenPGP keys (RFC 9580) with an independent
// implementation and check postern's output against it. For tests only.
package pgptest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// GPG is a GnuPG home directory that is removed, with its agent stopped,
// when the test ends.
type GPG struct {
	// Home is the GNUPGHOME directory.
	Home string
	t    testing.TB
}

// New returns a GnuPG environment; the test is skipped only when gpg is not
// installed.
func New(t testing.TB) *GPG {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg not installed")
	}
	return newHome(t)
}

// NewRequired is New for suites that require gpg: the test fails, rather
// than being skipped, when gpg is not installed.
func NewRequired(t testing.TB) *GPG {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Fatal("gpg is required (apt-get install gnupg)")
	}
	return newHome(t)
}

func newHome(t testing.TB) *GPG {
	t.Helper()
	// A short path: gpg-agent's socket path must fit in sun_path.
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = cmd.Run()
		os.RemoveAll(home)
	})
	return &GPG{Home: home, t: t}
}

// Command returns an unstarted gpg command in batch mode with an empty
// passphrase, running in the home, with args after the common options.
func (g *GPG) Command(args ...string) *exec.Cmd {
	base := []string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}
	cmd := exec.Command("gpg", append(base, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.Home)
	return cmd
}

// Run runs gpg with stdin and returns its standard output; it fails the
// test when gpg fails.
func (g *GPG) Run(stdin []byte, args ...string) []byte {
	g.t.Helper()
	cmd := g.Command(args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		g.t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, e.Bytes())
	}
	return o.Bytes()
}

// GenKey creates a primary key and returns its fingerprint. extra are
// options placed before --quick-gen-key (e.g. --faked-system-time).
func (g *GPG) GenKey(uid, algo, usage, expire string, extra ...string) string {
	g.t.Helper()
	args := append(append([]string{}, extra...), "--quick-gen-key", uid, algo, usage, expire)
	g.Run(nil, args...)
	return g.Fingerprint(uid)
}

// AddKey adds a subkey to the key with fingerprint fpr. extra are options
// placed before --quick-add-key.
func (g *GPG) AddKey(fpr, algo, usage, expire string, extra ...string) {
	g.t.Helper()
	args := append(append([]string{}, extra...), "--quick-add-key", fpr, algo, usage, expire)
	g.Run(nil, args...)
}

// Fingerprint returns the primary key fingerprint of the key whose user ID
// is exactly uid.
func (g *GPG) Fingerprint(uid string) string {
	g.t.Helper()
	out := g.Run(nil, "--with-colons", "--list-keys", "="+uid)
	for _, line := range strings.Split(string(out), "\n") {
		// Field 10 of a colon listing is the fingerprint (GnuPG's
		// doc/DETAILS).
		if f := strings.Split(line, ":"); f[0] == "fpr" && len(f) > 9 {
			return f[9]
		}
	}
	g.t.Fatalf("no fingerprint for %q in\n%s", uid, out)
	return ""
}

// Export returns the public key fpr, ASCII-armored or binary.
func (g *GPG) Export(fpr string, armored bool) []byte {
	g.t.Helper()
	if armored {
		return g.Run(nil, "--armor", "--export", fpr)
	}
	return g.Run(nil, "--export", fpr)
}
