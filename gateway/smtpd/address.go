package smtpd

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// ParseAddress splits an envelope address (RFC 5321 §4.1.2 Mailbox, with
// RFC 6531 UTF-8) into local part and lowercased domain. It is strict enough
// to refuse what could not be routed and never panics on hostile input.
func ParseAddress(addr string) (local, domain string, err error) {
	if len(addr) > 320 || !utf8.ValidString(addr) {
		return "", "", errors.New("address too long or not UTF-8")
	}
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", errors.New("address needs local@domain")
	}
	local, domain = addr[:i], strings.ToLower(addr[i+1:])
	if len(local) > 64*4 {
		return "", "", errors.New("local part too long")
	}
	for _, r := range local {
		if r < ' ' || r == 0x7f || r == '<' || r == '>' {
			return "", "", errors.New("bad character in local part")
		}
	}
	if strings.HasPrefix(domain, "[") {
		// Address literals (RFC 5321 §4.1.3) are not routed by a gateway.
		return "", "", errors.New("address literals are not accepted")
	}
	if err := ValidDomain(domain); err != nil {
		return "", "", err
	}
	return local, domain, nil
}

// ValidDomain checks a domain name's syntax (RFC 1035 §2.3.1 labels, UTF-8
// labels allowed for RFC 6531).
func ValidDomain(d string) error {
	if d == "" || len(d) > 253 {
		return errors.New("bad domain length")
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("bad domain label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("domain label starts or ends with '-'")
		}
		for _, r := range label {
			if r < 0x80 && !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return errors.New("bad character in domain")
			}
		}
	}
	return nil
}
