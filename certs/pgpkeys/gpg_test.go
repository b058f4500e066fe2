package pgpkeys

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
)

// revoke imports the revocation certificate gpg made when it created the
// key (openpgp-revocs.d; its armor line is guarded by a leading colon).
func revoke(t *testing.T, g *pgptest.GPG, fpr string) {
	t.Helper()
	rev, err := os.ReadFile(filepath.Join(g.Home, "openpgp-revocs.d", fpr+".rev"))
	if err != nil {
		t.Fatal(err)
	}
	rev = bytes.Replace(rev, []byte(":-----BEGIN PGP PUBLIC KEY BLOCK-----"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----"), 1)
	g.Run(rev, "--import")
}
