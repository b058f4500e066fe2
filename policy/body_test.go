package policy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
)

var ssn = regexp.MustCompile(`\b\d{3}-\d{2}-\d{4}\b`)

var defaultLimits = bodyLimits{text: MaxBodyText, parts: MaxBodyParts, depth: MaxBodyDepth}

func texts(t *testing.T, raw string) []string {
	t.Helper()
	raw = strings.ReplaceAll(raw, "\n", "\r\n")
	out, err := bodyText(strings.NewReader(raw), defaultLimits)
	if err != nil {
		t.Fatalf("bodyText: %v", err)
	}
	return out
}

func TestBodyTextDecoding(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"plain, no MIME", "Subject: x\n\nSSN 078-05-1120\n", "SSN 078-05-1120\r\n"},
		{"no header at all", "\nbody only\n", "body only\r\n"},
		{"quoted-printable soft break", "Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\nSSN 078-05-=\n1120 caf=C3=A9 a=3Db =ZZ end=\n", "SSN 078-05-1120 café a=b =ZZ end"},
		{"quoted-printable soft break with white space", "Content-Transfer-Encoding: Quoted-Printable\n\nab= \t\ncd", "abcd"},
		{"base64 with junk", "Content-Transfer-Encoding: base64\n\n" + "SGVs bG8g\n*d29y\nbGQ=\n", "Hello world"},
		{"latin1", "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nStra=DFe", "Straße"},
		{"cp1252", "Content-Type: text/plain; charset=\"windows-1252\"\nContent-Transfer-Encoding: quoted-printable\n\n=80 100 =93q=94", "€ 100 “q”"},
		{"latin9", "Content-Type: text/plain; charset=iso-8859-15\nContent-Transfer-Encoding: base64\n\n" + base64.StdEncoding.EncodeToString([]byte{0xA4, '5'}), "€5"},
		{"unknown charset passes through", "Content-Type: text/plain; charset=x-klingon\n\n078-05-1120", "078-05-1120"},
		{"invalid content-type is text/plain", "Content-Type: ;;;\n\nvisible", "visible"},
		{"html", "Content-Type: text/html\n\n<p>078-05-1120</p>", "<p>078-05-1120</p>"},
		{"image skipped", "Content-Type: image/png\n\n078-05-1120", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(texts(t, tc.raw), "|")
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBodyTextStructure(t *testing.T) {
	raw := "Content-Type: multipart/mixed; boundary=outer\n\n" +
		"--outer\nContent-Type: multipart/alternative; boundary=\"alt\"\n\n" +
		"--alt\nContent-Type: text/plain\n\nplain part\n" +
		"--alt\nContent-Type: text/html; charset=utf-8\n\n<b>html part</b>\n--alt--\n" +
		"--outer\nContent-Type: message/rfc822\n\nSubject: fwd\nContent-Type: text/plain\n\nforwarded part\n" +
		"--outer\nContent-Type: text/csv\nContent-Disposition: attachment; filename=x.csv\n\ncsv,part\n" +
		"--outer\n\ndefault text/plain part\n" +
		"--outer--\n"
	got := texts(t, raw)
	want := []string{"plain part", "<b>html part</b>", "forwarded part", "csv,part", "default text/plain part"}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("part %d = %q, want %q", i, got[i], want[i])
		}
	}
	// multipart/digest parts default to message/rfc822 (RFC 2046 §5.1.5).
	digest := "Content-Type: multipart/digest; boundary=d\n\n--d\n\nContent-Type: text/plain\n\ndigested\n--d--\n"
	if got := texts(t, digest); len(got) != 1 || got[0] != "digested" {
		t.Errorf("digest: %q", got)
	}
}

func TestBodyTextMalformed(t *testing.T) {
	tests := []struct {
		name, raw string
		found     bool // whether the SSN is found
	}{
		{"missing closing boundary", "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n078-05-1120\n", true},
		{"no boundary parameter", "Content-Type: multipart/mixed\n\n078-05-1120\n", true},
		{"boundary never appears", "Content-Type: multipart/mixed; boundary=b\n\n078-05-1120\n", false},
		{"corrupt base64 after the number", "Content-Transfer-Encoding: base64\n\n" + base64.StdEncoding.EncodeToString([]byte("ssn 078-05-1120 ")) + "=AAAA!!!!====\n", true},
		{"malformed header line", "Subject: x\nthis is not a header\n078-05-1120\n", true},
		{"bad part header", "Content-Type: multipart/mixed; boundary=b\n\n--b\n: no name\n\n078-05-1120\n--b--\n", false},
		{"binary garbage", "Content-Type: text/plain\n\n\x00\xff\xfe 078-05-1120 \x80", true},
		{"truncated mid-header", "Content-Type: multipart/mixed; bound", false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := texts(t, tc.raw)
			if found := anyMatchAny([]*regexp.Regexp{ssn}, got); found != tc.found {
				t.Errorf("found = %v, want %v; texts %q", found, tc.found, got)
			}
		})
	}
}

func TestBodyTextBounds(t *testing.T) {
	t.Run("text", func(t *testing.T) {
		// 3 MiB of text with a number at 2 MiB: not searched.
		filler := strings.Repeat("lorem ipsum dolor sit amet ", 80000)
		raw := "Content-Type: text/plain\n\n" + filler[:2<<20] + " 078-05-1120 " + filler[:1<<20]
		got := texts(t, raw)
		total := 0
		for _, s := range got {
			total += len(s)
		}
		if total > MaxBodyText {
			t.Errorf("kept %d bytes of text, bound %d", total, MaxBodyText)
		}
		if anyMatchAny([]*regexp.Regexp{ssn}, got) {
			t.Error("found a number beyond the text bound")
		}
		if got := texts(t, "\n078-05-1120 "+filler); !anyMatchAny([]*regexp.Regexp{ssn}, got) {
			t.Error("number at the start of a huge body not found")
		}
	})
	t.Run("latin1 expansion", func(t *testing.T) {
		raw := "Content-Type: text/plain; charset=latin1\n\n" + strings.Repeat("\xe9", 2<<20)
		got := texts(t, raw)
		if len(got) != 1 || len(got[0]) > MaxBodyText || len(got[0]) < MaxBodyText-1 {
			t.Errorf("kept %d bytes", len(got[0]))
		}
	})
	t.Run("parts", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/mixed; boundary=b\n\n")
		for i := 0; i < 500; i++ {
			fmt.Fprintf(&b, "--b\nContent-Type: text/plain\n\npart %d\n", i)
			if i == 300 {
				b.WriteString("078-05-1120\n")
			}
		}
		b.WriteString("--b--\n")
		got := texts(t, b.String())
		if len(got) >= MaxBodyParts {
			t.Errorf("%d text parts kept, bound %d entities", len(got), MaxBodyParts)
		}
		if anyMatchAny([]*regexp.Regexp{ssn}, got) {
			t.Error("found a number beyond the part bound")
		}
	})
	t.Run("depth", func(t *testing.T) {
		nest := func(n int) string {
			var b strings.Builder
			for i := 0; i < n; i++ {
				fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n", i, i)
			}
			b.WriteString("Content-Type: text/plain\n\n078-05-1120\n")
			for i := n - 1; i >= 0; i-- {
				fmt.Fprintf(&b, "--b%d--\n", i)
			}
			return b.String()
		}
		if got := texts(t, nest(5)); !anyMatchAny([]*regexp.Regexp{ssn}, got) {
			t.Errorf("5 levels deep: not found in %q", got)
		}
		if got := texts(t, nest(MaxBodyDepth)); !anyMatchAny([]*regexp.Regexp{ssn}, got) {
			t.Errorf("%d levels deep: not found in %q", MaxBodyDepth, got)
		}
		if got := texts(t, nest(MaxBodyDepth+1)); len(got) != 0 {
			t.Errorf("%d levels deep: found %q", MaxBodyDepth+1, got)
		}
		if got := texts(t, nest(5000)); len(got) != 0 {
			t.Errorf("5000 levels deep: found %q", got)
		}
	})
}

type failingReader struct{ after int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), f.after)
	for i := range p[:n] {
		p[i] = 'a'
	}
	f.after -= n
	return n, nil
}

func TestMessageBodyErrors(t *testing.T) {
	p := mustParse(t, "rules:\n  - name: body\n    when: {body_regex: ['x']}\n    methods: [pgp]\n")
	c := avail(PGP, Portal)
	m := &Message{Open: func() (io.ReadCloser, error) { return nil, errors.New("no such spool file") }}
	if d := p.Decide(context.Background(), m, "a@x.example", c); d.Rule != DefaultRule {
		t.Errorf("rule %q", d.Rule)
	}
	if err := m.BodyErr(); err == nil || !strings.Contains(err.Error(), "no such spool file") {
		t.Errorf("BodyErr = %v", err)
	}
	m = &Message{Open: func() (io.ReadCloser, error) { return io.NopCloser(&failingReader{after: 10}), nil }}
	p.Decide(context.Background(), m, "a@x.example", c)
	if err := m.BodyErr(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("BodyErr = %v", err)
	}
	m = &Message{}
	if d := p.Decide(context.Background(), m, "a@x.example", c); d.Rule != DefaultRule || m.BodyErr() != nil {
		t.Errorf("no Open: rule %q, BodyErr %v", d.Rule, m.BodyErr())
	}
	// Malformed MIME is not an error.
	m, _ = rawMessage(t, "", "Content-Type: multipart/mixed; boundary=\n\n--\n")
	p.Decide(context.Background(), m, "a@x.example", c)
	if err := m.BodyErr(); err != nil {
		t.Errorf("BodyErr on malformed MIME = %v", err)
	}
}

func TestDecodeHeaderCharsets(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"=?ISO-8859-1?Q?Stra=DFe?=", "Straße"},
		{"=?windows-1252?Q?=80?=", "€"},
		{"=?x-unknown?Q?abc?=", "abc"},
		{"=?utf-8?B?broken", "=?utf-8?B?broken"},
		{"plain", "plain"},
	} {
		if got := decodeHeader(tc.in); got != tc.want {
			t.Errorf("decodeHeader(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
