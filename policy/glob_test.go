package policy

import (
	"path"
	"regexp"
	"strings"
	"testing"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pat, s string
		want   bool
	}{
		{"*@vendor.example", "dave@vendor.example", true},
		{"*@vendor.example", "DAVE@Vendor.Example", true},
		{"*@vendor.example", "dave@sub.vendor.example", false},
		{"*@vendor.example", "dave@vendor.example.evil", false},
		{"*@*.vendor.example", "dave@sub.vendor.example", true},
		{"billing@example.org", "billing@example.org", true},
		{"billing@example.org", "billingXexample.org", false},
		{"billing@example.org", "xbilling@example.org", false},
		{"a.b@x", "aXb@x", false}, // "." is literal
		{"a?c@x", "abc@x", true},
		{"a?c@x", "ac@x", false},
		{"a?c@x", "aéc@x", true}, // ? is one character, not one byte
		{"[ab]*@x", "bob@x", true},
		{"[ab]*@x", "cob@x", false},
		{"[^ab]*@x", "cob@x", true},
		{"[a-c]1@x", "B1@x", true},
		{`\*@x`, "*@x", true},
		{`\*@x`, "a@x", false},
		{"*/*@x", "a/b@x", true}, // unlike path.Match, * crosses "/"
		{"*", "", true},
		{"*@x", "line\nbreak@x", true},
		{"(a|b)+@x", "(a|b)+@x", true}, // regexp syntax is literal
		{"(a|b)+@x", "a@x", false},
		{"[\\]]@x", "]@x", true},
		{"*a*a*a*a*a*a*a*a*a*b", strings.Repeat("a", 5000), false},
	}
	for _, tc := range tests {
		src, err := globToRegexp(tc.pat)
		if err != nil {
			t.Errorf("globToRegexp(%q): %v", tc.pat, err)
			continue
		}
		re := regexp.MustCompile(src)
		if got := re.MatchString(tc.s); got != tc.want {
			t.Errorf("glob %q on %q = %v, want %v (regexp %s)", tc.pat, tc.s, got, tc.want, src)
		}
	}
}

func TestGlobBad(t *testing.T) {
	for _, pat := range []string{"[", "[a", "[a-", "[]", "[^]", "a\\", "[z-a]", "[a-]", "[-a]", "[\\"} {
		if src, err := globToRegexp(pat); err == nil {
			t.Errorf("globToRegexp(%q) = %q, want an error", pat, src)
		}
		// path.Match agrees that these are malformed.
		if _, err := path.Match(pat, "x"); err == nil && pat != "[z-a]" {
			t.Errorf("path.Match(%q) accepts it", pat)
		}
	}
}

// FuzzGlob: any pattern either fails to translate or yields a regexp that
// compiles and agrees with path.Match on inputs without "/".
func FuzzGlob(f *testing.F) {
	for _, s := range []string{"*@x.example", "a?c", "[a-c]x", `\*`, "[^a]", "[", "a\\"} {
		f.Add(s, "abc@x.example")
	}
	f.Fuzz(func(t *testing.T, pat, s string) {
		src, err := globToRegexp(pat)
		if err != nil {
			return
		}
		re, err := regexp.Compile(src)
		if err != nil {
			t.Fatalf("glob %q gave a bad regexp %q: %v", pat, src, err)
		}
		if strings.ContainsAny(pat+s, "/") || !isLowerASCII(pat+s) {
			return
		}
		want, err := path.Match(pat, s)
		if err != nil {
			return
		}
		if got := re.MatchString(s); got != want {
			t.Errorf("glob %q on %q = %v, path.Match says %v", pat, s, got, want)
		}
	})
}

func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || ('A' <= s[i] && s[i] <= 'Z') || s[i] < 0x20 {
			return false
		}
	}
	return true
}
