package pgpkeys

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gpgEnv runs GnuPG in a throw-away GNUPGHOME.
type gpgEnv struct {
	t    *testing.T
	home string
}

// newGPG returns a GnuPG environment; the test is skipped only when gpg is
// not installed.
func newGPG(t *testing.T) *gpgEnv {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg not installed")
	}
	// A short path: gpg-agent's socket path must fit in sun_path.
	home, err := os.MkdirTemp("", "pgk")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	g := &gpgEnv{t: t, home: home}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = cmd.Run()
		os.RemoveAll(home)
	})
	return g
}

func (g *gpgEnv) run(stdin []byte, args ...string) []byte {
	g.t.Helper()
	out, stderr, err := g.try(stdin, args...)
	if err != nil {
		g.t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out
}

func (g *gpgEnv) try(stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	base := []string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}
	cmd := exec.Command("gpg", append(base, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.home)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// genKey creates a primary key and returns its fingerprint. extra are
// options placed before --quick-gen-key (e.g. --faked-system-time).
func (g *gpgEnv) genKey(uid, algo, usage, expire string, extra ...string) string {
	g.t.Helper()
	args := append(append([]string{}, extra...), "--quick-gen-key", uid, algo, usage, expire)
	g.run(nil, args...)
	return g.fingerprint(uid)
}

func (g *gpgEnv) addKey(fpr, algo, usage, expire string, extra ...string) {
	g.t.Helper()
	args := append(append([]string{}, extra...), "--quick-add-key", fpr, algo, usage, expire)
	g.run(nil, args...)
}

func (g *gpgEnv) fingerprint(uid string) string {
	g.t.Helper()
	out := g.run(nil, "--with-colons", "--list-keys", "="+uid)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "fpr:") {
			return strings.Split(line, ":")[9]
		}
	}
	g.t.Fatalf("no fingerprint for %q in\n%s", uid, out)
	return ""
}

func (g *gpgEnv) export(fpr string, armored bool) []byte {
	g.t.Helper()
	if armored {
		return g.run(nil, "--armor", "--export", fpr)
	}
	return g.run(nil, "--export", fpr)
}

// revoke imports the revocation certificate gpg made when it created the
// key (openpgp-revocs.d; its armor line is guarded by a leading colon).
func (g *gpgEnv) revoke(fpr string) {
	g.t.Helper()
	rev, err := os.ReadFile(filepath.Join(g.home, "openpgp-revocs.d", fpr+".rev"))
	if err != nil {
		g.t.Fatal(err)
	}
	rev = bytes.Replace(rev, []byte(":-----BEGIN PGP PUBLIC KEY BLOCK-----"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----"), 1)
	g.run(rev, "--import")
}
