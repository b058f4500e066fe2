package pgpkeys

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// FuzzParseKeys feeds hostile key files (as found in keys.pgp_dir or
// returned by a WKD or VKS server) to the parser and the verdict: it must
// never panic, and every key it returns must be judged with a reason.
func FuzzParseKeys(f *testing.F) {
	ed := newTestEntity(f, "Ed", "ed@f.example", nil)
	rsa := newTestEntity(f, "Rsa", "rsa@f.example", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 1024})
	v6 := newTestEntity(f, "Six", "six@f.example", &packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519})
	var sec bytes.Buffer
	if err := ed.SerializePrivate(&sec, nil); err != nil {
		f.Fatal(err)
	}
	f.Add(publicBytes(f, ed))
	f.Add(append(publicBytes(f, ed), publicBytes(f, rsa)...))
	f.Add(armoredPublic(f, v6))
	f.Add(append(armoredPublic(f, ed), armoredPublic(f, rsa)...))
	f.Add(sec.Bytes())
	f.Add([]byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"))
	f.Add([]byte{0x99, 0x00, 0x01, 0x04})
	f.Add([]byte{0xc6, 0xff, 0xff, 0xff, 0xff, 0xff})
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseKeys(data, "fuzz")
		if len(keys) == 0 && err == nil {
			t.Fatal("no keys and no error")
		}
		for _, pk := range keys {
			for _, addr := range append(keyAddrs(pk), "ed@f.example") {
				k := evaluate(pk, addr, SourceWKD, now)
				if k.Reason == "" {
					t.Fatalf("key %s judged without a reason", k.Fingerprint)
				}
				if k.Usable && (k.Entity == nil || !slices.ContainsFunc(k.UserIDs, func(u string) bool { return uidAddress(u) == addr })) {
					t.Fatalf("usable key without entity or user ID for %s: %+v", addr, k)
				}
			}
		}
	})
}
