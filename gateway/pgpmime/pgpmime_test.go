package pgpmime

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
)

// testMessage is a message as an MTA hands it over: trace fields first,
// folded fields, an encoded-word Subject, a header that must not show
// outside, a text part in UTF-8 and a binary attachment.
func testMessage(t testing.TB, attachment []byte) (msg, innerHeader, body []byte) {
	t.Helper()
	b64 := base64.StdEncoding.EncodeToString(attachment)
	var att strings.Builder
	for len(b64) > 76 {
		att.WriteString(b64[:76] + "\r\n")
		b64 = b64[76:]
	}
	att.WriteString(b64 + "\r\n")
	trace := "Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n" +
		"\tby gw.example.org with ESMTPS id abc; Thu, 03 Dec 2026 10:00:00 +0000\r\n" +
		"Return-Path: <alice@example.org>\r\n"
	inner := "From: Alice <alice@example.org>\r\n" +
		"To: Bob <bob@x.example>\r\n" +
		"Cc: carol@x.example\r\n" +
		"Subject: =?UTF-8?Q?Quarterly_r=C3=A9sultats?= [secure]\r\n" +
		"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n" +
		"Message-ID: <m1@example.org>\r\n" +
		"In-Reply-To: <m0@example.org>\r\n" +
		"References: <a@example.org>\r\n <m0@example.org>\r\n" +
		"Reply-To: team@example.org\r\n" +
		"X-Secret-Project: Falcon\r\n" +
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel;\r\n\tb=abc\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed;\r\n\tboundary=\"XYZ\"\r\n"
	bodyS := "This is a multi-part message in MIME format.\r\n" +
		"--XYZ\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße — the numbers are attached.\r\n" +
		"From the start of a line, and a trailing space \r\n" +
		"--XYZ\r\n" +
		"Content-Type: application/octet-stream; name=\"data.bin\"\r\n" +
		"Content-Disposition: attachment; filename=\"data.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"\r\n" + att.String() +
		"--XYZ--\r\n"
	msg = []byte(trace + inner + "Bcc: hidden@example.org\r\n" + "\r\n" + bodyS)
	return msg, []byte(inner), []byte(bodyS)
}

// expectedPlaintext is what the recipient decrypts: the original fields
// (Content-Type marked), the HP-Outer copies, the body, all unchanged.
func expectedPlaintext(inner, body []byte, subject string) []byte {
	ct := "Content-Type: multipart/mixed;\r\n\tboundary=\"XYZ\"\r\n"
	h := strings.Replace(string(inner), ct, "Content-Type: multipart/mixed;\r\n\tboundary=\"XYZ\";\r\n hp=\"cipher\";\r\n protected-headers=\"v1\"\r\n", 1)
	h += "HP-Outer: From: Alice <alice@example.org>\r\n" +
		"HP-Outer: To: Bob <bob@x.example>\r\n" +
		"HP-Outer: Cc: carol@x.example\r\n" +
		"HP-Outer: Subject: " + subject + "\r\n" +
		"HP-Outer: Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n" +
		"HP-Outer: Message-ID: <m1@example.org>\r\n" +
		"HP-Outer: In-Reply-To: <m0@example.org>\r\n" +
		"HP-Outer: References: <a@example.org>\r\n <m0@example.org>\r\n" +
		"HP-Outer: Reply-To: team@example.org\r\n"
	return append([]byte(h+"\r\n"), body...)
}

