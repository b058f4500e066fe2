package pgpkeys

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// OpenPGP packet tags (RFC 9580 §5).
const (
	tagSignature    = 2
	tagSecretKey    = 5
	tagPublicKey    = 6
	tagSecretSubkey = 7
	tagMarker       = 10
	tagTrust        = 12
	tagUserID       = 13
	tagPublicSubkey = 14
	tagUserAttr     = 17
)

// maxKeysPerFile bounds how many certificates one file or HTTP answer may
// hold, so a hostile input cannot make parsing take unbounded CPU time.
const maxKeysPerFile = 10000

// parsedKey is one certificate (transferable public key, RFC 9580 §10.1)
// read from a file or an HTTP answer. Either entity is set, or err says why
// the certificate could not be used at all.
type parsedKey struct {
	entity      *openpgp.Entity
	fingerprint string    // upper-case hex; "" when not even the key packet was readable
	keyID       string    // "0x" + 16 upper-case hex digits
	created     time.Time // zero when unknown
	uids        []string  // user ID strings in packet order
	origin      string    // file path or URL
	err         string    // why entity is nil
}

// rawPacket is one OpenPGP packet as found in the input.
type rawPacket struct {
	tag  int
	body []byte
	all  []byte // header and body, as in the input
}

// splitPackets cuts data into packets following the packet framing of
// RFC 9580 §4.2: OpenPGP (new) format and legacy format headers. Partial
// body lengths (§4.2.1.4) are only allowed for data packets, never in
// certificates, so they are an error here.
func splitPackets(data []byte) ([]rawPacket, error) {
	var out []rawPacket
	for off := 0; off < len(data); {
		start := off
		b := data[off]
		off++
		if b&0x80 == 0 {
			return out, fmt.Errorf("offset %d: not an OpenPGP packet header (0x%02x)", start, b)
		}
		var tag int
		var length int
		if b&0x40 != 0 { // OpenPGP format, RFC 9580 §4.2.1
			tag = int(b & 0x3f)
			if off >= len(data) {
				return out, fmt.Errorf("offset %d: truncated packet length", start)
			}
			o1 := int(data[off])
			off++
			switch {
			case o1 < 192:
				length = o1
			case o1 < 224:
				if off >= len(data) {
					return out, fmt.Errorf("offset %d: truncated packet length", start)
				}
				length = ((o1 - 192) << 8) + int(data[off]) + 192
				off++
			case o1 == 255:
				if off+4 > len(data) {
					return out, fmt.Errorf("offset %d: truncated packet length", start)
				}
				l := binary.BigEndian.Uint32(data[off:])
				off += 4
				if uint64(l) > uint64(len(data)) {
					return out, fmt.Errorf("offset %d: packet length %d beyond end of data", start, l)
				}
				length = int(l)
			default:
				return out, fmt.Errorf("offset %d: partial body length in a key packet (tag %d)", start, tag)
			}
		} else { // legacy format, RFC 9580 §4.2.2
			tag = int(b>>2) & 0x0f
			switch b & 0x03 {
			case 0:
				if off+1 > len(data) {
					return out, fmt.Errorf("offset %d: truncated packet length", start)
				}
				length = int(data[off])
				off++
			case 1:
				if off+2 > len(data) {
					return out, fmt.Errorf("offset %d: truncated packet length", start)
				}
				length = int(binary.BigEndian.Uint16(data[off:]))
				off += 2
			case 2:
				if off+4 > len(data) {
					return out, fmt.Errorf("offset %d: truncated packet length", start)
				}
				l := binary.BigEndian.Uint32(data[off:])
				off += 4
				if uint64(l) > uint64(len(data)) {
					return out, fmt.Errorf("offset %d: packet length %d beyond end of data", start, l)
				}
				length = int(l)
			default: // indeterminate length: to the end of the data
				length = len(data) - off
			}
		}
		if length > len(data)-off {
			return out, fmt.Errorf("offset %d: packet (tag %d, %d octets) runs past the end of the data", start, tag, length)
		}
		out = append(out, rawPacket{tag: tag, body: data[off : off+length], all: data[start : off+length]})
		off += length
	}
	return out, nil
}

// keyPacketInfo computes the fingerprint, key ID and creation time from a
// public-key packet body (RFC 9580 §5.5.2, §5.5.4). It works for algorithms
// this program cannot use, so such keys can still be named in a reason.
func keyPacketInfo(tag int, body []byte) (fpr, keyID string, created time.Time) {
	if len(body) < 6 {
		return "", "", time.Time{}
	}
	version := body[0]
	created = time.Unix(int64(binary.BigEndian.Uint32(body[1:5])), 0).UTC()
	if tag != tagPublicKey {
		// A secret-key packet starts with the public-key fields, but their
		// length is only known by parsing the key material; leave the
		// fingerprint to the full parser.
		return "", "", created
	}
	switch version {
	case 4: // §5.5.4.2: SHA-1 over 0x99, two-octet length, body; key ID = low 64 bits
		h := sha1.New()
		h.Write([]byte{0x99, byte(len(body) >> 8), byte(len(body))})
		h.Write(body)
		sum := h.Sum(nil)
		fpr = strings.ToUpper(hex.EncodeToString(sum))
		keyID = "0x" + fpr[len(fpr)-16:]
	case 6: // §5.5.4.3: SHA-256 over 0x9B, four-octet length, body; key ID = high 64 bits
		h := sha256.New()
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(body)))
		h.Write([]byte{0x9b})
		h.Write(l[:])
		h.Write(body)
		sum := h.Sum(nil)
		fpr = strings.ToUpper(hex.EncodeToString(sum))
		keyID = "0x" + fpr[:16]
	}
	return fpr, keyID, created
}

// isArmored reports whether data looks like ASCII armor (RFC 9580 §6.2)
// rather than binary packets.
func isArmored(data []byte) bool {
	t := bytes.TrimLeft(data, " \t\r\n")
	if len(t) == 0 {
		return false
	}
	if t[0]&0x80 != 0 {
		return false
	}
	return bytes.Contains(data, []byte("-----BEGIN PGP "))
}

// armorBlocks returns each "-----BEGIN PGP ... KEY BLOCK-----" …
// "-----END …-----" section of data, so that a file holding several
// concatenated armored certificates yields all of them.
func armorBlocks(data []byte) [][]byte {
	var blocks [][]byte
	for {
		i := bytes.Index(data, []byte("-----BEGIN PGP "))
		if i < 0 {
			return blocks
		}
		data = data[i:]
		j := bytes.Index(data, []byte("-----END PGP "))
		if j < 0 {
			return append(blocks, data)
		}
		k := bytes.IndexByte(data[j:], '\n')
		if k < 0 {
			return append(blocks, data)
		}
		blocks = append(blocks, data[:j+k+1])
		data = data[j+k+1:]
	}
}

// parseKeys reads every certificate in data: binary packets or any number
// of armored blocks. It never panics on hostile input. The returned error
// describes data that could not be read at all (with the keys read before
// the problem); per-certificate problems are in parsedKey.err.
func parseKeys(data []byte, origin string) ([]*parsedKey, error) {
	if !isArmored(data) {
		return parseBinary(data, origin)
	}
	var keys []*parsedKey
	var problems []error
	for n, blk := range armorBlocks(data) {
		b, err := armor.Decode(bytes.NewReader(blk))
		if err != nil {
			problems = append(problems, fmt.Errorf("armor block %d: %w", n+1, err))
			continue
		}
		switch b.Type {
		case openpgp.PublicKeyType, openpgp.PrivateKeyType:
		default:
			problems = append(problems, fmt.Errorf("armor block %d: %q is not a key block", n+1, b.Type))
			continue
		}
		raw, err := io.ReadAll(io.LimitReader(b.Body, int64(len(blk))+1))
		if err != nil {
			// The body is decoded lazily; a bad CRC or base64 shows up here.
			problems = append(problems, fmt.Errorf("armor block %d: %w", n+1, err))
			continue
		}
		ks, err := parseBinary(raw, origin)
		keys = append(keys, ks...)
		if err != nil {
			problems = append(problems, fmt.Errorf("armor block %d: %w", n+1, err))
		}
		if len(keys) > maxKeysPerFile {
			problems = append(problems, fmt.Errorf("more than %d keys; the rest ignored", maxKeysPerFile))
			keys = keys[:maxKeysPerFile]
			break
		}
	}
	if len(keys) == 0 && len(problems) == 0 {
		problems = append(problems, errors.New("no armored key block found"))
	}
	return keys, errors.Join(problems...)
}

// parseBinary reads binary OpenPGP packets: it groups them into
// certificates at each primary-key packet (RFC 9580 §10.1) and hands each
// group to go-crypto, so one bad certificate does not hide the others.
func parseBinary(data []byte, origin string) ([]*parsedKey, error) {
	pkts, splitErr := splitPackets(data)
	var keys []*parsedKey
	var group []rawPacket
	flush := func() {
		if len(group) > 0 && len(keys) < maxKeysPerFile {
			keys = append(keys, parseGroup(group, origin))
		}
		group = nil
	}
	var stray int
	for _, p := range pkts {
		switch p.tag {
		case tagPublicKey, tagSecretKey:
			flush()
			group = append(group, p)
		case tagMarker:
			// RFC 9580 §5.8: a Marker packet MUST be ignored.
		default:
			if len(group) == 0 {
				stray++
				continue
			}
			group = append(group, p)
		}
	}
	flush()
	var problems []error
	if splitErr != nil {
		problems = append(problems, splitErr)
	}
	if stray > 0 && len(keys) == 0 {
		problems = append(problems, fmt.Errorf("%d packets but no primary key packet", stray))
	}
	if len(keys) == 0 && len(problems) == 0 {
		problems = append(problems, errors.New("no key found"))
	}
	return keys, errors.Join(problems...)
}

// parseGroup turns the packets of one certificate into a parsedKey.
func parseGroup(group []rawPacket, origin string) *parsedKey {
	pk := &parsedKey{origin: origin}
	pk.fingerprint, pk.keyID, pk.created = keyPacketInfo(group[0].tag, group[0].body)
	var buf bytes.Buffer
	for _, p := range group {
		if r := oversizedKeyMaterial(p); r != "" {
			pk.err = r
		}
	}
	if pk.err != "" {
		for _, p := range group {
			if p.tag == tagUserID {
				pk.uids = append(pk.uids, string(p.body))
			}
		}
		return pk
	}
	for _, p := range group {
		if p.tag == tagUserID {
			pk.uids = append(pk.uids, string(p.body))
		}
		if p.tag == tagTrust {
			continue // keyring-local trust packets (RFC 9580 §5.10) are not part of the certificate
		}
		buf.Write(p.all)
	}
	e, err := readEntity(buf.Bytes())
	if err != nil {
		pk.err = describeParseError(group[0], err)
		return pk
	}
	// A recipient store has no use for secret key material; drop it so it
	// is never held longer than needed nor mistaken for a signing key.
	stripSecrets(e)
	pk.entity = e
	pk.fingerprint = strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
	pk.keyID = "0x" + e.PrimaryKey.KeyIdString()
	pk.created = e.PrimaryKey.CreationTime.UTC()
	// Keep only the user IDs go-crypto accepted (those with a valid
	// self-signature), in packet order.
	var uids []string
	for _, u := range pk.uids {
		if _, ok := e.Identities[u]; ok && !containsString(uids, u) {
			uids = append(uids, u)
		}
	}
	pk.uids = uids
	return pk
}

// Size limits for finite-field key material. Verifying a DSA signature or
// encrypting to an ElGamal key costs time cubic in the size of p, and
// go-crypto accepts any size the packet format allows (65535 bits), so a
// hostile certificate could tie up a CPU for minutes per signature.
const (
	maxRSABits     = 16384 // also Go's crypto/rsa limit
	maxDSAPBits    = 4096  // FIPS 186-4 stops at 3072
	maxDSAQBits    = 512   // normally 160, 224 or 256
	maxElGamalBits = 4096
)

