package pgptest

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestGenKeyExport(t *testing.T) {
	g := New(t)
	if fi, err := os.Stat(g.Home); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home %s: %v %v", g.Home, fi, err)
	}
	fpr := g.GenKey("Test <test@pgptest.example>", "ed25519", "sign", "0")
	if len(fpr) != 40 || strings.Trim(fpr, "0123456789ABCDEF") != "" {
		t.Fatalf("fingerprint %q", fpr)
	}
	g.AddKey(fpr, "cv25519", "encr", "0")
	listing := string(g.Run(nil, "--with-colons", "--list-keys", fpr))
	if strings.Count(listing, "\nsub:") != 1 {
		t.Errorf("want one subkey:\n%s", listing)
	}
	if armored := g.Export(fpr, true); !bytes.HasPrefix(armored, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
		t.Errorf("armored export starts %q", armored[:min(len(armored), 40)])
	}
	if bin := g.Export(fpr, false); len(bin) == 0 || bin[0]&0x80 == 0 {
		t.Errorf("binary export is not an OpenPGP packet stream")
	}
	if _, err := g.Command("--list-keys", "nobody@nowhere.example").Output(); err == nil {
		t.Error("gpg found a key that does not exist")
	}
}
