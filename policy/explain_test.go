package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

func sampleDecisions(t *testing.T) []Decision {
	t.Helper()
	p := loadSpec(t)
	c := avail(PGP, TLS, Portal)
	c.rcpt["tls carol@partner.example"] = false
	ctx := context.Background()
	m := headerMessage("alice@example.org", "Subject", "[secure] <Q3>")
	return []Decision{
		p.Decide(ctx, m, "bob@x.example", c),
		p.Decide(ctx, headerMessage("alice@example.org"), "carol@partner.example", c),
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, sampleDecisions(t)); err != nil {
		t.Fatal(err)
	}
	// Exactly SPEC §2's keys, nothing more.
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal(buf.Bytes(), &raw); err != nil {
		t.Fatalf("not a JSON array of objects: %v\n%s", err, buf.String())
	}
	for _, obj := range raw {
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"considered", "method", "plan", "rcpt", "rule"}; !slices.Equal(keys, want) {
			t.Errorf("keys %v, want %v", keys, want)
		}
		var cs []map[string]json.RawMessage
		if err := json.Unmarshal(obj["considered"], &cs); err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if len(c) != 3 || c["method"] == nil || c["ok"] == nil || c["reason"] == nil {
				t.Errorf("considered entry %v", c)
			}
		}
	}
	var got []struct {
		Rcpt       string       `json:"rcpt"`
		Rule       string       `json:"rule"`
		Method     string       `json:"method"`
		Plan       []string     `json:"plan"`
		Considered []Considered `json:"considered"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Rule != "confidential" || got[0].Method != PGP || !slices.Equal(got[0].Plan, []string{SMIME, PGP, Portal}) ||
		got[0].Considered[0] != (Considered{SMIME, false, "no smime"}) {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Rcpt != "carol@partner.example" || got[1].Rule != "partner" || got[1].Method != "" || len(got[1].Considered) != 1 {
		t.Errorf("second: %+v", got[1])
	}
	if !strings.Contains(buf.String(), `"method": ""`) {
		t.Errorf("no method is not written as \"\":\n%s", buf.String())
	}

	// Empty input and nil slices give [] rather than null.
	buf.Reset()
	if err := WriteJSON(&buf, nil); err != nil || strings.TrimSpace(buf.String()) != "[]" {
		t.Errorf("WriteJSON(nil) = %q, %v", buf.String(), err)
	}
	buf.Reset()
	if err := WriteJSON(&buf, []Decision{{Rcpt: "a@b"}}); err != nil || strings.Contains(buf.String(), "null") {
		t.Errorf("WriteJSON = %q, %v", buf.String(), err)
	}
}

func TestWriteText(t *testing.T) {
	var buf bytes.Buffer
	ds := sampleDecisions(t)
	ds[0].Considered[2].Reason = "portal\nconfigured\x1b[31m"
	if err := WriteText(&buf, ds); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"bob@x.example\n",
		"  rule:    confidential\n",
		"  plan:    smime → pgp → portal\n",
		"    ✗ smime   no smime\n",
		"    ✓ pgp     pgp available\n",
		"    ✓ portal  portal configured [31m\n",
		"  method:  pgp\n",
		`  subject tag removed: "[secure]"` + "\n",
		"\ncarol@partner.example\n",
		"  rule:    partner\n",
		"  tls:     dane (domain requires dane)\n",
		"    ✗ tls  no tls\n",
		"  method:  none available: the message bounces\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Error("control characters reach the terminal")
	}
	if err := WriteText(failWriter{}, ds); err == nil {
		t.Error("WriteText to a failing writer succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }
