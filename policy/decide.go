package policy

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Checker tells whether a method is available for a recipient; the gateway
// supplies it. For "tls" it answers ok=true with reason "decided at
// delivery": whether the recipient's server meets Decision.TLSLevel is only
// known when delivering, and a failure there goes through Next.
type Checker interface {
	Available(ctx context.Context, method, rcpt string) (ok bool, reason string)
}

// Considered is one method of a plan and why it was taken or refused.
type Considered struct {
	Method string `json:"method"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// Decision is how one recipient's copy is to be protected.
type Decision struct {
	Rcpt            string       `json:"rcpt"`
	Rule            string       `json:"rule"`       // matching rule name, "default" when none matched
	Method          string       `json:"method"`     // first available method in Plan, "" if none
	Plan            []string     `json:"plan"`       // the rule's (or default) methods, in order
	Considered      []Considered `json:"considered"` // one entry per method of Plan, in order; Next appends
	OnUnavailable   string       `json:"-"`          // the rule's on_unavailable: "" (next, else defer) | "defer" | "bounce"
	StripSubjectTag string       `json:"-"`          // the exact tag text to remove from the decoded Subject ("" none)
	DomainTLS       string       `json:"-"`          // the recipient domain's TLS requirement from domains:, "" none
	TLSLevel        string       `json:"-"`          // what the tls method needs, raised to DomainTLS when stricter
}

// Decide evaluates the rules for one recipient of m: the first rule whose
// matchers all hold wins (a list matcher holds when any of its items does);
// with none, the default plan applies. Every method of the plan is checked
// with c, in order, and the first available one is Decision.Method ("" when
// none is: the caller then defers or bounces, per Decision.OnUnavailable).
//
// When ctx is done, the methods not yet checked are recorded as unavailable
// with the context's error; callers should check ctx.Err() before acting on
// a decision without a method. A nil Message is an empty one; a nil Checker
// makes every method unavailable. If a body_regex rule was evaluated,
// m.BodyErr tells whether the body could be read.
func (p *Policy) Decide(ctx context.Context, m *Message, rcpt string, c Checker) Decision {
	if p == nil {
		p = Default()
	}
	if m == nil {
		m = &Message{}
	}
	d := Decision{Rcpt: rcpt, Rule: DefaultRule}
	plan := p.Methods
	ev := &evaluation{m: m, rcpt: normAddr(rcpt), from: normAddr(m.From)}
	for i := range p.Rules {
		r := &p.Rules[i]
		if tag, ok := r.when.match(ev); ok {
			d.Rule = r.Name
			plan = r.Methods
			d.OnUnavailable = r.OnUnavailable
			if r.StripSubjectTag {
				d.StripSubjectTag = tag
			}
			break
		}
	}
	d.Plan = slices.Clone(plan)
	if d.Plan == nil {
		d.Plan = []string{}
	}
	d.DomainTLS = p.Domains[domainOf(ev.rcpt)].TLS
	d.TLSLevel = raiseTLS(p.TLSLevel, d.DomainTLS)
	d.Considered = make([]Considered, 0, len(d.Plan))
	for _, method := range d.Plan {
		ok, reason := available(ctx, c, method, rcpt)
		d.Considered = append(d.Considered, Considered{Method: method, OK: ok, Reason: reason})
		if ok && d.Method == "" {
			d.Method = method
		}
	}
	return d
}

// Next is called at delivery time when method failed turned out unusable
// (for tls: the server did not meet d.TLSLevel) for the reason given. It
// records that in d.Considered and returns d moved to the next available
// method after failed in d.Plan, re-checking availability with c. ok is false
// when no method is left (or failed is not in the plan); d.Method is then ""
// and the caller applies d.OnUnavailable: bounce, or defer. d's slices are
// copied, never modified in place.
func (p *Policy) Next(ctx context.Context, d Decision, failed, reason string, c Checker) (Decision, bool) {
	d.Plan = slices.Clone(d.Plan)
	considered := make([]Considered, len(d.Considered), len(d.Considered)+len(d.Plan)+1)
	copy(considered, d.Considered)
	d.Considered = append(considered, Considered{Method: failed, OK: false, Reason: reason})
	d.Method = ""
	i := slices.Index(d.Plan, failed)
	if i < 0 {
		return d, false
	}
	for _, method := range d.Plan[i+1:] {
		ok, why := available(ctx, c, method, d.Rcpt)
		d.Considered = append(d.Considered, Considered{Method: method, OK: ok, Reason: why})
		if ok {
			d.Method = method
			return d, true
		}
	}
	return d, false
}

func available(ctx context.Context, c Checker, method, rcpt string) (bool, string) {
	if err := ctx.Err(); err != nil {
		return false, "not checked: " + err.Error()
	}
	if c == nil {
		return false, "no availability checker"
	}
	return c.Available(ctx, method, rcpt)
}

// evaluation is one recipient of one message being matched against rules;
// it caches the decoded Subject fields across rules.
type evaluation struct {
	m            *Message
	rcpt, from   string
	subjects     []string
	subjectsDone bool
}

func (ev *evaluation) subject() []string {
	if !ev.subjectsDone {
		ev.subjects = ev.m.subjects()
		ev.subjectsDone = true
	}
	return ev.subjects
}

// match reports whether all matchers hold, and the subject_contains tag as
// it appears in the Subject (when there is that matcher). The cheap matchers
// go first; the body is read only when all others hold.
func (w *matchers) match(ev *evaluation) (string, bool) {
	if w.sender != nil && !anyMatch(w.sender, ev.from) {
		return "", false
	}
	if w.senderDomain != nil && !anyMatch(w.senderDomain, domainOf(ev.from)) {
		return "", false
	}
	if w.recipient != nil && !anyMatch(w.recipient, ev.rcpt) {
		return "", false
	}
	if w.recipientDomain != nil && !anyMatch(w.recipientDomain, domainOf(ev.rcpt)) {
		return "", false
	}
	if w.hasSizeOver && ev.m.Size <= w.sizeOver {
		return "", false
	}
	tag := ""
	if w.subjectContains != nil {
		found := false
		for _, s := range ev.subject() {
			for _, want := range w.subjectContains {
				if i, j := indexFold(s, want); i >= 0 {
					tag, found = s[i:j], true
					break
				}
			}
			if found {
				break
			}
		}
		if !found {
			return "", false
		}
	}
	if w.subjectRegex != nil && !anyMatchAny(w.subjectRegex, ev.subject()) {
		return "", false
	}
	for _, h := range w.header {
		if !anyMatchAny(h.res, ev.m.headerValues(h.name)) {
			return "", false
		}
	}
	if w.bodyRegex != nil && !anyMatchAny(w.bodyRegex, ev.m.bodyTexts()) {
		return "", false
	}
	return tag, true
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

func anyMatchAny(res []*regexp.Regexp, ss []string) bool {
	for _, s := range ss {
		if anyMatch(res, s) {
			return true
		}
	}
	return false
}

// normAddr trims white space and angle brackets from an envelope address.
func normAddr(a string) string {
	a = strings.TrimSpace(a)
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") {
		a = a[1 : len(a)-1]
	}
	return a
}

// domainOf returns the lowercased domain of an address (after the last
// "@", without a trailing dot), or "" when it has none.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(addr[i+1:]), ".")
}

// indexFold finds sub in s ignoring case (Unicode simple folding, as
// strings.EqualFold) and returns the byte span of the match in s, or -1, -1.
func indexFold(s, sub string) (int, int) {
	if sub == "" {
		return 0, 0
	}
	for i := 0; i < len(s); {
		if n, ok := hasPrefixFold(s[i:], sub); ok {
			return i, i + n
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return -1, -1
}

// hasPrefixFold reports whether s starts with prefix ignoring case, and how
// many bytes of s the prefix covers.
func hasPrefixFold(s, prefix string) (int, bool) {
	n := 0
	for _, pr := range prefix {
		if n >= len(s) {
			return 0, false
		}
		sr, size := utf8.DecodeRuneInString(s[n:])
		if !equalFoldRune(sr, pr) {
			return 0, false
		}
		n += size
	}
	return n, true
}

func equalFoldRune(a, b rune) bool {
	if a == b {
		return true
	}
	for r := unicode.SimpleFold(b); r != b; r = unicode.SimpleFold(r) {
		if r == a {
			return true
		}
	}
	return false
}

// RemoveSubjectTag removes the first occurrence of tag (as in
// Decision.StripSubjectTag) from a decoded subject, leaving single spaces
// where it was: "[secure] Q3 figures" becomes "Q3 figures", "Re: [secure]
// Q3" becomes "Re: Q3".
func RemoveSubjectTag(subject, tag string) string {
	if tag == "" {
		return subject
	}
	i := strings.Index(subject, tag)
	if i < 0 {
		return subject
	}
	before := strings.TrimRight(subject[:i], " \t")
	after := strings.TrimLeft(subject[i+len(tag):], " \t")
	if before == "" || after == "" {
		return before + after
	}
	return before + " " + after
}
