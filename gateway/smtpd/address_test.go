package smtpd

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in, local, domain string
		ok                bool
	}{
		{"a@example.org", "a", "example.org", true},
		{"First.Last@Example.ORG", "First.Last", "example.org", true},
		{"\"quoted@local\"@example.org", "\"quoted@local\"", "example.org", true},
		{"jörg@bücher.example", "jörg", "bücher.example", true},
		{"a+tag@sub_domain.example", "a+tag", "sub_domain.example", true},
		{"a@x", "a", "x", true},
		{"", "", "", false},
		{"@example.org", "", "", false},
		{"a@", "", "", false},
		{"no-at", "", "", false},
		{"a@[192.0.2.1]", "", "", false},
		{"a@-x.example", "", "", false},
		{"a@x-.example", "", "", false},
		{"a@x..example", "", "", false},
		{"a@.example", "", "", false},
		{"a@example.", "", "", false},
		{"a@exa mple.org", "", "", false},
		{"a\x00b@example.org", "", "", false},
		{"a\r\nb@example.org", "", "", false},
		{"<a>@example.org", "", "", false},
		{"a@" + strings.Repeat("a", 64) + ".example", "", "", false},
		{strings.Repeat("a", 257) + "@example.org", "", "", false},
		{"a@" + strings.Repeat("abcdefghi.", 26) + "org", "", "", false},
		{"\xff@example.org", "", "", false},
	} {
		local, domain, err := ParseAddress(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseAddress(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (local != tc.local || domain != tc.domain) {
			t.Errorf("ParseAddress(%q) = %q, %q; want %q, %q", tc.in, local, domain, tc.local, tc.domain)
		}
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"a@example.org", "A@EXAMPLE.ORG", "jörg@bücher.example", "\"a@b\"@c.example",
		"@", "a@", "@b", "a@[::1]", "a@b..c", "a@-b", "\xff@x", "a@b@c.example", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		local, domain, err := ParseAddress(addr)
		if err != nil {
			if local != "" || domain != "" {
				t.Fatalf("ParseAddress(%q) returned %q, %q with error %v", addr, local, domain, err)
			}
			return
		}
		if local == "" || domain == "" {
			t.Fatalf("ParseAddress(%q) accepted with empty part: %q, %q", addr, local, domain)
		}
		if domain != strings.ToLower(domain) {
			t.Fatalf("ParseAddress(%q) domain %q not lower-case", addr, domain)
		}
		if !utf8.ValidString(local) || !utf8.ValidString(domain) {
			t.Fatalf("ParseAddress(%q) returned invalid UTF-8", addr)
		}
		if strings.ContainsAny(local+domain, "\x00\r\n<>") || strings.ContainsAny(domain, "@[] ") {
			t.Fatalf("ParseAddress(%q) let a dangerous character through: %q, %q", addr, local, domain)
		}
		// The parts are the input split at its last '@'.
		i := strings.LastIndexByte(addr, '@')
		if addr[:i] != local || strings.ToLower(addr[i+1:]) != domain {
			t.Fatalf("ParseAddress(%q) = %q, %q: not the input's parts", addr, local, domain)
		}
		if err := ValidDomain(domain); err != nil {
			t.Fatalf("ParseAddress(%q) accepted domain %q that ValidDomain refuses: %v", addr, domain, err)
		}
		// Parsing is stable.
		l2, d2, err := ParseAddress(local + "@" + domain)
		if err != nil || l2 != local || d2 != domain {
			t.Fatalf("re-parsing %q@%q = %q, %q, %v", local, domain, l2, d2, err)
		}
	})
}
