package courier

import (
	"strings"
	"testing"
)

// A malformed header line must not hide the fields below it from the
// policy (a [secure] Subject after a broken line would otherwise be missed
// and the message sent with weaker protection).
func TestReadHeaderLenient(t *testing.T) {
	raw := "Received: from x\r\n\tby y\r\nFrom foo@bar\r\nX-\xff-Bad: v\r\nSubject : [secure] results\r\n\tcontinued\r\nTo: a@b\r\n\r\nbody: not a header\r\n"
	h, err := readHeader(strings.NewReader(raw), maxHeaderBytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Get("Subject"); got != "[secure] results continued" {
		t.Fatalf("Subject = %q", got)
	}
	if h.Get("To") != "a@b" || h.Get("Body") != "" || h.Get("Received") != "from x by y" {
		t.Fatalf("header = %v", h)
	}
	// Header only, no blank line.
	if h, err := readHeader(strings.NewReader("Subject: x"), maxHeaderBytes); err != nil || h.Get("Subject") != "x" {
		t.Fatalf("header-only message: %v %v", h, err)
	}
	// Too large: an error (the caller defers rather than decide on part).
	big := "Subject: a\r\nX: " + strings.Repeat("y", 2000) + "\r\n\r\n"
	if _, err := readHeader(strings.NewReader(big), 1000); err == nil {
		t.Fatal("an over-long header block was accepted")
	}
}
