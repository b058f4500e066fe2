// Package smime builds the copy of a message that postern sends with the
// smime method (SPEC.md §5): an RFC 8551 §3.3 application/pkcs7-mime
// smime-type=enveloped-data message, base64, one copy per recipient, whose
// CMS EnvelopedData (RFC 5652 §6) uses AES-256-CBC (RFC 3565 §4.1) for the
// content and RSA PKCS #1 v1.5 key transport (RFC 3370 §4.2.1) for the
// content-encryption key — what Outlook, Apple Mail, Thunderbird and
// `openssl cms -decrypt` all read.
//
// The encrypted entity carries the original header fields (header
// protection, RFC 9788: the Cryptographic Payload's Content-Type gets
// hp="cipher" and, for today's clients, protected-headers="v1"; HP-Outer
// fields record what the outer header shows). The outer Subject becomes
// "..." unless [Options.KeepSubject].
//
// # go.mozilla.org/pkcs7
//
// That library keeps its content cipher in a package variable that defaults
// to DES. This package sets it to AES-256-CBC once, in init, never per call,
// and Encrypt refuses to run — and checks its own output — should anything
// else in the program have changed it. Its GCM modes are never used (their
// output is non-standard and OpenSSL cannot read it). It panics on a non-RSA
// recipient key, so Encrypt refuses such a certificate before calling it.
//
// # Memory
//
// pkcs7 needs the whole plaintext in memory and copies it while marshalling.
// Encrypt reads the message once into a pre-sized buffer (the inner entity),
// leaves room for the CBC padding so the cipher does not reallocate it, and
// streams the base64 output. One encryption allocates about 5× the message
// size and the heap peaks 4–5× above the message itself, depending on GC
// timing (50 MB: 263 MB allocated, 200–250 MB peak); see TestMemoryBound
// and BenchmarkEncrypt50MB. Signing first adds about 3× more.
package smime

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"

	"go.mozilla.org/pkcs7"

	"github.com/postern-mail/postern/certs/smimecerts"
)

func init() {
	// Once, at start-up: pkcs7.Encrypt reads this package variable, whose
	// default is DES-CBC. Setting it per call would race between
	// goroutines; nothing in postern sets it anywhere else.
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
}

// ErrUnsupportedKey is returned (wrapped) for a recipient certificate whose
// key cannot be used: not RSA, or RSA below smimecerts.MinRSABits.
var ErrUnsupportedKey = errors.New("unsupported recipient key")

// ErrCipherChanged is returned when pkcs7's package-wide content cipher is
// not AES-256-CBC: something else in the program changed it.
var ErrCipherChanged = errors.New("pkcs7 content cipher is not AES-256-CBC")

// Object identifiers checked in the produced EnvelopedData.
var (
	oidEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}      // RFC 5652 §6.1
	oidAES256CBC     = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42} // RFC 3565 §4.1
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}      // RFC 3370 §4.2.1
)

// Options for Encrypt.
type Options struct {
	// KeepSubject leaves the real Subject on the outer header instead of
	// "..." (the policy's choice).
	KeepSubject bool
	// SignerCert and SignerKey, both set, sign the inner entity as the
	// organisation before encrypting (RFC 8551 §3.7 signed-then-enveloped;
	// opaque SignedData, RFC 8551 §3.5.2). SignerChain are intermediates to
	// include. See LoadSigner.
	SignerCert  *x509.Certificate
	SignerKey   crypto.PrivateKey
	SignerChain []*x509.Certificate
}

