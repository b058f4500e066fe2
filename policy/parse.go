package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxFileSize bounds what Load reads: a policy file is a few kilobytes.
const maxFileSize = 16 << 20

// maxNodes bounds the YAML nodes visited while walking a policy, counting
// every expansion of an alias: anchors and aliases are allowed (to share a
// list of domains between rules), but a small file must not expand into an
// enormous one.
const maxNodes = 200_000

// Problem is one thing wrong with a policy file.
type Problem struct {
	File string
	Line int // 1-based; 0 when the problem has no line
	Msg  string
}

// String returns "file:line: msg", or "file: msg" when Line is 0.
func (p Problem) String() string {
	if p.Line <= 0 {
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
}

// Error is every problem found in a policy file, in line order. Load and
// Parse return it as *Error.
type Error struct {
	Problems []Problem
}

// Error returns the problems, one per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads and parses the policy file at path; Policy.File and the
// problems' File are the absolute path. A file that cannot be read is an
// error wrapping the os error; a file with problems is an *Error.
func Load(path string) (*Policy, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", path, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", abs, err)
	}
	if len(data) > maxFileSize {
		return nil, &Error{Problems: []Problem{{File: abs, Msg: fmt.Sprintf("file larger than %d bytes", maxFileSize)}}}
	}
	return Parse(data, abs)
}

// Parse parses a policy file's contents; file names it in Policy.File and in
// problems. An empty file (or one holding only comments) is the built-in
// default with File set. Every problem found is reported, in line order, as
// an *Error.
func Parse(data []byte, file string) (*Policy, error) {
	ps := &parser{file: file, res: map[string]compiled{}, globc: map[string]compiled{}}
	pol := Default()
	pol.File = file

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return pol, nil
		}
		ps.yamlError(data, err)
		return nil, ps.err()
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		ps.add(extra.Line, "only one YAML document is allowed")
	case !errors.Is(err, io.EOF):
		ps.yamlError(data, err)
	}
	ps.policy(&doc, pol)
	if len(ps.probs) > 0 {
		return nil, ps.err()
	}
	return pol, nil
}

type compiled struct {
	re  *regexp.Regexp
	err error
}

type parser struct {
	file    string
	probs   []Problem
	nodes   int
	tooBig  bool
	res     map[string]compiled // regexp cache: aliases may repeat patterns
	globc   map[string]compiled // glob cache, by domain flag and pattern
	bigAt   int                 // index in probs of the "too large" problem
	ruleAll *Rule               // an earlier rule that matches everything
}

