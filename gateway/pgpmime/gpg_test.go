package pgpmime

import (
	"bytes"
	"os"
	"os/exec"
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
	home, err := os.MkdirTemp("", "pgm")
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

// genKey creates a primary key with a subkey and returns its fingerprint.
func (g *gpgEnv) genKey(uid, algo, usage, subAlgo string) string {
	g.t.Helper()
	g.run(nil, "--quick-gen-key", uid, algo, usage, "0")
	out := g.run(nil, "--with-colons", "--list-keys", "="+uid)
	fpr := ""
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "fpr:") {
			fpr = strings.Split(line, ":")[9]
			break
		}
	}
	if fpr == "" {
		g.t.Fatalf("no fingerprint for %q", uid)
	}
	if subAlgo != "" {
		g.run(nil, "--quick-add-key", fpr, subAlgo, "encr", "0")
	}
	return fpr
}

// decrypt returns the plaintext and gpg's machine-readable status lines.
func (g *gpgEnv) decrypt(ciphertext []byte) (plain []byte, status string) {
	g.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		g.t.Fatal(err)
	}
	defer r.Close()
	base := []string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", "--status-fd", "3", "--decrypt"}
	cmd := exec.Command("gpg", base...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.home)
	cmd.Stdin = bytes.NewReader(ciphertext)
	cmd.ExtraFiles = []*os.File{w}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	w.Close()
	var st bytes.Buffer
	done := make(chan struct{})
	go func() { st.ReadFrom(r); close(done) }()
	err = cmd.Wait()
	<-done
	if err != nil {
		g.t.Fatalf("gpg --decrypt: %v\n%s\n%s", err, e.Bytes(), st.Bytes())
	}
	return o.Bytes(), st.String()
}
