package policy

import (
	"context"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

type benchChecker struct{}

func (benchChecker) Available(_ context.Context, method, _ string) (bool, string) {
	return method == TLS, "bench"
}

// BenchmarkDecide200Rules: one recipient decided against a 200-rule policy
// where the matching rule is the last one, so every rule is evaluated
// (globs, subject and header regexes; the body rule is last, so the body is
// read once per message).
func BenchmarkDecide200Rules(b *testing.B) {
	var y strings.Builder
	y.WriteString("methods: [smime, pgp, tls, portal]\nrules:\n")
	for i := 0; i < 199; i++ {
		switch i % 4 {
		case 0:
			fmt.Fprintf(&y, "  - name: r%d\n    when: {recipient_domain: [\"*.d%d.example\"]}\n    methods: [tls]\n", i, i)
		case 1:
			fmt.Fprintf(&y, "  - name: r%d\n    when: {subject_regex: ['ticket-%d\\b']}\n    methods: [pgp, tls]\n", i, i)
		case 2:
			fmt.Fprintf(&y, "  - name: r%d\n    when: {sender: [\"user%d@example.org\"], header: {X-Class: 'c%d'}}\n    methods: [smime]\n", i, i, i)
		case 3:
			fmt.Fprintf(&y, "  - name: r%d\n    when: {subject_contains: [\"[tag%d]\"], size_over: %d}\n    methods: [portal]\n", i, i, 1000+i)
		}
	}
	y.WriteString("  - name: phi\n    when: {body_regex: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']}\n    methods: [smime, pgp, portal]\n")
	p, err := Parse([]byte(y.String()), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	raw := "From: a@example.org\r\nTo: b@x.example\r\nSubject: quarterly results\r\nX-Class: none\r\n\r\n" + strings.Repeat("lorem ipsum dolor sit amet ", 400) + "\r\n"
	hdr := textproto.MIMEHeader{"Subject": {"quarterly results"}, "X-Class": {"none"}}
	newMsg := func() *Message {
		return &Message{From: "a@example.org", Header: hdr, Size: int64(len(raw)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
	}
	// First recipient of a message: includes decoding the 10 KB body.
	b.Run("first-recipient", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if d := p.Decide(context.Background(), newMsg(), "b@x.example", benchChecker{}); d.Rule != DefaultRule {
				b.Fatalf("rule %q", d.Rule)
			}
		}
	})
	// Further recipients of the same message: the body text is cached.
	b.Run("next-recipient", func(b *testing.B) {
		m := newMsg()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if d := p.Decide(context.Background(), m, "b@x.example", benchChecker{}); d.Rule != DefaultRule {
				b.Fatalf("rule %q", d.Rule)
			}
		}
	})
}
