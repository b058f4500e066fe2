package pgpmime

import (
	"bytes"
	"os"
	"testing"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
)

// gpgGenKey creates a primary key that never expires, with an encryption
// subkey of subAlgo unless it is empty, and returns its fingerprint.
func gpgGenKey(t *testing.T, g *pgptest.GPG, uid, algo, usage, subAlgo string) string {
	t.Helper()
	fpr := g.GenKey(uid, algo, usage, "0")
	if subAlgo != "" {
		g.AddKey(fpr, subAlgo, "encr", "0")
	}
	return fpr
}

// gpgDecrypt returns the plaintext and gpg's machine-readable status lines.
func gpgDecrypt(t *testing.T, g *pgptest.GPG, ciphertext []byte) (plain []byte, status string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := g.Command("--status-fd", "3", "--decrypt")
	cmd.Stdin = bytes.NewReader(ciphertext)
	cmd.ExtraFiles = []*os.File{w}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatal(err)
	}
	w.Close()
	var st bytes.Buffer
	done := make(chan struct{})
	go func() { st.ReadFrom(r); close(done) }()
	err = cmd.Wait()
	<-done
	if err != nil {
		t.Fatalf("gpg --decrypt: %v\n%s\n%s", err, e.Bytes(), st.Bytes())
	}
	return o.Bytes(), st.String()
}