func (ps *parser) add(line int, format string, args ...any) {
	ps.probs = append(ps.probs, Problem{File: ps.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (ps *parser) err() error {
	if ps.tooBig {
		// Problems found after the walk was cut short are artifacts of it.
		ps.probs = ps.probs[:ps.bigAt+1]
	}
	sort.SliceStable(ps.probs, func(i, j int) bool { return ps.probs[i].Line < ps.probs[j].Line })
	return &Error{Problems: ps.probs}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError records a YAML syntax error. yaml.v3 omits the line from some
// messages; then the line is found as the shortest prefix of the file that
// fails the same way.
func (ps *parser) yamlError(data []byte, err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		ps.add(line, "YAML: %s", m[2])
		return
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	ps.add(errorLine(data, err.Error()), "YAML: %s", msg)
}

// errorLine returns the first line n such that the first n lines of data fail
// to parse with the message want, or 0 when there is none (or data is too
// long to search).
func errorLine(data []byte, want string) int {
	const maxLines, maxBytes = 2000, 256 << 10
	if len(data) > maxBytes {
		return 0
	}
	end := 0
	for n := 1; n <= maxLines && end < len(data); n++ {
		i := bytes.IndexByte(data[end:], '\n')
		if i < 0 {
			end = len(data)
		} else {
			end += i + 1
		}
		dec := yaml.NewDecoder(bytes.NewReader(data[:end]))
		for {
			var n2 yaml.Node
			err := dec.Decode(&n2)
			if err == nil {
				continue
			}
			if err.Error() == want {
				return n
			}
			break
		}
	}
	return 0
}

// visit counts a node against maxNodes; false once the budget is spent.
func (ps *parser) visit(n *yaml.Node) bool {
	ps.nodes++
	if ps.nodes > maxNodes {
		if !ps.tooBig {
			ps.tooBig = true
			ps.bigAt = len(ps.probs)
			ps.add(n.Line, "policy too large: more than %d YAML nodes after expanding aliases", maxNodes)
		}
		return false
	}
	return true
}

// deref follows an alias to its anchored node.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "empty"
		}
		return "a scalar"
	default:
		return "not a value"
	}
}

// mapping walks the key/value pairs of n (which must be a mapping), reporting
// non-scalar and duplicate keys. fn returns false for a key it does not know,
// which is then reported with the allowed keys.
func (ps *parser) mapping(n *yaml.Node, where string, allowed []string, fn func(key string, k, v *yaml.Node) bool) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, "%s: want a mapping, got %s", where, kindName(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if !ps.visit(k) {
			return
		}
		if k.Kind != yaml.ScalarNode {
			ps.add(k.Line, "%s: keys must be scalars", where)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			ps.add(k.Line, "%s: duplicate key %q (first at line %d)", where, k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		if !fn(k.Value, k, v) {
			if allowed == nil {
				ps.add(k.Line, "%s: unknown key %q", where, k.Value)
			} else {
				ps.add(k.Line, "%s: unknown key %q (want %s)", where, k.Value, strings.Join(allowed, ", "))
			}
		}
	}
}

type item struct {
	val  string
	line int
}

// strings reads a scalar or a list of scalars; null items read as "".
func (ps *parser) strings(n *yaml.Node, where string) ([]item, bool) {
	n = deref(n)
	switch n.Kind {
	case yaml.ScalarNode:
		if isNull(n) {
			ps.add(n.Line, "%s: empty; want a list", where)
			return nil, false
		}
		return []item{{n.Value, n.Line}}, true
	case yaml.SequenceNode:
		out := make([]item, 0, len(n.Content))
		ok := true
		for _, c := range n.Content {
			c = deref(c)
			if !ps.visit(c) {
				return nil, false
			}
			if c.Kind != yaml.ScalarNode {
				ps.add(c.Line, "%s: list items must be strings, got %s", where, kindName(c))
				ok = false
				continue
			}
			v := c.Value
			if isNull(c) {
				v = ""
			}
			out = append(out, item{v, c.Line})
		}
		return out, ok
	default:
		ps.add(n.Line, "%s: want a list of strings, got %s", where, kindName(n))
		return nil, false
	}
}

// scalar reads a single scalar value.
func (ps *parser) scalar(n *yaml.Node, where string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || isNull(n) {
		ps.add(n.Line, "%s: want a string, got %s", where, kindName(n))
		return "", false
	}
	return n.Value, true
}

// oneOf reads a scalar that must be one of allowed.
func (ps *parser) oneOf(n *yaml.Node, where string, allowed ...string) (string, bool) {
	v, ok := ps.scalar(n, where)
	if !ok {
		return "", false
	}
	for _, a := range allowed {
		if v == a {
			return v, true
		}
	}
	ps.add(deref(n).Line, "%s: %q is not one of %s", where, v, strings.Join(allowed, ", "))
	return "", false
}

// methods reads a plan: a non-empty list of known methods without repeats.
func (ps *parser) methods(n *yaml.Node, where string) ([]string, bool) {
	items, ok := ps.strings(n, where)
	if !ok {
		return nil, false
	}
	if len(items) == 0 {
		ps.add(deref(n).Line, "%s: empty list; name at least one of %s", where, strings.Join(allMethods, ", "))
		return nil, false
	}
	out := make([]string, 0, len(items))
	seen := map[string]bool{}
	for _, it := range items {
		m := it.val
		known := false
		for _, a := range allMethods {
			known = known || m == a
		}
		switch {
		case !known:
			ps.add(it.line, "%s: unknown method %q (want %s)", where, m, strings.Join(allMethods, ", "))
			ok = false
		case seen[m]:
			ps.add(it.line, "%s: method %q listed twice", where, m)
			ok = false
		default:
			seen[m] = true
			out = append(out, m)
		}
	}
	return out, ok
}

func (ps *parser) regexp(pattern string, line int, where string) (*regexp.Regexp, bool) {
	c, cached := ps.res[pattern]
	if !cached {
		c.re, c.err = regexp.Compile(pattern)
		ps.res[pattern] = c
	}
	if c.err != nil {
		ps.add(line, "%s: bad regex %q: %v", where, pattern, c.err)
		return nil, false
	}
	return c.re, true
}

func (ps *parser) regexps(n *yaml.Node, where string) []*regexp.Regexp {
	items, ok := ps.strings(n, where)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		ps.add(deref(n).Line, "%s: empty list never matches", where)
		return nil
	}
	out := make([]*regexp.Regexp, 0, len(items))
	for _, it := range items {
		if re, ok := ps.regexp(it.val, it.line, where); ok {
			out = append(out, re)
		}
	}
	return out
}

// globs reads glob patterns; domain says whether they match a domain (and so
// must not contain "@") or a whole address.
func (ps *parser) globs(n *yaml.Node, where string, domain bool) []*regexp.Regexp {
	items, ok := ps.strings(n, where)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		ps.add(deref(n).Line, "%s: empty list never matches", where)
		return nil
	}
	out := make([]*regexp.Regexp, 0, len(items))
	for _, it := range items {
		key := fmt.Sprintf("%t %s", domain, it.val)
		c, cached := ps.globc[key]
		if !cached {
			c.re, c.err = compileGlob(it.val, domain)
			ps.globc[key] = c
		}
		if c.err != nil {
			ps.add(it.line, "%s: %v", where, c.err)
			continue
		}
		out = append(out, c.re)
	}
	return out
}

// compileGlob checks and compiles an address (or, with domain, a domain)
// glob; errors are phrased for the policy's author.
func compileGlob(raw string, domain bool) (*regexp.Regexp, error) {
	pat := strings.TrimSpace(raw)
	if domain {
		pat = strings.TrimSuffix(pat, ".")
	}
	if pat == "" {
		return nil, errors.New("empty pattern")
	}
	src, err := globToRegexp(pat)
	switch {
	case err != nil:
		return nil, fmt.Errorf("bad glob %q: %w", raw, err)
	case domain && strings.Contains(pat, "@"):
		return nil, fmt.Errorf("pattern %q contains @; it is matched against the domain only", pat)
	case !domain && !strings.Contains(pat, "@") && !strings.Contains(pat, "*"):
		return nil, fmt.Errorf("pattern %q has no @ and can match no address (domains go under sender_domain or recipient_domain)", pat)
	}
	re, err := regexp.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("bad glob %q: %w", raw, err)
	}
	return re, nil
}

var (
	topKeys    = []string{"methods", "tls", "domains", "rules"}
	ruleKeys   = []string{"name", "when", "methods", "on_unavailable", "strip_subject_tag"}
	whenKeys   = []string{"sender", "sender_domain", "recipient", "recipient_domain", "subject_contains", "subject_regex", "header", "body_regex", "size_over"}
	tlsLevels  = []string{TLSVerify, TLSEncrypt}
	domainTLSs = []string{TLSNone, TLSEncrypt, TLSVerify, TLSDANE, TLSMTASTS}
)

func (ps *parser) policy(doc *yaml.Node, pol *Policy) {
	n := doc
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, "policy: want a mapping with keys %s, got %s", strings.Join(topKeys, ", "), kindName(n))
		return
	}
	ps.mapping(n, "policy", topKeys, func(key string, k, v *yaml.Node) bool {
		switch key {
		case "methods":
			if m, ok := ps.methods(v, "methods"); ok {
				pol.Methods = m
			}
		case "tls":
			ps.mapping(v, "tls", []string{"level"}, func(key string, k, v *yaml.Node) bool {
				if key != "level" {
					return false
				}
				if l, ok := ps.oneOf(v, "tls.level", tlsLevels...); ok {
					pol.TLSLevel = l
				}
				return true
			})
		case "domains":
			ps.domains(v, pol)
		case "rules":
			ps.rules(v, pol)
		default:
			return false
		}
		return true
	})
}

func (ps *parser) domains(n *yaml.Node, pol *Policy) {
	lines := map[string]int{}
	ps.mapping(n, "domains", nil, func(key string, k, v *yaml.Node) bool {
		name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(key)), ".")
		where := fmt.Sprintf("domains: %q", key)
		if name == "" || strings.ContainsAny(name, "@*?[] \t/\\") {
			ps.add(k.Line, "%s: not a domain name", where)
			return true
		}
		if first, dup := lines[name]; dup {
			ps.add(k.Line, "%s: domain listed twice (first at line %d)", where, first)
			return true
		}
		lines[name] = k.Line
		var d Domain
		ps.mapping(v, where, []string{"tls"}, func(key string, k, v *yaml.Node) bool {
			if key != "tls" {
				return false
			}
			if t, ok := ps.oneOf(v, where+": tls", domainTLSs...); ok {
				d.TLS = t
			}
			return true
		})
		if dv := deref(v); dv.Kind == yaml.MappingNode && d.TLS == "" && !hasKey(dv, "tls") {
			ps.add(dv.Line, "%s: tls missing", where)
		}
		pol.Domains[name] = d
		return true
	})
}

func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == key {
			return true
		}
	}
	return false
}

func (ps *parser) rules(n *yaml.Node, pol *Policy) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		ps.add(n.Line, "rules: want a list of rules, got %s", kindName(n))
		return
	}
	names := map[string]int{}
	for _, rn := range n.Content {
		rn = deref(rn)
		if !ps.visit(rn) {
			return
		}
		if r, ok := ps.rule(rn, names); ok {
			pol.Rules = append(pol.Rules, r)
		}
	}
}

func (ps *parser) rule(n *yaml.Node, names map[string]int) (Rule, bool) {
	r := Rule{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, "rules: each rule must be a mapping with keys %s, got %s", strings.Join(ruleKeys, ", "), kindName(n))
		return r, false
	}
	start := len(ps.probs)
	where := fmt.Sprintf("rule at line %d", n.Line)
	// The name first, so that other problems can name the rule.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == "name" {
			v := deref(n.Content[i+1])
			if v.Kind == yaml.ScalarNode && !isNull(v) && strings.TrimSpace(v.Value) != "" {
				r.Name = strings.TrimSpace(v.Value)
				where = fmt.Sprintf("rule %q", r.Name)
			}
			break
		}
	}
	hasMethods := false
	ps.mapping(n, where, ruleKeys, func(key string, k, v *yaml.Node) bool {
		switch key {
		case "name":
			name, ok := ps.scalar(v, where+": name")
			name = strings.TrimSpace(name)
			switch {
			case !ok:
			case name == "":
				ps.add(deref(v).Line, "%s: name is empty", where)
			case name == DefaultRule:
				ps.add(deref(v).Line, "%s: the name %q is reserved for recipients no rule matches", where, DefaultRule)
			default:
				if first, dup := names[name]; dup {
					ps.add(deref(v).Line, "duplicate rule name %q (first at line %d)", name, first)
				} else {
					names[name] = deref(v).Line
				}
			}
		case "when":
			ps.when(v, where+": when", &r.when)
		case "methods":
			hasMethods = true
			r.Methods, _ = ps.methods(v, where+": methods")
		case "on_unavailable":
			r.OnUnavailable, _ = ps.oneOf(v, where+": on_unavailable", OnUnavailableDefer, OnUnavailableBounce)
		case "strip_subject_tag":
			dv := deref(v)
			if dv.Kind != yaml.ScalarNode || dv.Tag != "!!bool" {
				ps.add(dv.Line, "%s: strip_subject_tag: want true or false, got %q", where, dv.Value)
			} else {
				_ = dv.Decode(&r.StripSubjectTag) // a !!bool scalar always decodes
			}
		default:
			return false
		}
		return true
	})
	if !hasKey(n, "name") {
		ps.add(n.Line, "%s: name missing", where)
	}
	if !hasMethods {
		ps.add(n.Line, "%s: methods missing", where)
	}
	if r.StripSubjectTag && r.when.subjectContains == nil {
		ps.add(n.Line, "%s: strip_subject_tag needs a subject_contains matcher", where)
	}
	if ps.ruleAll != nil {
		ps.add(n.Line, "%s: can never match: rule %q (line %d) before it matches every message", where, ps.ruleAll.Name, ps.ruleAll.Line)
	}
	if len(ps.probs) > start {
		return r, false
	}
	if r.when.empty() {
		all := r
		ps.ruleAll = &all
	}
	return r, true
}