// oversizedKeyMaterial returns a reason when a key packet's RSA, DSA or
// ElGamal numbers exceed the limits above (RFC 9580 §5.5.5 key material).
func oversizedKeyMaterial(p rawPacket) string {
	switch p.tag {
	case tagPublicKey, tagPublicSubkey, tagSecretKey, tagSecretSubkey:
	default:
		return ""
	}
	b := p.body
	if len(b) < 6 {
		return ""
	}
	off := 6
	if b[0] == 5 || b[0] == 6 { // four-octet key material length
		off = 10
	}
	algo := b[5]
	mpi := func(i int) int { // bit length of the i-th MPI, -1 when truncated
		o := off
		for ; i > 0; i-- {
			if o+2 > len(b) {
				return -1
			}
			o += 2 + (int(binary.BigEndian.Uint16(b[o:]))+7)/8
		}
		if o+2 > len(b) {
			return -1
		}
		return int(binary.BigEndian.Uint16(b[o:]))
	}
	switch algo {
	case 1, 2, 3: // RSA
		if n := mpi(0); n > maxRSABits {
			return fmt.Sprintf("unsupported algorithm: RSA-%d (over %d bits)", n, maxRSABits)
		}
	case 17: // DSA
		if n := mpi(0); n > maxDSAPBits {
			return fmt.Sprintf("unsupported algorithm: DSA-%d (over %d bits)", n, maxDSAPBits)
		}
		if q := mpi(1); q > maxDSAQBits {
			return fmt.Sprintf("unsupported algorithm: DSA with a %d-bit q", q)
		}
	case 16, 20: // ElGamal
		if n := mpi(0); n > maxElGamalBits {
			return fmt.Sprintf("unsupported algorithm: ElGamal-%d (over %d bits)", n, maxElGamalBits)
		}
	}
	return ""
}

// readEntity parses one certificate with go-crypto. A panic inside the
// library on hostile input is turned into an error: key data comes from the
// network (WKD, keyservers) and must never take the gateway down.
func readEntity(data []byte) (e *openpgp.Entity, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, err = nil, fmt.Errorf("malformed key (parser failure: %v)", r)
		}
	}()
	return openpgp.ReadEntity(packet.NewReader(bytes.NewReader(data)))
}

// describeParseError turns a parse failure into a reason for the policy.
func describeParseError(first rawPacket, err error) string {
	if first.tag == tagPublicKey && len(first.body) > 0 {
		switch v := first.body[0]; v {
		case 4, 6:
		default:
			return fmt.Sprintf("unsupported key version %d", v)
		}
		if _, perr := packet.Read(bytes.NewReader(first.all)); perr != nil {
			var ue pgperrors.UnsupportedError
			if errors.As(perr, &ue) {
				return "unsupported algorithm: " + string(ue)
			}
			return "unparseable key: " + trimPGPError(perr)
		}
	}
	var ue pgperrors.UnsupportedError
	if errors.As(err, &ue) {
		return "unsupported algorithm: " + string(ue)
	}
	return "unparseable key: " + trimPGPError(err)
}

func trimPGPError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "openpgp: ")
	return s
}

func stripSecrets(e *openpgp.Entity) {
	if e.PrivateKey != nil {
		e.PrivateKey = nil
	}
	for i := range e.Subkeys {
		e.Subkeys[i].PrivateKey = nil
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// uidAddress extracts the email address from a user ID, conventionally
// "Name (comment) <local@domain>" (RFC 9580 §5.11), lower-cased. It returns
// "" when the user ID holds no address.
func uidAddress(uid string) string {
	if a, err := mail.ParseAddress(uid); err == nil {
		return strings.ToLower(a.Address)
	}
	if i := strings.LastIndexByte(uid, '<'); i >= 0 {
		if j := strings.IndexByte(uid[i:], '>'); j > 0 {
			return validAddr(strings.TrimSpace(uid[i+1 : i+j]))
		}
	}
	return validAddr(strings.TrimSpace(uid))
}

// validAddr returns addr lower-cased when it has the shape local@domain
// with no spaces, else "".
func validAddr(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || strings.ContainsAny(addr, " \t\r\n<>") {
		return ""
	}
	return strings.ToLower(addr)
}
