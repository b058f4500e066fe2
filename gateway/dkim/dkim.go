// Package dkim signs outgoing mail that postern changed (encrypted copies,
// portal notices, DSNs) with the organisation's DKIM keys (RFC 6376), so
// that DMARC still passes after encryption (SPEC §5a).
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// Key is one delivery.dkim entry.
type Key struct {
	Domain   string // signing domain (d=), matched against the sender's domain
	Selector string // s=
	KeyFile  string // PEM: PKCS#8, PKCS#1 RSA ("RSA PRIVATE KEY") or Ed25519
}

// headerKeys are the header fields signed (RFC 6376 §5.4.1 recommends
// these); a field absent from a message is still listed once, so it
// cannot be added later without breaking the signature (§5.4.2).
var headerKeys = []string{"From", "To", "Cc", "Subject", "Date", "Message-ID",
	"MIME-Version", "Content-Type", "In-Reply-To", "References"}

type signingKey struct {
	selector string
	signer   crypto.Signer
}

// Signer signs messages with the key configured for the sender's domain.
// It is immutable after NewSigner and safe for concurrent use.
type Signer struct {
	keys map[string][]signingKey // by lowercase domain
	// TempDir is where message bodies are spooled while signing; "" means
	// os.TempDir.
	TempDir string
}

// NewSigner loads the keys. RSA keys must have at least 1024 bits
// (RFC 8301 §3.2).
func NewSigner(keys []Key) (*Signer, error) {
	s := &Signer{keys: map[string][]signingKey{}}
	for _, k := range keys {
		if k.Domain == "" || k.Selector == "" {
			return nil, fmt.Errorf("dkim key %s: domain and selector are required", k.KeyFile)
		}
		signer, err := LoadKey(k.KeyFile)
		if err != nil {
			return nil, err
		}
		d := strings.ToLower(strings.TrimSuffix(k.Domain, "."))
		s.keys[d] = append(s.keys[d], signingKey{selector: k.Selector, signer: signer})
	}
	return s, nil
}

// LoadKey reads an RSA or Ed25519 private key from a PEM file.
func LoadKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("dkim key %s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("dkim key %s: unsupported PEM type %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("dkim key %s: RSA key of %d bits, need at least 1024 (RFC 8301 §3.2)", path, k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("dkim key %s: unsupported key type %T", path, key)
}

// Has reports whether a key is configured for domain.
func (s *Signer) Has(domain string) bool {
	return s != nil && len(s.keys[strings.ToLower(strings.TrimSuffix(domain, "."))]) > 0
}

// Sign copies msg to w, prefixed with one DKIM-Signature per key
// configured for senderDomain: relaxed/relaxed canonicalization,
// rsa-sha256 for RSA keys and ed25519-sha256 (RFC 8463) for Ed25519 keys.
// Without a key for the domain the message is copied unchanged. The
// message is spooled to a temporary file, not held in memory.
func (s *Signer) Sign(w io.Writer, msg io.Reader, senderDomain string) error {
	var keys []signingKey
	if s != nil {
		keys = s.keys[strings.ToLower(strings.TrimSuffix(senderDomain, "."))]
	}
	if len(keys) == 0 {
		if _, err := io.Copy(w, msg); err != nil {
			return fmt.Errorf("dkim: copy message: %w", err)
		}
		return nil
	}
	signers := make([]*msgdkim.Signer, 0, len(keys))
	defer func() {
		for _, sg := range signers {
			_ = sg.Close()
		}
	}()
	writers := make([]io.Writer, 0, len(keys)+1)
	for _, k := range keys {
		sg, err := msgdkim.NewSigner(&msgdkim.SignOptions{
			Domain:                 strings.ToLower(strings.TrimSuffix(senderDomain, ".")),
			Selector:               k.selector,
			Signer:                 k.signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
			BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
			HeaderKeys:             headerKeys,
		})
		if err != nil {
			return fmt.Errorf("dkim: %w", err)
		}
		signers = append(signers, sg)
		writers = append(writers, sg)
	}
	tmp, err := os.CreateTemp(s.TempDir, "dkim-*")
	if err != nil {
		return fmt.Errorf("dkim: spool: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	writers = append(writers, tmp)
	if _, err := io.Copy(io.MultiWriter(writers...), msg); err != nil {
		return fmt.Errorf("dkim: read message: %w", err)
	}
	var sigs strings.Builder
	for _, sg := range signers {
		if err := sg.Close(); err != nil {
			return fmt.Errorf("dkim: sign: %w", err)
		}
		sigs.WriteString(sg.Signature())
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("dkim: spool: %w", err)
	}
	if _, err := io.WriteString(w, sigs.String()); err != nil {
		return fmt.Errorf("dkim: write: %w", err)
	}
	if _, err := io.Copy(w, tmp); err != nil {
		return fmt.Errorf("dkim: write: %w", err)
	}
	return nil
}
