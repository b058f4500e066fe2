package pgpkeys

import (
	"fmt"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// minRSABits is the smallest RSA modulus accepted for encryption: RFC 9580
// deprecates smaller RSA keys and NIST SP 800-131A disallows them for key
// transport.
const minRSABits = 2048

// evaluate decides whether pk can be used to encrypt to addr at now, as the
// policy requires (SPEC §4, pgp): not expired or revoked, a usable
// encryption-capable key, and a user ID carrying exactly addr.
func evaluate(pk *parsedKey, addr, source string, now time.Time) Key {
	k := Key{
		Fingerprint: pk.fingerprint,
		KeyID:       pk.keyID,
		Source:      source,
		Origin:      pk.origin,
		UserIDs:     append([]string(nil), pk.uids...),
		Created:     pk.created,
		Entity:      pk.entity,
	}
	e := pk.entity
	if e == nil {
		k.Reason = pk.err
		return k
	}
	selfSig, _ := e.PrimarySelfSignature()
	if selfSig != nil && selfSig.KeyLifetimeSecs != nil && *selfSig.KeyLifetimeSecs != 0 {
		k.Expires = e.PrimaryKey.CreationTime.Add(time.Duration(*selfSig.KeyLifetimeSecs) * time.Second).UTC()
	}
	k.Reason = unusableReason(e, selfSig, k.Expires, addr, now)
	if k.Reason == "" && hasRevokedSubkey(e) {
		// Hand out a copy without revoked subkeys, so that encryption
		// (which picks the subkey again) can never choose one.
		k.Entity = withoutRevokedSubkeys(e)
	}
	if k.Reason == "" {
		k.Usable = true
		k.Reason = fmt.Sprintf("key %s from %s", k.KeyID, source)
	}
	return k
}

// unusableReason returns why e cannot be used for addr, or "" when it can.
func unusableReason(e *openpgp.Entity, selfSig *packet.Signature, expires time.Time, addr string, now time.Time) string {
	// Revocation (RFC 9580 §5.2.1, signature type 0x20): any key revocation
	// signature, verified by go-crypto when the certificate was read. Its
	// date is not compared with now: GnuPG dates a revocation after the
	// self-signature it revokes, which can be seconds in the future, and a
	// gateway must not encrypt to a key its owner has withdrawn.
	if len(e.Revocations) > 0 {
		for _, r := range e.Revocations {
			if r.RevocationReasonText != "" {
				return "revoked: " + r.RevocationReasonText
			}
		}
		return "revoked"
	}
	if selfSig == nil {
		return "no valid self-signature"
	}
	if e.PrimaryKey.CreationTime.After(now) {
		return "not valid before " + e.PrimaryKey.CreationTime.UTC().Format(time.DateOnly)
	}
	// The Key Expiration Time subpacket (RFC 9580 §5.2.3), from the newest
	// self-signature.
	if !expires.IsZero() && now.After(expires) {
		return "expired " + expires.Format(time.DateOnly)
	}
	if selfSig.SigExpired(now) {
		return "self-signature expired"
	}
	if r := weakRSA(e.PrimaryKey); r != "" {
		return r
	}

	// A user ID with exactly this address, with a current, unrevoked
	// self-signature (RFC 9580 §10.1).
	var uidProblem string
	found := false
	for _, id := range e.Identities {
		if uidAddress(id.Name) != addr {
			continue
		}
		switch {
		case identityRevoked(id):
			uidProblem = "user ID for " + addr + " revoked"
		case id.SelfSignature == nil || id.SelfSignature.SigExpired(now):
			uidProblem = "user ID for " + addr + " expired"
		default:
			found = true
		}
	}
	if !found {
		if uidProblem != "" {
			return uidProblem
		}
		return "no user ID for " + addr
	}

	enc, ok := withoutRevokedSubkeys(e).EncryptionKey(now)
	if !ok {
		if hasEncryptionFlag(e) {
			return "no encryption subkey (all expired or revoked)"
		}
		return "no encryption subkey"
	}
	if r := weakRSA(enc.PublicKey); r != "" {
		return r + " (encryption subkey)"
	}
	return ""
}

// identityRevoked reports whether a certification revocation (RFC 9580
// §5.2.1, signature type 0x30) is at least as new as the user ID's latest self-signature; a
// newer self-signature re-validates the user ID.
func identityRevoked(id *openpgp.Identity) bool {
	for _, r := range id.Revocations {
		if r.RevocationReason != nil && *r.RevocationReason == packet.KeyCompromised {
			return true
		}
		if id.SelfSignature == nil || !r.CreationTime.Before(id.SelfSignature.CreationTime) {
			return true
		}
	}
	return false
}

func hasRevokedSubkey(e *openpgp.Entity) bool {
	for _, sk := range e.Subkeys {
		if len(sk.Revocations) > 0 {
			return true
		}
	}
	return false
}

// withoutRevokedSubkeys returns e, or a shallow copy of e without the
// subkeys that carry a revocation signature, whatever its date.
func withoutRevokedSubkeys(e *openpgp.Entity) *openpgp.Entity {
	if !hasRevokedSubkey(e) {
		return e
	}
	c := *e
	c.Subkeys = nil
	for _, sk := range e.Subkeys {
		if len(sk.Revocations) == 0 {
			c.Subkeys = append(c.Subkeys, sk)
		}
	}
	return &c
}

func hasEncryptionFlag(e *openpgp.Entity) bool {
	for _, sk := range e.Subkeys {
		if sk.Sig != nil && sk.Sig.FlagsValid && (sk.Sig.FlagEncryptCommunications || sk.Sig.FlagEncryptStorage) {
			return true
		}
	}
	return false
}

func weakRSA(pk *packet.PublicKey) string {
	switch pk.PubKeyAlgo {
	case packet.PubKeyAlgoRSA, packet.PubKeyAlgoRSAEncryptOnly, packet.PubKeyAlgoRSASignOnly:
	default:
		return ""
	}
	bits, err := pk.BitLength()
	if err != nil {
		return "unsupported algorithm: RSA key of unknown size"
	}
	if bits < minRSABits {
		return fmt.Sprintf("unsupported algorithm: RSA-%d (below %d bits)", bits, minRSABits)
	}
	return ""
}

// normalizeAddr lower-cases addr and checks it has the shape local@domain.
func normalizeAddr(addr string) (string, error) {
	a := validAddr(strings.TrimSpace(addr))
	if a == "" {
		return "", fmt.Errorf("invalid address %q", addr)
	}
	return a, nil
}
