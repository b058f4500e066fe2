package courier

import (
	"io"
	"strings"
	"testing"
)

func TestStripSubjectTag(t *testing.T) {
	cases := []struct{ in, tag, want string }{
		{"Subject: [secure] Lab results\r\nFrom: a@b\r\n\r\nbody [secure]\r\n", "[secure]",
			"Subject: Lab results\r\nFrom: a@b\r\n\r\nbody [secure]\r\n"},
		{"From: a@b\r\nsubject: Re: [SECURE]\r\n  results\r\n\r\nx", "[SECURE]",
			"From: a@b\r\nSubject: Re: results\r\n\r\nx"},
		// Not literally present (encoded word): unchanged.
		{"Subject: =?utf-8?q?=5Bsecure=5D_x?=\r\n\r\nx", "[secure]", "Subject: =?utf-8?q?=5Bsecure=5D_x?=\r\n\r\nx"},
		// No header end at all.
		{"Subject: [secure] only", "[secure]", "Subject: only\r\n"},
	}
	for _, c := range cases {
		b, err := io.ReadAll(stripSubjectTag(strings.NewReader(c.in), c.tag))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != c.want {
			t.Errorf("strip %q from %q:\n got %q\nwant %q", c.tag, c.in, b, c.want)
		}
	}
}