func (ps *parser) when(n *yaml.Node, where string, m *matchers) {
	if dn := deref(n); isNull(dn) {
		return // "when:" with nothing: matches everything, like no when
	}
	ps.mapping(n, where, whenKeys, func(key string, k, v *yaml.Node) bool {
		w := where + ": " + key
		switch key {
		case "sender":
			m.sender = nonNil(ps.globs(v, w, false))
		case "sender_domain":
			m.senderDomain = nonNil(ps.globs(v, w, true))
		case "recipient":
			m.recipient = nonNil(ps.globs(v, w, false))
		case "recipient_domain":
			m.recipientDomain = nonNil(ps.globs(v, w, true))
		case "subject_contains":
			items, ok := ps.strings(v, w)
			if !ok {
				break
			}
			if len(items) == 0 {
				ps.add(deref(v).Line, "%s: empty list never matches", w)
				break
			}
			m.subjectContains = []string{}
			for _, it := range items {
				if it.val == "" {
					ps.add(it.line, "%s: empty string would match every subject", w)
					continue
				}
				m.subjectContains = append(m.subjectContains, it.val)
			}
		case "subject_regex":
			m.subjectRegex = nonNil(ps.regexps(v, w))
		case "body_regex":
			m.bodyRegex = nonNil(ps.regexps(v, w))
		case "header":
			ps.headers(v, w, m)
		case "size_over":
			dv := deref(v)
			var size int64
			if dv.Kind != yaml.ScalarNode || dv.Tag != "!!int" || dv.Decode(&size) != nil || size < 0 {
				ps.add(dv.Line, "%s: want a number of bytes (a non-negative integer), got %q", w, dv.Value)
				break
			}
			m.sizeOver, m.hasSizeOver = size, true
		default:
			return false
		}
		return true
	})
}

// nonNil keeps a matcher present (non-nil) even when all its items were bad,
// so that the rule is not mistaken for one matching everything.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// headers reads header: {Name: regex | [regex, ...]}. Every named header must
// match; a list of regexes matches when any does.
func (ps *parser) headers(n *yaml.Node, where string, m *matchers) {
	m.header = []headerMatcher{}
	count := 0
	seen := map[string]int{}
	ps.mapping(n, where, nil, func(key string, k, v *yaml.Node) bool {
		count++
		if !validFieldName(key) {
			ps.add(k.Line, "%s: %q is not a header field name", where, key)
			return true
		}
		name := canonicalHeader(key)
		if first, dup := seen[name]; dup {
			ps.add(k.Line, "%s: header %q listed twice (first at line %d)", where, key, first)
			return true
		}
		seen[name] = k.Line
		res := ps.regexps(v, where+": "+key)
		if len(res) > 0 {
			m.header = append(m.header, headerMatcher{name: name, res: res})
		}
		return true
	})
	if dn := deref(n); dn.Kind == yaml.MappingNode && count == 0 {
		ps.add(dn.Line, "%s: empty mapping never matches", where)
	}
}

// validFieldName: RFC 5322 §3.6.8, printable US-ASCII except ":".
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}
