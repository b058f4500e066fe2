package smime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// LoadSigner reads the organisation's signing certificate and key
// (keys.signing.smime_cert / smime_key, PEM). The certificate file may hold
// intermediates after the signer's certificate; they are returned as chain.
// The key must match the certificate and be RSA or ECDSA, and the
// certificate must allow signing mail (RFC 8550 §4.4.2, §4.4.4).
func LoadSigner(certFile, keyFile string) (cert *x509.Certificate, chain []*x509.Certificate, key crypto.PrivateKey, err error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("smime signer: %w", err)
	}
	cert = pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, nil, nil, fmt.Errorf("smime signer %s: %w", certFile, err)
		}
	}
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("smime signer %s: chain: %w", certFile, err)
		}
		chain = append(chain, c)
	}
	if err := checkSigner(cert, pair.PrivateKey); err != nil {
		return nil, nil, nil, fmt.Errorf("smime signer %s: %w", certFile, err)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment) == 0 {
		return nil, nil, nil, fmt.Errorf("smime signer %s: key usage allows neither digitalSignature nor nonRepudiation", certFile)
	}
	if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
		ok := false
		for _, u := range cert.ExtKeyUsage {
			ok = ok || u == x509.ExtKeyUsageEmailProtection || u == x509.ExtKeyUsageAny
		}
		if !ok {
			return nil, nil, nil, fmt.Errorf("smime signer %s: extended key usage lacks emailProtection", certFile)
		}
	}
	return cert, chain, pair.PrivateKey, nil
}

// checkSigner makes sure pkcs7 can sign with key and that key belongs to
// cert, so a misconfiguration is an error rather than a bad signature.
func checkSigner(cert *x509.Certificate, key crypto.PrivateKey) error {
	if cert == nil || key == nil {
		return errors.New("both the certificate and the key are needed")
	}
	var pub crypto.PublicKey
	switch k := key.(type) {
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	case *ecdsa.PrivateKey:
		pub = &k.PublicKey
	default:
		return fmt.Errorf("key type %T not supported for signing (RSA or ECDSA)", key)
	}
	eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(cert.PublicKey) {
		return errors.New("key does not match the certificate")
	}
	return nil
}
