package policy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
)

// WriteText writes decisions for people (postern explain): per recipient
// the rule, the plan, each method considered with ✓ or ✗ and the reason,
// the TLS level when it matters, and the method chosen.
func WriteText(w io.Writer, ds []Decision) error {
	bw := bufio.NewWriter(w)
	for i, d := range ds {
		if i > 0 {
			bw.WriteString("\n")
		}
		fmt.Fprintf(bw, "%s\n", clean(d.Rcpt))
		fmt.Fprintf(bw, "  rule:    %s\n", clean(d.Rule))
		fmt.Fprintf(bw, "  plan:    %s\n", strings.Join(d.Plan, " → "))
		if slices.Contains(d.Plan, TLS) || d.DomainTLS != "" {
			level := d.TLSLevel
			if level == "" {
				level = TLSVerify
			}
			if d.DomainTLS != "" {
				fmt.Fprintf(bw, "  tls:     %s (domain requires %s)\n", level, d.DomainTLS)
			} else {
				fmt.Fprintf(bw, "  tls:     %s\n", level)
			}
		}
		width := 0
		for _, c := range d.Considered {
			width = max(width, len(c.Method))
		}
		for _, c := range d.Considered {
			mark := "✗"
			if c.OK {
				mark = "✓"
			}
			fmt.Fprintf(bw, "    %s %-*s  %s\n", mark, width, clean(c.Method), clean(c.Reason))
		}
		switch {
		case d.Method != "":
			fmt.Fprintf(bw, "  method:  %s\n", d.Method)
		case d.OnUnavailable == OnUnavailableBounce:
			bw.WriteString("  method:  none available: the message bounces\n")
		default:
			bw.WriteString("  method:  none available: the message is deferred\n")
		}
		if d.OnUnavailable != "" && d.Method != "" {
			fmt.Fprintf(bw, "  on unavailable: %s\n", d.OnUnavailable)
		}
		if d.StripSubjectTag != "" {
			fmt.Fprintf(bw, "  subject tag removed: %q\n", d.StripSubjectTag)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("policy: write explanation: %w", err)
	}
	return nil
}

// clean keeps control characters (from reasons quoting remote servers, or
// addresses) out of terminal output.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// WriteJSON writes decisions as SPEC §2's explain -json output: a JSON array
// with one object per recipient, {"rcpt", "rule", "method", "plan": [...],
// "considered": [{"method", "ok", "reason"}]}.
func WriteJSON(w io.Writer, ds []Decision) error {
	out := make([]Decision, len(ds))
	for i, d := range ds {
		if d.Plan == nil {
			d.Plan = []string{}
		}
		if d.Considered == nil {
			d.Considered = []Considered{}
		}
		out[i] = d
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("policy: write JSON: %w", err)
	}
	return nil
}
