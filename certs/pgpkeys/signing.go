package pgpkeys

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// ReadSigningKey reads the organisation's OpenPGP signing key
// (keys.signing.pgp_key): one armored or binary secret key whose private
// parts are not passphrase-protected, with a signing-capable (sub)key valid
// at now. Sign-then-encrypt uses it (pgpmime.Options.Signer).
func ReadSigningKey(path string, now time.Time) (*openpgp.Entity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys.signing.pgp_key: %w", err)
	}
	el, err := readSecretKeys(data)
	if err != nil {
		return nil, fmt.Errorf("keys.signing.pgp_key %s: %w", path, err)
	}
	var e *openpgp.Entity
	for _, cand := range el {
		if cand.PrivateKey != nil {
			if e != nil {
				return nil, fmt.Errorf("keys.signing.pgp_key %s: more than one secret key", path)
			}
			e = cand
		}
	}
	if e == nil {
		return nil, fmt.Errorf("keys.signing.pgp_key %s: no secret key (a public key alone cannot sign)", path)
	}
	sk, ok := e.SigningKey(now)
	if !ok {
		return nil, fmt.Errorf("keys.signing.pgp_key %s: no valid signing key (expired, revoked or not signing-capable)", path)
	}
	if sk.PrivateKey == nil || sk.PrivateKey.Dummy() {
		return nil, fmt.Errorf("keys.signing.pgp_key %s: the signing subkey's secret part is missing", path)
	}
	if sk.PrivateKey.Encrypted {
		return nil, fmt.Errorf("keys.signing.pgp_key %s: the secret key is passphrase-protected; export it without a passphrase", path)
	}
	return e, nil
}

func readSecretKeys(data []byte) (openpgp.EntityList, error) {
	r := io.Reader(bytes.NewReader(data))
	if isArmored(data) {
		blk, err := armor.Decode(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("armor: %w", err)
		}
		if blk.Type != openpgp.PrivateKeyType {
			return nil, errors.New("not a private key block (" + blk.Type + ")")
		}
		r = blk.Body
	}
	var el openpgp.EntityList
	pr := packet.NewReader(r)
	for {
		e, err := openpgp.ReadEntity(pr)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		el = append(el, e)
	}
	if len(el) == 0 {
		return nil, errors.New("no key found")
	}
	return el, nil
}
