package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestParseAllProblems: every problem of a file is reported at once, in line
// order, each as "file:line: problem".
func TestParseAllProblems(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "bad.yaml"))
	if err == nil {
		t.Fatal("Load(bad.yaml) succeeded")
	}
	abs, _ := filepath.Abs(filepath.Join("testdata", "bad.yaml"))
	want := []string{
		`:1: methods: unknown method "plaintext" (want smime, pgp, tls, portal)`,
		`:2: tls.level: "dane" is not one of verify, encrypt`,
		`:4: domains: "partner.example": tls: "strict" is not one of none, encrypt, verify, dane, mta-sts`,
		`:5: domains: "other.example": tls missing`,
		`:6: policy: unknown key "colour" (want methods, tls, domains, rules)`,
		`:11: rule "a": when: unknown key "subjet_regex" (want sender, sender_domain, recipient, recipient_domain, subject_contains, subject_regex, header, body_regex, size_over)`,
		`:12: rule "a": methods: empty list; name at least one of smime, pgp, tls, portal`,
		`:13: duplicate rule name "a" (first at line 8)`,
		`:14: rule "a": when: recipient: bad glob "*@[a-": unterminated [`,
		`:14: rule "a": when: recipient_domain: pattern "x@y.example" contains @; it is matched against the domain only`,
		":14: rule \"a\": when: body_regex: bad regex \"(\": error parsing regexp: missing closing ): `(`",
		`:16: rule "a": on_unavailable: "retry" is not one of defer, bounce`,
		`:17: rule "default": the name "default" is reserved for recipients no rule matches`,
		`:18: rule "default": methods: method "portal" listed twice`,
		`:19: rule "default": strip_subject_tag: want true or false, got "yes"`,
		`:20: rule at line 20: when: size_over: want a number of bytes (a non-negative integer), got "10MB"`,
		`:20: rule at line 20: when: header: "X Bad" is not a header field name`,
		":20: rule at line 20: when: header: X-Ok: bad regex \"[z\": error parsing regexp: missing closing ]: `[z`",
		`:20: rule at line 20: name missing`,
		`:22: rule at line 20: unknown key "extra" (want name, when, methods, on_unavailable, strip_subject_tag)`,
		`:25: rule "after": can never match: rule "catch-all" (line 23) before it matches every message`,
		`:26: rule "after": when: sender: pattern "nobody" has no @ and can match no address (domains go under sender_domain or recipient_domain)`,
	}
	for i := range want {
		want[i] = abs + want[i]
	}
	got := problemStrings(t, err)
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err.Error() != strings.Join(want, "\n") {
		t.Errorf("Error() is not the problems joined by newlines:\n%s", err.Error())
	}
}

// TestParseProblems: each kind of problem alone, with its exact file:line.
func TestParseProblems(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown top key", "method: [tls]\n", `p.yaml:1: policy: unknown key "method" (want methods, tls, domains, rules)`},
		{"unknown rule key", "rules:\n  - name: r\n    methods: [tls]\n    action: bounce\n", `p.yaml:4: rule "r": unknown key "action" (want name, when, methods, on_unavailable, strip_subject_tag)`},
		{"unknown matcher", "rules:\n  - name: r\n    when: {to: [a@b.example]}\n    methods: [tls]\n", `p.yaml:3: rule "r": when: unknown key "to" (want sender, sender_domain, recipient, recipient_domain, subject_contains, subject_regex, header, body_regex, size_over)`},
		{"unknown method", "methods: [tls, none]\n", `p.yaml:1: methods: unknown method "none" (want smime, pgp, tls, portal)`},
		{"unknown method in rule", "rules:\n  - name: r\n    methods:\n      - portal\n      - plain\n", `p.yaml:5: rule "r": methods: unknown method "plain" (want smime, pgp, tls, portal)`},
		{"bad glob", "rules:\n  - name: r\n    when:\n      sender_domain: ['[z-a].example']\n    methods: [tls]\n", `p.yaml:4: rule "r": when: sender_domain: bad glob "[z-a].example": range z-a is backwards`},
		{"bad glob escape", "rules:\n  - name: r\n    when: {recipient: ['*@x\\']}\n    methods: [tls]\n", `p.yaml:3: rule "r": when: recipient: bad glob "*@x\\": trailing backslash`},
		{"bad regex", "rules:\n  - name: r\n    when:\n      subject_regex:\n        - ok\n        - 'a(?<x'\n    methods: [tls]\n", "p.yaml:6: rule \"r\": when: subject_regex: bad regex \"a(?<x\": error parsing regexp: invalid named capture: `(?<x`"},
		{"backreference is not RE2", "rules:\n  - name: r\n    when: {body_regex: ['(a)\\1']}\n    methods: [tls]\n", "p.yaml:3: rule \"r\": when: body_regex: bad regex \"(a)\\\\1\": error parsing regexp: invalid escape sequence: `\\1`"},
		{"duplicate rule name", "rules:\n  - {name: r, methods: [tls], when: {size_over: 1}}\n  - {name: r, methods: [pgp], when: {size_over: 2}}\n", `p.yaml:3: duplicate rule name "r" (first at line 2)`},
		{"empty methods", "methods: []\n", `p.yaml:1: methods: empty list; name at least one of smime, pgp, tls, portal`},
		{"missing methods", "rules:\n  - name: r\n    when: {size_over: 1}\n", `p.yaml:2: rule "r": methods missing`},
		{"bad on_unavailable", "rules:\n  - name: r\n    methods: [tls]\n    on_unavailable: next\n", `p.yaml:4: rule "r": on_unavailable: "next" is not one of defer, bounce`},
		{"bad tls level", "tls:\n  level: none\n", `p.yaml:2: tls.level: "none" is not one of verify, encrypt`},
		{"bad domain tls", "domains:\n  a.example: {tls: maybe}\n", `p.yaml:2: domains: "a.example": tls: "maybe" is not one of none, encrypt, verify, dane, mta-sts`},
		{"bad domain name", "domains:\n  '*.a.example': {tls: dane}\n", `p.yaml:2: domains: "*.a.example": not a domain name`},
		{"duplicate domain", "domains:\n  a.example: {tls: dane}\n  A.Example.: {tls: verify}\n", `p.yaml:3: domains: "A.Example.": domain listed twice (first at line 2)`},
		{"duplicate key", "methods: [tls]\nmethods: [pgp]\n", `p.yaml:2: policy: duplicate key "methods" (first at line 1)`},
		{"strip without subject_contains", "rules:\n  - name: r\n    when: {size_over: 5}\n    methods: [pgp]\n    strip_subject_tag: true\n", `p.yaml:2: rule "r": strip_subject_tag needs a subject_contains matcher`},
		{"empty subject_contains item", "rules:\n  - name: r\n    when: {subject_contains: ['']}\n    methods: [pgp]\n", `p.yaml:3: rule "r": when: subject_contains: empty string would match every subject`},
		{"empty matcher list", "rules:\n  - name: r\n    when: {recipient_domain: []}\n    methods: [pgp]\n", `p.yaml:3: rule "r": when: recipient_domain: empty list never matches`},
		{"negative size", "rules:\n  - name: r\n    when: {size_over: -1}\n    methods: [pgp]\n", `p.yaml:3: rule "r": when: size_over: want a number of bytes (a non-negative integer), got "-1"`},
		{"rules not a list", "rules: {name: r}\n", `p.yaml:1: rules: want a list of rules, got a mapping`},
		{"rule not a mapping", "rules:\n  - confidential\n", `p.yaml:2: rules: each rule must be a mapping with keys name, when, methods, on_unavailable, strip_subject_tag, got a scalar`},
		{"list of lists", "rules:\n  - name: r\n    when: {sender: [[a@b.example]]}\n    methods: [pgp]\n", `p.yaml:3: rule "r": when: sender: list items must be strings, got a list`},
		{"top not a mapping", "- smime\n", `p.yaml:1: policy: want a mapping with keys methods, tls, domains, rules, got a list`},
		{"yaml syntax with line", "methods: [smime\nrules: []\n", `p.yaml:1: YAML: did not find expected ',' or ']'`},
		{"yaml syntax without line", "methods: [tls]\nrules: a: b\n", `p.yaml:2: YAML: mapping values are not allowed in this context`},
		{"two documents", "methods: [tls]\n---\nmethods: [pgp]\n", `p.yaml:2: only one YAML document is allowed`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src), "p.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded; want %s", tc.want)
			}
			got := problemStrings(t, err)
			if len(got) != 1 || got[0] != tc.want {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), tc.want)
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name, src string
		check     func(t *testing.T, p *Policy)
	}{
		{"empty file is the default", "", func(t *testing.T, p *Policy) {
			if !slices.Equal(p.Methods, Default().Methods) || p.TLSLevel != TLSVerify || len(p.Rules) != 0 || p.File != "p.yaml" {
				t.Errorf("%+v", p)
			}
		}},
		{"comments only", "# nothing yet\n", func(t *testing.T, p *Policy) {
			if len(p.Methods) != 4 {
				t.Errorf("%+v", p)
			}
		}},
		{"scalar for a list", "methods: portal\nrules:\n  - {name: r, when: {sender: a@b.example}, methods: tls}\n", func(t *testing.T, p *Policy) {
			if !slices.Equal(p.Methods, []string{Portal}) || !slices.Equal(p.Rules[0].Methods, []string{TLS}) {
				t.Errorf("%+v", p)
			}
		}},
		{"aliases share lists", "rules:\n  - name: a\n    when: {recipient_domain: &partners [a.example, b.example]}\n    methods: [tls]\n  - name: b\n    when: {sender_domain: *partners}\n    methods: [pgp]\n", func(t *testing.T, p *Policy) {
			if len(p.Rules) != 2 || len(p.Rules[1].when.senderDomain) != 2 {
				t.Errorf("%+v", p.Rules)
			}
		}},
		{"catch-all last", "rules:\n  - name: all\n    methods: [portal]\n    on_unavailable: defer\n", func(t *testing.T, p *Policy) {
			if !p.Rules[0].MatchesAll() {
				t.Error("rule without when does not match all")
			}
		}},
		{"domain key normalised", "domains:\n  Partner.Example.: {tls: mta-sts}\n", func(t *testing.T, p *Policy) {
			if p.Domains["partner.example"].TLS != TLSMTASTS {
				t.Errorf("%v", p.Domains)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.src), "p.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tc.check(t, p)
		})
	}
}

