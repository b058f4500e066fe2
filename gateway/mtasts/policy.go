// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (RFC 8461): the _mta-sts TXT record, the HTTPS policy fetch, the
// policy format, MX matching and a persistent policy cache refreshed in the
// background.
package mtasts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Policy modes (RFC 8461 §5).
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// MaxAgeLimit is the largest max_age allowed, about one year (RFC 8461 §3.2).
const MaxAgeLimit = 31557600 * time.Second

// MaxPolicySize bounds a policy body; RFC 8461 §3.3 lets senders limit it,
// 64 KiB as the RFC suggests.
const MaxPolicySize = 64 << 10

// Policy is a parsed MTA-STS policy (RFC 8461 §3.2).
type Policy struct {
	Mode   string        `json:"mode"`
	MX     []string      `json:"mx"` // patterns, lowercase; "*.example.net" matches one label
	MaxAge time.Duration `json:"max_age"`
}

// Parse parses a policy body (RFC 8461 §3.2). Lines end in LF or CRLF and
// hold "key: value"; unknown keys are ignored; version, mode and max_age
// are required, and at least one mx unless the mode is none.
func Parse(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("mta-sts policy: larger than %d bytes", MaxPolicySize)
	}
	p := &Policy{}
	var haveVersion, haveAge bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxPolicySize+1)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy line %d: no ':'", n)
		}
		// sts-policy-field-delim = ":" *WSP; trailing WSP tolerated.
		k = strings.TrimSpace(k)
		v = strings.Trim(v, " \t")
		switch k {
		case "version":
			if haveVersion {
				return nil, fmt.Errorf("mta-sts policy line %d: version repeated", n)
			}
			if v != "STSv1" {
				return nil, fmt.Errorf("mta-sts policy line %d: version %q, want STSv1", n, v)
			}
			haveVersion = true
		case "mode":
			if p.Mode != "" {
				return nil, fmt.Errorf("mta-sts policy line %d: mode repeated", n)
			}
			switch v {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = v
			default:
				return nil, fmt.Errorf("mta-sts policy line %d: unknown mode %q", n, v)
			}
		case "max_age":
			if haveAge {
				return nil, fmt.Errorf("mta-sts policy line %d: max_age repeated", n)
			}
			// sts-policy-max-age-value = 1*10(DIGIT), at most 31557600.
			if v == "" || len(v) > 10 || strings.TrimLeft(v, "0123456789") != "" {
				return nil, fmt.Errorf("mta-sts policy line %d: bad max_age %q", n, v)
			}
			secs, err := strconv.ParseInt(v, 10, 64)
			if err != nil || secs > int64(MaxAgeLimit/time.Second) {
				return nil, fmt.Errorf("mta-sts policy line %d: max_age %q out of range", n, v)
			}
			p.MaxAge = time.Duration(secs) * time.Second
			haveAge = true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("mta-sts policy line %d: bad mx pattern %q", n, v)
			}
			p.MX = append(p.MX, pat)
		default:
			// RFC 8461 §3.2: unknown fields are ignored.
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mta-sts policy: %w", err)
	}
	switch {
	case !haveVersion:
		return nil, errors.New("mta-sts policy: no version")
	case p.Mode == "":
		return nil, errors.New("mta-sts policy: no mode")
	case !haveAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return nil, errors.New("mta-sts policy: no mx")
	}
	return p, nil
}

// validPattern checks an mx pattern: a domain name, optionally with a
// leading "*." wildcard label (RFC 8461 §3.2, §4.1).
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, label := range strings.Split(p, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Match reports whether the MX host name matches one of the policy's mx
// patterns (RFC 8461 §4.1): literally, or a "*." pattern matching exactly
// one leftmost label, case-insensitively.
func (p *Policy) Match(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// ParseRecord parses the TXT record at _mta-sts.<domain> (RFC 8461 §3.1)
// and returns its id.
func ParseRecord(txt string) (string, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=STSv1" {
		return "", errors.New("mta-sts record: does not start with v=STSv1")
	}
	id := ""
	for _, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return "", fmt.Errorf("mta-sts record: bad field %q", f)
		}
		if k == "id" {
			if id != "" {
				return "", errors.New("mta-sts record: id repeated")
			}
			// sts-id = 1*32(ALPHA / DIGIT)
			if len(v) < 1 || len(v) > 32 || !alnum(v) {
				return "", fmt.Errorf("mta-sts record: bad id %q", v)
			}
			id = v
		}
	}
	if id == "" {
		return "", errors.New("mta-sts record: no id")
	}
	return id, nil
}

func alnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