// Encrypt reads a complete RFC 5322 message (which may start with Received:
// headers) and writes the S/MIME message for one recipient certificate to
// w, with CRLF line endings. It refuses, with an error wrapping
// ErrUnsupportedKey and never a panic, a certificate whose key is not RSA
// of at least 2048 bits. Whether the certificate is otherwise usable
// (validity, address, trust) is smimecerts' judgement, made before.
func Encrypt(w io.Writer, msg io.Reader, to *x509.Certificate, opt Options) error {
	if to == nil {
		return errors.New("smime: no recipient certificate")
	}
	if r := smimecerts.CheckKey(to); r != "" {
		return fmt.Errorf("smime: %w: %s", ErrUnsupportedKey, r)
	}
	if pkcs7.ContentEncryptionAlgorithm != pkcs7.EncryptionAlgorithmAES256CBC {
		return fmt.Errorf("smime: %w", ErrCipherChanged)
	}
	signing := opt.SignerCert != nil || opt.SignerKey != nil
	if signing {
		if err := checkSigner(opt.SignerCert, opt.SignerKey); err != nil {
			return fmt.Errorf("smime: signer: %w", err)
		}
	}

	m, err := readMessage(msg, sizeHint(msg), opt.KeepSubject)
	if err != nil {
		return fmt.Errorf("smime: reading message: %w", err)
	}
	content := m.inner.Bytes()
	if signing {
		content, err = signedEntity(content, opt)
		if err != nil {
			return fmt.Errorf("smime: signing: %w", err)
		}
	}

	der, err := pkcs7.Encrypt(content, []*x509.Certificate{to})
	if err != nil {
		return fmt.Errorf("smime: encrypting: %w", err)
	}
	m.inner = nil // let the plaintext go before the output is written
	if err := checkEnvelope(der); err != nil {
		return fmt.Errorf("smime: refusing own output: %w", err)
	}

	bw := bufio.NewWriterSize(w, 16<<10)
	writeOuterHeader(bw, m.fields, opt.KeepSubject)
	bw.WriteString("MIME-Version: 1.0\r\n")
	bw.WriteString("Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n")
	bw.WriteString("Content-Disposition: attachment; filename=smime.p7m\r\n")
	bw.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
	if err := writeBase64Lines(bw, der); err != nil {
		return fmt.Errorf("smime: writing: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("smime: writing: %w", err)
	}
	return nil
}

// signedEntity wraps the inner entity in an opaque SignedData (RFC 5652
// §5, SHA-256) as an application/pkcs7-mime smime-type=signed-data MIME
// entity (RFC 8551 §3.5.2), ready to be enveloped.
func signedEntity(inner []byte, opt Options) ([]byte, error) {
	sd, err := pkcs7.NewSignedData(inner)
	if err != nil {
		return nil, err
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSignerChain(opt.SignerCert, opt.SignerKey, opt.SignerChain, pkcs7.SignerInfoConfig{}); err != nil {
		return nil, err
	}
	der, err := sd.Finish()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(base64.StdEncoding.EncodedLen(len(der))*78/76 + 256 + 16)
	b.WriteString("Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n")
	b.WriteString("Content-Disposition: attachment; filename=smime.p7m\r\n")
	b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
	bw := bufio.NewWriter(&b)
	if err := writeBase64Lines(bw, der); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// base64 lines of 76 characters (RFC 2045 §6.8): 57 input bytes each.
const (
	b64LineIn  = 57
	b64LineOut = 76
	b64Batch   = 64 // lines per batch
)

func writeBase64Lines(w *bufio.Writer, data []byte) error {
	out := make([]byte, 0, b64Batch*(b64LineOut+2))
	for len(data) > 0 {
		out = out[:0]
		for i := 0; i < b64Batch && len(data) > 0; i++ {
			n := min(len(data), b64LineIn)
			out = base64.StdEncoding.AppendEncode(out, data[:n])
			out = append(out, '\r', '\n')
			data = data[n:]
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	return nil
}

// sizeHint guesses the message size, to size the buffer once.
func sizeHint(r io.Reader) int {
	switch v := r.(type) {
	case interface{ Len() int }:
		return v.Len()
	case *os.File:
		fi, err := v.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return 0
		}
		off, err := v.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0
		}
		return int(max(fi.Size()-off, 0))
	}
	return 0
}

// EnvelopeInfo describes a CMS EnvelopedData, as checked on every output.
type EnvelopeInfo struct {
	ContentCipher asn1.ObjectIdentifier // AES-256-CBC: 2.16.840.1.101.3.4.1.42
	IVLen         int
	KeyTransport  []asn1.ObjectIdentifier // one per recipient: rsaEncryption
}

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

type envelopedData struct {
	Version              int
	RecipientInfos       []keyTransRecipientInfo `asn1:"set"`
	EncryptedContentInfo encryptedContentInfo
}

type keyTransRecipientInfo struct {
	Version                int
	RID                    asn1.RawValue
	KeyEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedKey           []byte
}

type encryptedContentInfo struct {
	ContentType                asn1.ObjectIdentifier
	ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedContent           asn1.RawValue `asn1:"optional"`
}

// InspectEnvelope parses the outer structure of a DER ContentInfo holding
// EnvelopedData (RFC 5652 §6.1) without copying the ciphertext.
func InspectEnvelope(der []byte) (EnvelopeInfo, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil {
		return EnvelopeInfo{}, fmt.Errorf("ContentInfo: %w", err)
	}
	if len(rest) != 0 {
		return EnvelopeInfo{}, errors.New("ContentInfo: trailing data")
	}
	if !ci.ContentType.Equal(oidEnvelopedData) {
		return EnvelopeInfo{}, fmt.Errorf("content type %v is not envelopedData", ci.ContentType)
	}
	var ed envelopedData
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &ed); err != nil {
		return EnvelopeInfo{}, fmt.Errorf("EnvelopedData: %w", err)
	}
	info := EnvelopeInfo{ContentCipher: ed.EncryptedContentInfo.ContentEncryptionAlgorithm.Algorithm}
	var iv []byte
	if _, err := asn1.Unmarshal(ed.EncryptedContentInfo.ContentEncryptionAlgorithm.Parameters.FullBytes, &iv); err == nil {
		info.IVLen = len(iv)
	}
	for _, ri := range ed.RecipientInfos {
		info.KeyTransport = append(info.KeyTransport, ri.KeyEncryptionAlgorithm.Algorithm)
	}
	return info, nil
}

// checkEnvelope is the last guard before anything leaves: AES-256-CBC with
// a 16-byte IV, RSA key transport to exactly one recipient.
func checkEnvelope(der []byte) error {
	info, err := InspectEnvelope(der)
	if err != nil {
		return err
	}
	if !info.ContentCipher.Equal(oidAES256CBC) {
		return fmt.Errorf("%w: content cipher %v", ErrCipherChanged, info.ContentCipher)
	}
	if info.IVLen != 16 {
		return fmt.Errorf("AES-CBC IV of %d bytes", info.IVLen)
	}
	if len(info.KeyTransport) != 1 || !info.KeyTransport[0].Equal(oidRSAEncryption) {
		return fmt.Errorf("key transport %v, want one rsaEncryption", info.KeyTransport)
	}
	return nil
}