// outerParts checks the RFC 3156 §4 structure and returns the outer
// header and the armored OpenPGP message.
func outerParts(t testing.TB, out []byte) (mail.Header, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("outer message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || params["boundary"] == "" {
		t.Fatalf("outer Content-Type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	p1, err := mr.NextRawPart()
	if err != nil || p1.Header.Get("Content-Type") != "application/pgp-encrypted" {
		t.Fatalf("first part: %v %v", err, p1.Header)
	}
	v, _ := io.ReadAll(p1)
	if strings.TrimSpace(string(v)) != "Version: 1" {
		t.Errorf("first part body %q", v)
	}
	p2, err := mr.NextRawPart()
	if err != nil {
		t.Fatal(err)
	}
	if mt, p, _ := mime.ParseMediaType(p2.Header.Get("Content-Type")); mt != "application/octet-stream" || p["name"] != "encrypted.asc" {
		t.Errorf("second part %v", p2.Header)
	}
	asc, _ := io.ReadAll(p2)
	if _, err := mr.NextRawPart(); err != io.EOF {
		t.Errorf("more than two parts: %v", err)
	}
	if !bytes.HasPrefix(asc, []byte("-----BEGIN PGP MESSAGE-----\r\n")) || !bytes.HasSuffix(asc, []byte("-----END PGP MESSAGE-----\r\n")) {
		t.Errorf("armor framing: %q … %q", asc[:min(40, len(asc))], asc[max(0, len(asc)-40):])
	}
	if bytes.Contains(bytes.ReplaceAll(out, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("output has bare LF line endings")
	}
	return m.Header, asc
}

func checkOuterHeader(t *testing.T, h mail.Header, subject string) {
	t.Helper()
	for name, want := range map[string]string{
		"From": "Alice <alice@example.org>", "To": "Bob <bob@x.example>", "Cc": "carol@x.example",
		"Date": "Thu, 03 Dec 2026 10:00:00 +0000", "Message-Id": "<m1@example.org>",
		"In-Reply-To": "<m0@example.org>", "Reply-To": "team@example.org", "Subject": subject,
		"Return-Path": "<alice@example.org>", "Mime-Version": "1.0",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("outer %s = %q, want %q", name, got, want)
		}
	}
	if !strings.HasPrefix(h.Get("Received"), "from mx.example.org") || h.Get("References") == "" {
		t.Errorf("trace or References field lost: %v", h)
	}
	for _, gone := range []string{"X-Secret-Project", "DKIM-Signature", "Bcc", "Content-Transfer-Encoding"} {
		if h.Get(gone) != "" {
			t.Errorf("outer message shows %s", gone)
		}
	}
}

// TestGPGDecrypts: keys made by GnuPG (ed25519/cv25519 and RSA-3072 with an
// encryption subkey); gpg --decrypt recovers the original header fields,
// body and attachment byte for byte, from a SEIPDv1 (MDC) packet under
// AES-256.
func TestGPGDecrypts(t *testing.T) {
	g := pgptest.New(t)
	attachment := make([]byte, 70000)
	rand.Read(attachment)
	msg, inner, body := testMessage(t, attachment)
	for _, kt := range []struct{ name, uid, algo, sub string }{
		{"ed25519-cv25519", "Bob <bob@x.example>", "ed25519", "cv25519"},
		{"rsa3072", "Bob RSA <bob-rsa@x.example>", "rsa3072", "rsa3072"},
	} {
		t.Run(kt.name, func(t *testing.T) {
			fpr := gpgGenKey(t, g, kt.uid, kt.algo, "sign", kt.sub)
			el, err := openpgp.ReadKeyRing(bytes.NewReader(g.Run(nil, "--export", fpr)))
			if err != nil || len(el) != 1 {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := Encrypt(&out, bytes.NewReader(msg), el[0], Options{}); err != nil {
				t.Fatal(err)
			}
			h, asc := outerParts(t, out.Bytes())
			checkOuterHeader(t, h, "...")

			plain, status := gpgDecrypt(t, g, asc)
			want := expectedPlaintext(inner, body, "...")
			if !bytes.Equal(plain, want) {
				t.Errorf("decrypted text differs\n got %q\nwant %q", head(plain), head(want))
			}
			// SEIPDv1 with MDC (method 2) and AES-256 (algorithm 9),
			// RFC 9580 §9.3; gpg's DECRYPTION_INFO <mdc> <cipher>.
			if !strings.Contains(status, "[GNUPG:] DECRYPTION_INFO 2 9") || !strings.Contains(status, "DECRYPTION_OKAY") || !strings.Contains(status, "GOODMDC") {
				t.Errorf("gpg status:\n%s", status)
			}
			// The attachment, decoded from the decrypted MIME tree.
			if got := attachmentOf(t, plain); !bytes.Equal(got, attachment) {
				t.Errorf("attachment differs (%d vs %d bytes)", len(got), len(attachment))
			}
		})
	}
}

func head(b []byte) []byte {
	if len(b) > 1500 {
		return b[:1500]
	}
	return b
}

func attachmentOf(t *testing.T, plain []byte) []byte {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(plain))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["hp"] != "cipher" || params["protected-headers"] != "v1" {
		t.Fatalf("inner Content-Type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no attachment: %v", err)
		}
		if p.FileName() == "data.bin" {
			data, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
}

// TestGPGVerifiesSignature: with an organisation signing key, gpg reports a
// good signature by it on the decrypted message (RFC 3156 §6.2).
func TestGPGVerifiesSignature(t *testing.T) {
	g := pgptest.New(t)
	rcpt := gpgGenKey(t, g, "Bob <bob@x.example>", "ed25519", "sign", "cv25519")
	org := gpgGenKey(t, g, "Example Org <secure@example.org>", "ed25519", "sign", "")
	el, err := openpgp.ReadKeyRing(bytes.NewReader(g.Run(nil, "--export", rcpt)))
	if err != nil {
		t.Fatal(err)
	}
	signers, err := openpgp.ReadKeyRing(bytes.NewReader(g.Run(nil, "--export-secret-keys", org)))
	if err != nil {
		t.Fatal(err)
	}
	msg, inner, body := testMessage(t, []byte("small"))
	var out bytes.Buffer
	if err := Encrypt(&out, bytes.NewReader(msg), el[0], Options{Signer: signers[0], KeepSubject: true}); err != nil {
		t.Fatal(err)
	}
	h, asc := outerParts(t, out.Bytes())
	subject := "=?UTF-8?Q?Quarterly_r=C3=A9sultats?= [secure]"
	checkOuterHeader(t, h, subject)
	plain, status := gpgDecrypt(t, g, asc)
	if !bytes.Equal(plain, expectedPlaintext(inner, body, subject)) {
		t.Errorf("decrypted text differs\n%q", head(plain))
	}
	if !strings.Contains(status, "[GNUPG:] GOODSIG") || !strings.Contains(status, "VALIDSIG "+org) {
		t.Errorf("no good signature by %s:\n%s", org, status)
	}
}

// newEntity makes a key with go-crypto.
func newEntity(t testing.TB, cfg *packet.Config) *openpgp.Entity {
	t.Helper()
	if cfg == nil {
		cfg = &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, DefaultCipher: packet.CipherAES256}
	}
	e, err := openpgp.NewEntity("Bob", "", "bob@x.example", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// decryptGo decrypts an armored message with go-crypto and returns the
// plaintext and the SEIPD packet version and cipher used.
func decryptGo(t testing.TB, asc []byte, key *openpgp.Entity) (plain []byte, seipd int, cipher packet.CipherFunction) {
	t.Helper()
	blk, err := armor.Decode(bytes.NewReader(asc))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(blk.Body)
	if err != nil {
		t.Fatal(err)
	}
	// Packet by packet: the session key packet, then the encrypted data.
	pr := packet.NewReader(bytes.NewReader(raw))
	p, err := pr.Next()
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := p.(*packet.EncryptedKey)
	if !ok {
		t.Fatalf("first packet %T", p)
	}
	dk := key.Subkeys[0].PrivateKey
	if err := ek.Decrypt(dk, nil); err != nil {
		t.Fatal(err)
	}
	cipher = ek.CipherFunc
	p, err = pr.Next()
	if err != nil {
		t.Fatal(err)
	}
	se, ok := p.(*packet.SymmetricallyEncrypted)
	if !ok {
		t.Fatalf("second packet %T", p)
	}
	seipd = se.Version
	if se.Version == 2 {
		cipher = se.Cipher
	}
	md, err := openpgp.ReadMessage(bytes.NewReader(raw), openpgp.EntityList{key}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err = io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatalf("read plaintext: %v", err)
	}
	return plain, seipd, cipher
}

// TestPacketChoice: a v4 key gets SEIPDv1 with AES-256 even when it
// advertises SEIPDv2; a v6 key advertising SEIPDv2 gets the AEAD packet.
func TestPacketChoice(t *testing.T) {
	msg, inner, body := testMessage(t, []byte("x"))
	want := expectedPlaintext(inner, body, "...")
	aes256 := packet.CipherAES256
	for _, c := range []struct {
		name       string
		cfg        *packet.Config
		wantSEIPD  int
		wantCipher packet.CipherFunction
	}{
		{"v4", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, DefaultCipher: aes256}, 1, aes256},
		{"v4 advertising AEAD", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, DefaultCipher: aes256, AEADConfig: &packet.AEADConfig{}}, 1, aes256},
		{"v4 RSA", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 2048, DefaultCipher: aes256}, 1, aes256},
		// A key whose preferences list only AES-128 (go-crypto's default):
		// the recipient's preferences are honoured (RFC 4880 §13.2, kept
		// by RFC 9580).
		{"v4 preferring AES-128 only", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}, 1, packet.CipherAES128},
		{"v6", &packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519, DefaultCipher: aes256, AEADConfig: &packet.AEADConfig{}}, 2, aes256},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := newEntity(t, c.cfg)
			var out bytes.Buffer
			if err := Encrypt(&out, bytes.NewReader(msg), key, Options{}); err != nil {
				t.Fatal(err)
			}
			_, asc := outerParts(t, out.Bytes())
			plain, seipd, cipher := decryptGo(t, asc, key)
			if seipd != c.wantSEIPD {
				t.Errorf("SEIPD version %d, want %d", seipd, c.wantSEIPD)
			}
			if cipher != c.wantCipher {
				t.Errorf("cipher %v, want %v", cipher, c.wantCipher)
			}
			if !bytes.Equal(plain, want) {
				t.Errorf("plaintext differs: %q", head(plain))
			}
			// RFC 9580 §6.1: no CRC24 footer.
			lines := strings.Split(strings.TrimSpace(string(asc)), "\r\n")
			if crcLine := len(lines) >= 2 && strings.HasPrefix(lines[len(lines)-2], "=") && len(lines[len(lines)-2]) == 5; crcLine {
				t.Errorf("CRC24 footer present")
			}
		})
	}
}

