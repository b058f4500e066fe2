package tlsrpt

import (
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Record is a parsed TLSRPT policy record (RFC 8460 §3).
type Record struct {
	// RUA lists the report destinations in the order published: each a
	// mailto: or https: URI. Other schemes are dropped.
	RUA []*url.URL
}

// MailTo returns the addresses of the mailto: destinations.
func (r *Record) MailTo() []string {
	var out []string
	for _, u := range r.RUA {
		if u.Scheme != "mailto" {
			continue
		}
		out = append(out, mailtoAddrs(u)...)
	}
	return out
}

// HTTPS returns the https: destinations.
func (r *Record) HTTPS() []string {
	var out []string
	for _, u := range r.RUA {
		if u.Scheme == "https" {
			out = append(out, u.String())
		}
	}
	return out
}

// mailtoAddrs returns the valid addresses of a mailto: URI (RFC 6068 §2:
// several addresses separated by commas; the query is ignored).
func mailtoAddrs(u *url.URL) []string {
	raw := u.Opaque
	if raw == "" {
		raw = u.Path
	}
	raw, err := url.PathUnescape(raw)
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range strings.Split(raw, ",") {
		addr, err := mail.ParseAddress(strings.TrimSpace(a))
		// The address goes into a To header and the SMTP envelope: only
		// plain addresses, no spaces, quotes or control characters.
		if err != nil || addr.Name != "" || !strings.Contains(addr.Address, "@") ||
			strings.ContainsFunc(addr.Address, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' || r == '<' || r == '>' }) {
			continue
		}
		out = append(out, addr.Address)
	}
	return out
}

// ErrNoRecord means a domain publishes no (valid, unique) TLSRPT record.
var ErrNoRecord = errors.New("tlsrpt: no TLSRPT record")

// maxRUA bounds the destinations used from one record.
const maxRUA = 10

// ParseRecord parses one TXT record (RFC 8460 §3):
//
//	tlsrpt-record  = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//	tlsrpt-version = %s"v=TLSRPTv1"
//	field-delim    = *WSP ";" *WSP
//	tlsrpt-field   = tlsrpt-rua / tlsrpt-extension
//	tlsrpt-rua     = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//
// Only mailto: and https: URIs are kept (RFC 8460 §3: "mailto:" and
// "https:" are the defined schemes); a record without any is an error.
func ParseRecord(txt string) (*Record, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimRight(fields[0], " \t") != "v=TLSRPTv1" || strings.HasPrefix(fields[0], " ") {
		return nil, fmt.Errorf("tlsrpt record: does not start with v=TLSRPTv1")
	}
	rec := &Record{}
	haveRUA := false
	for i, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" {
			if i == len(fields)-2 {
				break // trailing field-delim
			}
			return nil, fmt.Errorf("tlsrpt record: empty field")
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" || !extName(k) {
			return nil, fmt.Errorf("tlsrpt record: malformed field %q", f)
		}
		if k != "rua" {
			continue // tlsrpt-extension: ignored
		}
		if haveRUA {
			return nil, fmt.Errorf("tlsrpt record: more than one rua")
		}
		haveRUA = true
		for _, s := range strings.Split(v, ",") {
			s = strings.Trim(s, " \t")
			u, err := url.Parse(s)
			if err != nil || s == "" {
				return nil, fmt.Errorf("tlsrpt record: bad rua URI %q", s)
			}
			switch {
			case u.Scheme == "mailto" && len(mailtoAddrs(u)) > 0:
			case u.Scheme == "https" && u.Host != "" && u.User == nil:
			default:
				continue
			}
			if len(rec.RUA) < maxRUA {
				rec.RUA = append(rec.RUA, u)
			}
		}
	}
	if !haveRUA {
		return nil, fmt.Errorf("tlsrpt record: no rua")
	}
	if len(rec.RUA) == 0 {
		return nil, fmt.Errorf("tlsrpt record: no usable mailto: or https: rua")
	}
	return rec, nil
}

// extName: tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
func extName(s string) bool {
	if len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-' && c != '.') {
			return false
		}
	}
	return true
}

// SelectRecord picks the TLSRPT record among the TXT strings of
// _smtp._tls.<domain>: strings not starting with "v=TLSRPTv1" are
// discarded; unless exactly one remains and it parses, the domain does not
// implement TLSRPT (RFC 8460 §3).
func SelectRecord(txts []string) (*Record, error) {
	var cand []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=TLSRPTv1") {
			cand = append(cand, t)
		}
	}
	if len(cand) != 1 {
		return nil, fmt.Errorf("%w: %d candidate records", ErrNoRecord, len(cand))
	}
	r, err := ParseRecord(cand[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoRecord, err)
	}
	return r, nil
}