func TestParseAliasBudget(t *testing.T) {
	// A 2000-item list shared by 1000 rules expands to 2 million items from
	// a file of under 100 kB: refused, quickly, with one problem.
	var b strings.Builder
	b.WriteString("rules:\n  - name: r0\n    methods: [tls]\n    when:\n      sender: &l\n")
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&b, "        - u%d@example.org\n", i)
	}
	for i := 1; i < 1000; i++ {
		fmt.Fprintf(&b, "  - {name: r%d, when: {sender: *l}, methods: [tls]}\n", i)
	}
	_, err := Parse([]byte(b.String()), "p.yaml")
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	got := problemStrings(t, err)
	if len(got) != 1 || !strings.Contains(got[0], "policy too large: more than 200000 YAML nodes") {
		t.Errorf("problems: %v", got)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte("rules:\n  - name: r\n    methods: [tls]\n    when: {sender: ['*@[']}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	want := path + `:4: rule "r": when: sender: bad glob "*@[": unterminated [`
	if got := problemStrings(t, err); len(got) != 1 || got[0] != want {
		t.Errorf("problems %v, want %s", got, want)
	}
}

func TestProblemString(t *testing.T) {
	if s := (Problem{File: "f", Line: 3, Msg: "m"}).String(); s != "f:3: m" {
		t.Errorf("%q", s)
	}
	if s := (Problem{File: "f", Msg: "m"}).String(); s != "f: m" {
		t.Errorf("%q", s)
	}
}
