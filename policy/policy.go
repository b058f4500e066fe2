package policy

import (
	"net/textproto"
	"regexp"
)

// Methods, in the SPEC's names (SPEC §4).
const (
	SMIME  = "smime"
	PGP    = "pgp"
	TLS    = "tls"
	Portal = "portal"
)

// DefaultRule is the Decision.Rule of a recipient no rule matched. It is
// reserved: no rule may be named so.
const DefaultRule = "default"

// Values of Rule.OnUnavailable and Decision.OnUnavailable.
const (
	OnUnavailableNext   = ""       // default: next method of the plan, else defer
	OnUnavailableDefer  = "defer"  // defer when the chosen method is unavailable
	OnUnavailableBounce = "bounce" // bounce when the chosen method is unavailable
)

// TLS levels: the values of Policy.TLSLevel ("encrypt", "verify"), of
// Domain.TLS (all five) and of Decision.TLSLevel.
const (
	TLSNone    = "none"    // no requirement
	TLSEncrypt = "encrypt" // any STARTTLS session
	TLSVerify  = "verify"  // certificate valid for the MX name, or MTA-STS/DANE-validated
	TLSDANE    = "dane"    // DANE-validated (RFC 7672)
	TLSMTASTS  = "mta-sts" // MTA-STS-validated (RFC 8461)
)

var allMethods = []string{SMIME, PGP, TLS, Portal}

// Policy is a parsed policy file. It must not be modified once in use; it is
// then safe for concurrent use.
type Policy struct {
	File     string            // absolute path, "" for the built-in default
	Methods  []string          // default plan; built-in default [smime pgp tls portal]
	TLSLevel string            // "verify" (default) | "encrypt"
	Domains  map[string]Domain // per-recipient-domain TLS requirement (lowercase key, no trailing dot)
	Rules    []Rule
}

// Domain is the entry of one recipient domain under domains:.
type Domain struct {
	TLS string // none | encrypt | verify | dane | mta-sts
}

// Rule is one entry of rules:.
type Rule struct {
	Name            string
	Line            int // line of the rule in the file
	Methods         []string
	OnUnavailable   string // "" (next method, else defer) | "defer" | "bounce"
	StripSubjectTag bool

	when matchers
}

// MatchesAll reports whether the rule has no matchers, so that it matches
// every recipient of every message.
func (r *Rule) MatchesAll() bool { return r.when.empty() }

// matchers is the compiled when: of a rule. All present matchers must hold;
// a list holds when any of its items does.
type matchers struct {
	sender          []*regexp.Regexp // globs on the envelope sender
	senderDomain    []*regexp.Regexp // globs on the envelope sender's domain
	recipient       []*regexp.Regexp // globs on the recipient
	recipientDomain []*regexp.Regexp // globs on the recipient's domain
	subjectContains []string         // case-insensitive substrings of the decoded Subject
	subjectRegex    []*regexp.Regexp // on the decoded Subject
	header          []headerMatcher  // each must hold
	bodyRegex       []*regexp.Regexp // on the decoded text parts
	sizeOver        int64
	hasSizeOver     bool
}

type headerMatcher struct {
	name string // canonical (textproto.CanonicalMIMEHeaderKey)
	res  []*regexp.Regexp
}

func (m *matchers) empty() bool {
	return m.sender == nil && m.senderDomain == nil && m.recipient == nil &&
		m.recipientDomain == nil && m.subjectContains == nil && m.subjectRegex == nil &&
		m.header == nil && m.bodyRegex == nil && !m.hasSizeOver
}

// Default returns the built-in policy used when no policy file is
// configured: plan [smime pgp tls portal], tls level verify, no domains, no
// rules.
func Default() *Policy {
	return &Policy{
		Methods:  []string{SMIME, PGP, TLS, Portal},
		TLSLevel: TLSVerify,
		Domains:  map[string]Domain{},
	}
}

// NeedsBody reports whether any rule has body_regex, so that deciding may
// read the message body.
func (p *Policy) NeedsBody() bool {
	for i := range p.Rules {
		if p.Rules[i].when.bodyRegex != nil {
			return true
		}
	}
	return false
}

// tlsRank orders TLS levels; dane and mta-sts are both stricter than verify
// and not comparable with each other.
func tlsRank(level string) int {
	switch level {
	case TLSEncrypt:
		return 1
	case TLSVerify:
		return 2
	case TLSDANE, TLSMTASTS:
		return 3
	default: // none, ""
		return 0
	}
}

// raiseTLS returns the level the tls method needs: base (the policy's
// tls.level, "verify" when unset) raised to the domain's requirement when that
// is stricter. It never returns a level below base.
func raiseTLS(base, domain string) string {
	if base == "" {
		base = TLSVerify
	}
	if tlsRank(domain) > tlsRank(base) {
		return domain
	}
	return base
}

// canonicalHeader is textproto's canonical form of a header field name.
func canonicalHeader(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }
