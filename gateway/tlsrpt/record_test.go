package tlsrpt

import (
	"errors"
	"slices"
	"testing"
)

func TestParseRecord(t *testing.T) {
	tests := []struct {
		in     string
		mail   []string
		https  []string
		errors bool
	}{
		{in: "v=TLSRPTv1; rua=mailto:tlsrpt@example.com", mail: []string{"tlsrpt@example.com"}},
		{in: "v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/v1;", mail: []string{"a@example.com"}, https: []string{"https://r.example.com/v1"}},
		{in: "v=TLSRPTv1; rua=mailto:a@example.com , mailto:b@example.net; ext_1=x", mail: []string{"a@example.com", "b@example.net"}},
		{in: "v=TLSRPTv1; rua=mailto:a@example.com%2Cb@example.net", mail: []string{"a@example.com", "b@example.net"}},
		{in: "v=TLSRPTv1; rua=mailto:a@example.com?subject=x", mail: []string{"a@example.com"}},
		{in: "v=TLSRPTv1; rua=http://insecure.example/, https://ok.example/r", https: []string{"https://ok.example/r"}},
		{in: "v=TLSRPTv1; rua=ftp://x.example/", errors: true},
		{in: "v=TLSRPTv1; rua=mailto:not-an-address", errors: true},
		{in: "v=TLSRPTv1", errors: true},
		{in: "v=TLSRPTv1; foo=bar", errors: true},
		{in: "v=TLSRPTv2; rua=mailto:a@example.com", errors: true},
		{in: "v=tlsrptv1; rua=mailto:a@example.com", errors: true},
		{in: " v=TLSRPTv1; rua=mailto:a@example.com", errors: true},
		{in: "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", errors: true},
		{in: "v=TLSRPTv1;; rua=mailto:a@example.com", errors: true},
		{in: "v=TLSRPTv1; rua", errors: true},
		{in: "v=TLSRPTv1; rua=https://user:pw@r.example/", errors: true},
	}
	for _, tt := range tests {
		r, err := ParseRecord(tt.in)
		if tt.errors {
			if err == nil {
				t.Errorf("ParseRecord(%q) = %v, want error", tt.in, r.RUA)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRecord(%q): %v", tt.in, err)
			continue
		}
		if got := r.MailTo(); !slices.Equal(got, tt.mail) {
			t.Errorf("ParseRecord(%q).MailTo() = %q, want %q", tt.in, got, tt.mail)
		}
		if got := r.HTTPS(); !slices.Equal(got, tt.https) {
			t.Errorf("ParseRecord(%q).HTTPS() = %q, want %q", tt.in, got, tt.https)
		}
	}
}

func TestSelectRecord(t *testing.T) {
	good := "v=TLSRPTv1; rua=mailto:r@example.com"
	if r, err := SelectRecord([]string{"v=spf1 -all", good, "something else"}); err != nil || len(r.MailTo()) != 1 {
		t.Errorf("other TXT strings must be ignored: %v", err)
	}
	for _, in := range [][]string{
		nil,
		{"v=spf1 -all"},
		{good, "v=TLSRPTv1; rua=mailto:other@example.com"}, // RFC 8460 §3: more than one → none
		{"v=TLSRPTv1; rua=gopher://x"},
	} {
		if _, err := SelectRecord(in); !errors.Is(err, ErrNoRecord) {
			t.Errorf("SelectRecord(%q) = %v, want ErrNoRecord", in, err)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"v=TLSRPTv1; rua=mailto:tlsrpt@example.com",
		"v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/v1;",
		"v=TLSRPTv1; rua=mailto:a@example.com%2Cb@example.net; x=y",
		"v=TLSRPTv1; rua=mailto:\"a b\"@example.com",
		"v=TLSRPTv1; rua=https://[::1]:8443/%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRecord(s)
		if err != nil {
			return
		}
		if len(r.RUA) == 0 || len(r.RUA) > maxRUA {
			t.Fatalf("ParseRecord(%q): %d destinations", s, len(r.RUA))
		}
		for _, u := range r.RUA {
			if u.Scheme != "mailto" && u.Scheme != "https" {
				t.Fatalf("ParseRecord(%q): scheme %q kept", s, u.Scheme)
			}
		}
		if len(r.MailTo())+len(r.HTTPS()) == 0 {
			t.Fatalf("ParseRecord(%q): no usable destination", s)
		}
	})
}