// TestCanonicalLineEndings: a message with bare LF line endings is turned
// into CRLF form before encryption (RFC 3156 §4).
func TestCanonicalLineEndings(t *testing.T) {
	msg, inner, body := testMessage(t, []byte("lf"))
	lf := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	key := newEntity(t, nil)
	var out bytes.Buffer
	if err := Encrypt(&out, bytes.NewReader(lf), key, Options{}); err != nil {
		t.Fatal(err)
	}
	_, asc := outerParts(t, out.Bytes())
	plain, _, _ := decryptGo(t, asc, key)
	if want := expectedPlaintext(inner, body, "..."); !bytes.Equal(plain, want) {
		t.Errorf("plaintext differs:\n%q\n%q", head(plain), head(want))
	}
}

func TestHeaderEdgeCases(t *testing.T) {
	key := newEntity(t, nil)
	cases := []struct {
		name, msg, wantInner string
		wantErr              string
	}{
		{
			name:      "no content-type, no subject, no body separator",
			msg:       "From: a@example.org\r\nTo: b@x.example",
			wantInner: "From: a@example.org\r\nTo: b@x.example\r\nContent-Type: text/plain; charset=us-ascii; hp=\"cipher\"; protected-headers=\"v1\"\r\nHP-Outer: From: a@example.org\r\nHP-Outer: To: b@x.example\r\n\r\n",
		},
		{
			name:      "already marked content-type",
			msg:       "From: a@example.org\r\nContent-Type: text/plain; protected-headers=\"v1\"\r\n\r\nhi\r\n",
			wantInner: "From: a@example.org\r\nContent-Type: text/plain; protected-headers=\"v1\";\r\n hp=\"cipher\"\r\nHP-Outer: From: a@example.org\r\n\r\nhi\r\n",
		},
		{
			name:      "obsolete space before colon, empty body",
			msg:       "Subject : hello\r\nFrom: a@example.org\r\n\r\n",
			wantInner: "Subject:\r\n hello\r\n"[:0] + "Subject: hello\r\nFrom: a@example.org\r\nContent-Type: text/plain; charset=us-ascii; hp=\"cipher\"; protected-headers=\"v1\"\r\nHP-Outer: Subject: ...\r\nHP-Outer: From: a@example.org\r\n\r\n",
		},
		{name: "continuation first", msg: " folded\r\nFrom: a@example.org\r\n\r\n", wantErr: "continuation"},
		{name: "no colon", msg: "From a@example.org Thu Dec 3\r\n\r\n", wantErr: "malformed header line"},
		{name: "bad name", msg: "Fr\x01om: a\r\n\r\n", wantErr: "malformed header field name"},
		{name: "huge header", msg: "X: " + strings.Repeat("a", maxHeaderBytes) + "\r\n\r\n", wantErr: "larger than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Encrypt(&out, strings.NewReader(c.msg), key, Options{})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				if out.Len() != 0 {
					t.Error("output written despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, asc := outerParts(t, out.Bytes())
			plain, _, _ := decryptGo(t, asc, key)
			if string(plain) != c.wantInner {
				t.Errorf("inner\n got %q\nwant %q", plain, c.wantInner)
			}
		})
	}
}

func TestUnusableKeysRefused(t *testing.T) {
	msg, _, _ := testMessage(t, []byte("x"))
	expired := newEntity(t, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, DefaultCipher: packet.CipherAES256, KeyLifetimeSecs: 60})
	later := func() time.Time { return time.Now().Add(time.Hour) }
	var out bytes.Buffer
	if err := Encrypt(&out, bytes.NewReader(msg), expired, Options{Now: later}); err == nil {
		t.Error("expired key used")
	}
	if err := Encrypt(&out, bytes.NewReader(msg), nil, Options{}); err == nil {
		t.Error("nil key accepted")
	}
	key := newEntity(t, nil)
	pubOnly := newEntity(t, nil)
	pubOnly.PrivateKey = nil
	for i := range pubOnly.Subkeys {
		pubOnly.Subkeys[i].PrivateKey = nil
	}
	if err := Encrypt(&out, bytes.NewReader(msg), key, Options{Signer: pubOnly}); err == nil {
		t.Error("signer without private key accepted")
	}
	if out.Len() != 0 {
		t.Error("output written for refused keys")
	}
}

func TestCRLFWriter(t *testing.T) {
	for in, want := range map[string]string{
		"a\nb\n":     "a\r\nb\r\n",
		"a\r\nb\r\n": "a\r\nb\r\n",
		"\n\n":       "\r\n\r\n",
		"a\rb":       "a\rb",
		"":           "",
	} {
		// Every split point, to cover a CR at the end of one write and
		// the LF at the start of the next.
		for cut := 0; cut <= len(in); cut++ {
			var b bytes.Buffer
			w := &crlfWriter{w: &b}
			w.Write([]byte(in[:cut]))
			w.Write([]byte(in[cut:]))
			if b.String() != want {
				t.Errorf("%q cut at %d: %q, want %q", in, cut, b.String(), want)
			}
		}
	}
}
