package policy

import (
	"context"
	"encoding/base64"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func loadSpec(t *testing.T) *Policy {
	t.Helper()
	p, err := Load(filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatalf("Load spec example: %v", err)
	}
	return p
}

func TestLoadSpecExample(t *testing.T) {
	p := loadSpec(t)
	if !filepath.IsAbs(p.File) || filepath.Base(p.File) != "spec.yaml" {
		t.Errorf("File = %q, want the absolute path", p.File)
	}
	if want := []string{SMIME, PGP, TLS, Portal}; !slices.Equal(p.Methods, want) {
		t.Errorf("Methods = %v, want %v", p.Methods, want)
	}
	if p.TLSLevel != TLSVerify {
		t.Errorf("TLSLevel = %q", p.TLSLevel)
	}
	if d, ok := p.Domains["partner.example"]; !ok || d.TLS != TLSDANE || len(p.Domains) != 1 {
		t.Errorf("Domains = %v", p.Domains)
	}
	type ruleWant struct {
		name    string
		line    int
		methods []string
		onUn    string
		strip   bool
	}
	want := []ruleWant{
		{"confidential", 8, []string{SMIME, PGP, Portal}, "", true},
		{"phi-content", 13, []string{SMIME, PGP, Portal}, "", false},
		{"partner", 17, []string{TLS}, "bounce", false},
		{"no-portal-for-vendors", 21, []string{PGP, TLS}, "", false},
	}
	if len(p.Rules) != len(want) {
		t.Fatalf("%d rules, want %d", len(p.Rules), len(want))
	}
	for i, w := range want {
		r := p.Rules[i]
		if r.Name != w.name || r.Line != w.line || !slices.Equal(r.Methods, w.methods) || r.OnUnavailable != w.onUn || r.StripSubjectTag != w.strip {
			t.Errorf("rule %d = {%q line %d %v %q %v}, want %+v", i, r.Name, r.Line, r.Methods, r.OnUnavailable, r.StripSubjectTag, w)
		}
	}
	if !p.NeedsBody() {
		t.Error("NeedsBody = false with a body_regex rule")
	}
}

func TestDecideSubjectTag(t *testing.T) {
	p := loadSpec(t)
	// "[SECURE] Q3 figures" RFC 2047-encoded: decoded before matching, and
	// matched case-insensitively.
	m, opens := rawMessage(t, "alice@example.org", "Subject: =?UTF-8?Q?=5BSECURE=5D_Q3_figures?=\n\nSSN 123-45-6789\n")
	c := avail(PGP, TLS, Portal)
	d := p.Decide(context.Background(), m, "bob@x.example", c)
	if d.Rule != "confidential" || d.Method != PGP || !slices.Equal(d.Plan, []string{SMIME, PGP, Portal}) {
		t.Fatalf("decision = %+v", d)
	}
	if d.StripSubjectTag != "[SECURE]" {
		t.Errorf("StripSubjectTag = %q, want the tag as written in the subject", d.StripSubjectTag)
	}
	wantC := []Considered{{SMIME, false, "no smime"}, {PGP, true, "pgp available"}, {Portal, true, "portal available"}}
	if !slices.Equal(d.Considered, wantC) {
		t.Errorf("Considered = %v, want %v", d.Considered, wantC)
	}
	if n := opens.Load(); n != 0 {
		t.Errorf("body opened %d times; the first rule matched on the subject", n)
	}
	if got := RemoveSubjectTag("[SECURE] Q3 figures", d.StripSubjectTag); got != "Q3 figures" {
		t.Errorf("RemoveSubjectTag = %q", got)
	}
	// The second tag, mid-subject.
	m = headerMessage("alice@example.org", "Subject", "Re: [Encrypt] contract")
	d = p.Decide(context.Background(), m, "bob@x.example", c)
	if d.Rule != "confidential" || d.StripSubjectTag != "[Encrypt]" {
		t.Errorf("decision = %+v", d)
	}
	if got := RemoveSubjectTag("Re: [Encrypt] contract", d.StripSubjectTag); got != "Re: contract" {
		t.Errorf("RemoveSubjectTag = %q", got)
	}
}

func TestDecideSSNInBase64Part(t *testing.T) {
	p := loadSpec(t)
	text := base64.StdEncoding.EncodeToString([]byte("Dear Bob,\r\nthe patient's SSN is 078-05-1120.\r\n"))
	raw := "From: alice@example.org\nSubject: results\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\n\n" +
		"preamble\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" +
		text[:20] + "\n" + text[20:] + "\n" +
		"--b1\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n" +
		base64.StdEncoding.EncodeToString([]byte("%PDF 111-22-3333")) + "\n--b1--\n"
	m, opens := rawMessage(t, "alice@example.org", raw)
	c := avail(SMIME, PGP, TLS, Portal)
	for _, rcpt := range []string{"bob@x.example", "carol@y.example", "dave@z.example"} {
		d := p.Decide(context.Background(), m, rcpt, c)
		if d.Rule != "phi-content" || d.Method != SMIME {
			t.Errorf("%s: decision = %+v", rcpt, d)
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("body opened %d times for three recipients, want once", n)
	}
	if err := m.BodyErr(); err != nil {
		t.Errorf("BodyErr = %v", err)
	}

	// The same number only in a non-text attachment does not match.
	raw = strings.Replace(raw, text[:20]+"\n"+text[20:], base64.StdEncoding.EncodeToString([]byte("nothing here")), 1)
	m, _ = rawMessage(t, "alice@example.org", raw)
	if d := p.Decide(context.Background(), m, "bob@x.example", c); d.Rule != DefaultRule {
		t.Errorf("SSN only in application/pdf: rule %q, want default", d.Rule)
	}
}

func TestDecidePartner(t *testing.T) {
	p := loadSpec(t)
	c := avail(TLS, Portal)
	m := headerMessage("alice@example.org", "Subject", "hello")
	d := p.Decide(context.Background(), m, "Carol@Partner.Example.", c)
	if d.Rule != "partner" || d.Method != TLS || !slices.Equal(d.Plan, []string{TLS}) {
		t.Fatalf("decision = %+v", d)
	}
	if d.OnUnavailable != OnUnavailableBounce || d.DomainTLS != TLSDANE || d.TLSLevel != TLSDANE {
		t.Errorf("OnUnavailable %q DomainTLS %q TLSLevel %q", d.OnUnavailable, d.DomainTLS, d.TLSLevel)
	}
	// Delivery finds no DANE-valid TLS: nothing left, the caller bounces.
	d2, ok := p.Next(context.Background(), d, TLS, "TLSA records do not match", c)
	if ok || d2.Method != "" {
		t.Fatalf("Next = %+v, %v; want none left", d2, ok)
	}
	want := []Considered{{TLS, true, "decided at delivery"}, {TLS, false, "TLSA records do not match"}}
	if !slices.Equal(d2.Considered, want) {
		t.Errorf("Considered = %v, want %v", d2.Considered, want)
	}
	// The confidential rule comes first, even for the partner.
	m = headerMessage("alice@example.org", "Subject", "[secure] merger")
	if d := p.Decide(context.Background(), m, "carol@partner.example", c); d.Rule != "confidential" || d.DomainTLS != TLSDANE {
		t.Errorf("decision = %+v", d)
	}
}

func TestDecideVendor(t *testing.T) {
	p := loadSpec(t)
	c := avail(TLS, Portal)
	for _, tc := range []struct {
		from, rcpt, rule string
		plan             []string
	}{
		{"billing@example.org", "dave@vendor.example", "no-portal-for-vendors", []string{PGP, TLS}},
		{"<BILLING@Example.ORG>", "Dave@VENDOR.example", "no-portal-for-vendors", []string{PGP, TLS}},
		{"sales@example.org", "dave@vendor.example", DefaultRule, []string{SMIME, PGP, TLS, Portal}},
		{"billing@example.org", "dave@sub.vendor.example", DefaultRule, []string{SMIME, PGP, TLS, Portal}},
		{"", "dave@vendor.example", DefaultRule, []string{SMIME, PGP, TLS, Portal}},
	} {
		d := p.Decide(context.Background(), headerMessage(tc.from), tc.rcpt, c)
		if d.Rule != tc.rule || !slices.Equal(d.Plan, tc.plan) || d.Method != TLS {
			t.Errorf("%s → %s: rule %q plan %v method %q; want %q %v tls", tc.from, tc.rcpt, d.Rule, d.Plan, d.Method, tc.rule, tc.plan)
		}
		if d.TLSLevel != TLSVerify || d.DomainTLS != "" || d.OnUnavailable != "" {
			t.Errorf("%s → %s: %+v", tc.from, tc.rcpt, d)
		}
	}
}

const extended = `
tls: {level: encrypt}
domains:
  strict.example: {tls: verify}
  sts.example: {tls: mta-sts}
  lax.example: {tls: none}
rules:
  - name: classified
    when:
      header: {x-classification: ['^(?i)confidential$', '^restricted$']}
    methods: [smime, portal]
  - name: big-from-finance
    when:
      sender_domain: ["finance.example.org", "*.finance.example.org"]
      size_over: 1000
    methods: [portal]
    on_unavailable: defer
  - name: invoice
    when: {subject_regex: ['^Invoice \d+$'], recipient: ["ap-?@*"]}
    methods: [pgp]
`

func TestDecideHeaderAndOtherMatchers(t *testing.T) {
	p := mustParse(t, extended)
	c := avail(SMIME, PGP, TLS, Portal)
	ctx := context.Background()
	tests := []struct {
		name string
		m    *Message
		rcpt string
		rule string
	}{
		{"header any value", headerMessage("a@example.org", "X-Classification", "public", "X-Classification", "Confidential"), "b@x.example", "classified"},
		{"header second regex", headerMessage("a@example.org", "X-CLASSIFICATION", "restricted"), "b@x.example", "classified"},
		{"header regex anchored", headerMessage("a@example.org", "X-Classification", "not confidential"), "b@x.example", DefaultRule},
		{"header encoded-word", headerMessage("a@example.org", "X-Classification", "=?utf-8?b?Q29uZmlkZW50aWFs?="), "b@x.example", "classified"},
		{"header absent", headerMessage("a@example.org"), "b@x.example", DefaultRule},
		{"size over", &Message{From: "x@Finance.Example.org", Size: 1001}, "b@x.example", "big-from-finance"},
		{"size not over", &Message{From: "x@finance.example.org", Size: 1000}, "b@x.example", DefaultRule},
		{"subdomain glob", &Message{From: "x@eu.finance.example.org", Size: 5000}, "b@x.example", "big-from-finance"},
		{"other domain", &Message{From: "x@notfinance.example.org", Size: 5000}, "b@x.example", DefaultRule},
		{"subject regex and recipient", headerMessage("a@example.org", "Subject", "Invoice 42"), "ap-1@x.example", "invoice"},
		{"recipient ? needs one char", headerMessage("a@example.org", "Subject", "Invoice 42"), "ap-@x.example", DefaultRule},
		{"subject regex no match", headerMessage("a@example.org", "Subject", "Invoice 42 reminder"), "ap-1@x.example", DefaultRule},
	}
	for _, tc := range tests {
		if d := p.Decide(ctx, tc.m, tc.rcpt, c); d.Rule != tc.rule {
			t.Errorf("%s: rule %q, want %q", tc.name, d.Rule, tc.rule)
		}
	}
	d := p.Decide(ctx, &Message{From: "x@finance.example.org", Size: 5000}, "b@x.example", c)
	if d.OnUnavailable != OnUnavailableDefer || d.StripSubjectTag != "" {
		t.Errorf("decision = %+v", d)
	}
}

func TestDecideTLSLevel(t *testing.T) {
	c := avail(TLS)
	ctx := context.Background()
	enc := mustParse(t, extended) // tls.level encrypt
	ver := mustParse(t, strings.Replace(extended, "level: encrypt", "level: verify", 1))
	for _, tc := range []struct {
		p               *Policy
		rcpt            string
		domainTLS, want string
	}{
		{enc, "a@other.example", "", TLSEncrypt},
		{enc, "a@strict.example", TLSVerify, TLSVerify},
		{enc, "a@sts.example", TLSMTASTS, TLSMTASTS},
		{enc, "a@lax.example", TLSNone, TLSEncrypt},
		{ver, "a@lax.example", TLSNone, TLSVerify}, // a domain never lowers the level
		{ver, "a@strict.example", TLSVerify, TLSVerify},
		{Default(), "a@any.example", "", TLSVerify},
	} {
		d := tc.p.Decide(ctx, nil, tc.rcpt, c)
		if d.DomainTLS != tc.domainTLS || d.TLSLevel != tc.want {
			t.Errorf("%s (policy %s): DomainTLS %q TLSLevel %q, want %q %q", tc.rcpt, tc.p.TLSLevel, d.DomainTLS, d.TLSLevel, tc.domainTLS, tc.want)
		}
	}
}

func TestDecideNoneAvailableAndCancel(t *testing.T) {
	p := Default()
	d := p.Decide(context.Background(), nil, "a@x.example", avail())
	if d.Rule != DefaultRule || d.Method != "" || len(d.Considered) != 4 {
		t.Errorf("decision = %+v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := avail(SMIME, PGP, TLS, Portal)
	d = p.Decide(ctx, nil, "a@x.example", c)
	if d.Method != "" || len(c.checked) != 0 {
		t.Errorf("cancelled: method %q, checked %v", d.Method, c.checked)
	}
	for _, k := range d.Considered {
		if k.OK || !strings.Contains(k.Reason, "context canceled") {
			t.Errorf("cancelled: %+v", k)
		}
	}
	d = p.Decide(context.Background(), nil, "a@x.example", nil)
	if d.Method != "" || d.Considered[0].Reason != "no availability checker" {
		t.Errorf("nil checker: %+v", d)
	}
	var nilPolicy *Policy
	if d := nilPolicy.Decide(context.Background(), nil, "a@x.example", c); d.Method != SMIME || d.Rule != DefaultRule {
		t.Errorf("nil policy: %+v", d)
	}
}

func TestNextFallThrough(t *testing.T) {
	p := Default()
	ctx := context.Background()
	c := avail(TLS, Portal)
	d := p.Decide(ctx, nil, "a@x.example", c)
	if d.Method != TLS {
		t.Fatalf("method %q, want tls", d.Method)
	}
	before := slices.Clone(d.Considered)

	d2, ok := p.Next(ctx, d, TLS, "no STARTTLS at mx1.x.example", c)
	if !ok || d2.Method != Portal {
		t.Fatalf("Next = %q, %v; want portal", d2.Method, ok)
	}
	want := append(slices.Clone(before), Considered{TLS, false, "no STARTTLS at mx1.x.example"}, Considered{Portal, true, "portal available"})
	if !slices.Equal(d2.Considered, want) {
		t.Errorf("Considered = %v\nwant %v", d2.Considered, want)
	}
	if !slices.Equal(d.Considered, before) || d.Method != TLS {
		t.Errorf("Next changed its argument: %+v", d)
	}

	// Availability is re-checked: a method that became unavailable is skipped.
	p2 := mustParse(t, "methods: [tls, smime, pgp, portal]\n")
	c2 := avail(TLS, SMIME, PGP, Portal)
	d = p2.Decide(ctx, nil, "a@x.example", c2)
	c2.set(SMIME, false)
	d2, ok = p2.Next(ctx, d, TLS, "certificate expired", c2)
	if !ok || d2.Method != PGP {
		t.Errorf("Next = %q, %v; want pgp", d2.Method, ok)
	}
	if n := len(d2.Considered); n != 4+3 || d2.Considered[5] != (Considered{SMIME, false, "no smime"}) {
		t.Errorf("Considered = %v", d2.Considered)
	}

	// None left after the last.
	d3, ok := p.Next(ctx, d2, Portal, "portal down", c)
	if ok || d3.Method != "" || d3.Considered[len(d3.Considered)-1] != (Considered{Portal, false, "portal down"}) {
		t.Errorf("Next after last = %+v, %v", d3, ok)
	}
	// A method not in the plan leaves nothing to fall to.
	if d4, ok := p.Next(ctx, d, "carrier-pigeon", "no", c); ok || d4.Method != "" {
		t.Errorf("Next(unknown) = %+v, %v", d4, ok)
	}
}

func TestIndexFoldAndRemoveTag(t *testing.T) {
	for _, tc := range []struct {
		s, sub, want string
	}{
		{"Re: [SeCuRe] x", "[secure]", "[SeCuRe]"},
		{"ÄRGER [Sicher]", "[sicher]", "[Sicher]"},
		{"straße", "STRASSE", ""}, // simple folding only, like strings.EqualFold
		{"K\u212Aelvin", "kk", "K\u212A"},
		{"abc", "abcd", ""},
	} {
		i, j := indexFold(tc.s, tc.sub)
		got := ""
		if i >= 0 {
			got = tc.s[i:j]
		}
		if got != tc.want {
			t.Errorf("indexFold(%q, %q) = %q, want %q", tc.s, tc.sub, got, tc.want)
		}
	}
	for _, tc := range []struct{ s, tag, want string }{
		{"Q3 [secure]", "[secure]", "Q3"},
		{"a  [secure]  b", "[secure]", "a b"},
		{"[secure]", "[secure]", ""},
		{"nothing", "[secure]", "nothing"},
		{"x", "", "x"},
	} {
		if got := RemoveSubjectTag(tc.s, tc.tag); got != tc.want {
			t.Errorf("RemoveSubjectTag(%q, %q) = %q, want %q", tc.s, tc.tag, got, tc.want)
		}
	}
}
