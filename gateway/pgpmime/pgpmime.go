// Package pgpmime encrypts a message for one recipient as PGP/MIME
// (RFC 3156) with header protection (RFC 9788), streaming: memory use does
// not grow with the message size.
//
// The outer message keeps the trace fields (Received, Return-Path) and
// From, To, Cc, Date, Message-ID, References, In-Reply-To, Reply-To and
// MIME-Version; its Subject becomes "..." unless Options.KeepSubject is set;
// every other field is dropped from the outside. The encrypted part is the
// original message's MIME entity with the original header fields (all but
// trace fields and Bcc) and the Content-Type parameters hp="cipher"
// (RFC 9788, the "hp" parameter of the Cryptographic Payload) and
// protected-headers="v1" (the older draft that Thunderbird and other
// clients read), plus one HP-Outer field per non-structural outer field
// (RFC 9788, the HP-Outer header field), so that the reader knows what was
// exposed in transit.
//
// OpenPGP (RFC 9580): a version 4 recipient key gets a SEIPD version 1
// packet (with MDC, §5.13.1) under AES-256 when its Preferred Symmetric
// Ciphers list AES-256 (GnuPG, Thunderbird and OpenPGP.js keys all do; a
// key listing only AES-128 gets AES-128, as the preferences require). A
// version 6 key that advertises SEIPDv2 (Features subpacket, §5.2.3) gets
// the AEAD packet (§5.13.2). No compression. With Options.Signer the
// message is signed, then encrypted, in one OpenPGP message (RFC 3156
// §6.2).
//
// On error the output may hold a partial message and must be discarded;
// errors found before anything is written (unusable key, malformed header
// section) leave w untouched.
package pgpmime

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// ObscuredSubject is the outer Subject of an encrypted message (SPEC §5).
const ObscuredSubject = "..."

// Options tune Encrypt.
type Options struct {
	KeepSubject bool            // keep the real Subject outside; default: "..."
	Signer      *openpgp.Entity // optional: sign then encrypt (RFC 3156 §6.2); needs an unlocked private signing key
	Now         func() time.Time
}

// Outer header fields kept on the unencrypted message, besides the Subject.
// Trace fields (RFC 5322 §3.6.7) stay outside only; the others are also
// protected inside.
var (
	traceFields = map[string]bool{"received": true, "return-path": true}
	outerFields = map[string]bool{
		"from": true, "to": true, "cc": true, "date": true, "message-id": true,
		"references": true, "in-reply-to": true, "reply-to": true, "mime-version": true,
	}
)

// Encrypt reads a complete RFC 5322 message from msg (it may start with
// Received: fields) and writes the PGP/MIME message for the recipient key to
// w, streaming. Output lines end in CRLF. Nothing is written when the
// header section is malformed or the key cannot be used.
func Encrypt(w io.Writer, msg io.Reader, to *openpgp.Entity, opt Options) error {
	if to == nil || to.PrimaryKey == nil {
		return errors.New("pgpmime: no recipient key")
	}
	now := time.Now
	if opt.Now != nil {
		now = opt.Now
	}
	t := now()
	if _, ok := to.EncryptionKey(t); !ok {
		return fmt.Errorf("pgpmime: key %X has no usable encryption key", to.PrimaryKey.Fingerprint)
	}
	if opt.Signer != nil {
		sk, ok := opt.Signer.SigningKey(t)
		if !ok || sk.PrivateKey == nil || sk.PrivateKey.Encrypted {
			return errors.New("pgpmime: signer has no usable, unlocked signing key")
		}
	}

	br := bufio.NewReaderSize(msg, 32<<10)
	fields, err := readHeader(br)
	if err != nil {
		return fmt.Errorf("pgpmime: read message header: %w", err)
	}
	boundary, err := newBoundary()
	if err != nil {
		return err
	}

	bw := bufio.NewWriterSize(w, 32<<10)
	outer := outerHeader(fields, opt.KeepSubject, boundary)
	if _, err := bw.Write(outer.header); err != nil {
		return fmt.Errorf("pgpmime: write: %w", err)
	}
	// RFC 3156 §4: the first part is application/pgp-encrypted with
	// "Version: 1", the second application/octet-stream with the
	// OpenPGP message.
	fmt.Fprintf(bw, "This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"+
		"--%s\r\n"+
		"Content-Type: application/pgp-encrypted\r\n"+
		"Content-Description: PGP/MIME version identification\r\n"+
		"\r\n"+
		"Version: 1\r\n"+
		"\r\n"+
		"--%s\r\n"+
		"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"+
		"Content-Description: OpenPGP encrypted message\r\n"+
		"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n"+
		"\r\n", boundary, boundary)

	aead := wantsAEAD(to)
	cfg := &packet.Config{
		DefaultCipher:          packet.CipherAES256, // go-crypto would pick AES-128
		DefaultHash:            crypto.SHA256,
		DefaultCompressionAlgo: packet.CompressionNone,
		Time:                   now,
	}
	if aead {
		cfg.AEADConfig = &packet.AEADConfig{DefaultMode: packet.AEADModeOCB}
	}
	// ASCII armor (RFC 9580 §6.2) without the CRC24 footer: §6.1 says it
	// SHOULD NOT be generated (and MUST NOT after SEIPDv2), and GnuPG,
	// Thunderbird and every reader since RFC 4880 treat it as optional.
	bw.WriteString("-----BEGIN PGP MESSAGE-----\r\n\r\n")
	lines := &lineWrapper{w: bw}
	aw := base64.NewEncoder(base64.StdEncoding, lines)
	// Binary literal data (RFC 9580 §5.9): the entity is already in
	// canonical CRLF form, so no reader converts line endings.
	pt, err := openpgp.Encrypt(aw, []*openpgp.Entity{to}, opt.Signer, &openpgp.FileHints{IsBinary: true}, cfg)
	if err != nil {
		return fmt.Errorf("pgpmime: encrypt: %w", err)
	}
	if _, err := pt.Write(innerHeader(fields, outer.protected)); err != nil {
		return fmt.Errorf("pgpmime: encrypt: %w", err)
	}
	buf := make([]byte, 32<<10)
	if _, err := io.CopyBuffer(&crlfWriter{w: pt}, onlyReader{br}, buf); err != nil {
		return fmt.Errorf("pgpmime: encrypt body: %w", err)
	}
	if err := pt.Close(); err != nil {
		return fmt.Errorf("pgpmime: encrypt: %w", err)
	}
	if err := aw.Close(); err != nil {
		return fmt.Errorf("pgpmime: armor: %w", err)
	}
	lines.finish()
	fmt.Fprintf(bw, "-----END PGP MESSAGE-----\r\n\r\n--%s--\r\n", boundary)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("pgpmime: write: %w", err)
	}
	return nil
}

// lineWrapper breaks base64 text into lines of 64 characters ending in
// CRLF (RFC 9580 §6.2 allows up to 76).
type lineWrapper struct {
	w   *bufio.Writer
	col int
}

const armorLineLen = 64

func (l *lineWrapper) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(armorLineLen-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
		l.col += k
		p = p[k:]
		if l.col == armorLineLen {
			if _, err := l.w.Write(crlf); err != nil {
				return 0, err
			}
			l.col = 0
		}
	}
	return n, nil
}

// finish ends a partial last line.
func (l *lineWrapper) finish() {
	if l.col > 0 {
		l.w.Write(crlf)
		l.col = 0
	}
}

// onlyReader hides WriterTo so io.CopyBuffer uses the given buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// wantsAEAD: the SEIPDv2 packet only for a version 6 key whose direct-key
// self-signature advertises it (Features subpacket, RFC 9580 §5.2.3;
// §5.13.2). Version 4
// keys always get SEIPDv1, which every OpenPGP implementation reads.
func wantsAEAD(to *openpgp.Entity) bool {
	if to.PrimaryKey.Version != 6 {
		return false
	}
	sig, _ := to.PrimarySelfSignature()
	return sig != nil && sig.SEIPDv2
}

type outerResult struct {
	header    []byte
	protected []field // the non-structural outer fields, for HP-Outer
}

// outerHeader builds the unencrypted header section.
func outerHeader(fields []field, keepSubject bool, boundary string) outerResult {
	var b bytes.Buffer
	var res outerResult
	hasMIMEVersion := false
	for _, f := range fields {
		switch {
		case traceFields[f.lower]:
			f.writeTo(&b)
		case f.lower == "subject":
			if !keepSubject {
				f = field{name: f.name, lower: f.lower, value: []byte(" " + ObscuredSubject + "\r\n")}
			}
			f.writeTo(&b)
			res.protected = append(res.protected, f)
		case outerFields[f.lower]:
			f.writeTo(&b)
			if f.lower == "mime-version" {
				hasMIMEVersion = true
			} else {
				res.protected = append(res.protected, f)
			}
		}
	}
	if !hasMIMEVersion {
		b.WriteString("MIME-Version: 1.0\r\n")
	}
	fmt.Fprintf(&b, "Content-Type: multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n boundary=\"%s\"\r\n\r\n", boundary)
	res.header = b.Bytes()
	return res
}

// innerHeader builds the header section of the encrypted entity: the
// original fields (RFC 9788: the Cryptographic Payload's root part carries
// the protected header fields) with the Content-Type marked, then HP-Outer
// copies of what the outside shows (RFC 9788, HP-Outer).
func innerHeader(fields []field, outer []field) []byte {
	var b bytes.Buffer
	haveCT := false
	for _, f := range fields {
		if traceFields[f.lower] || f.lower == "bcc" {
			// Trace fields belong to the transport; Bcc must not reach
			// the recipients (RFC 5322 §3.6.3).
			continue
		}
		if f.lower == "content-type" && !haveCT {
			haveCT = true
			f = field{name: f.name, lower: f.lower, value: markContentType(f.value)}
		}
		f.writeTo(&b)
	}
	if !haveCT {
		// RFC 2045 §5.2: the default type, made explicit to carry the
		// parameters.
		b.WriteString("Content-Type: text/plain; charset=us-ascii;")
		b.WriteString(" hp=\"cipher\"; protected-headers=\"v1\"\r\n")
	}
	for _, f := range outer {
		b.WriteString("HP-Outer: ")
		b.WriteString(f.name)
		b.WriteByte(':')
		b.Write(f.value)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// markContentType appends hp="cipher" and protected-headers="v1" to a raw
// Content-Type value (folding kept), unless already there.
func markContentType(v []byte) []byte {
	trimmed := bytes.TrimRight(v, " \t\r\n")
	var params map[string]string
	if _, p, err := mime.ParseMediaType(unfold(string(trimmed))); err == nil {
		params = p
	}
	out := append([]byte(nil), trimmed...)
	if _, ok := params["hp"]; !ok {
		out = append(out, ";\r\n hp=\"cipher\""...)
	}
	if _, ok := params["protected-headers"]; !ok {
		out = append(out, ";\r\n protected-headers=\"v1\""...)
	}
	return append(out, '\r', '\n')
}

func unfold(s string) string {
	return strings.NewReplacer("\r\n", "", "\n", "").Replace(s)
}

// newBoundary returns a random MIME boundary (RFC 2046 §5.1.1) that cannot
// occur in ASCII armor: armor lines hold only base64, "=" and the
// "-----BEGIN/END" lines.
func newBoundary() (string, error) {
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("pgpmime: boundary: %w", err)
	}
	return "postern-pgp-" + hex.EncodeToString(r[:]), nil
}
