package config

import (
	"errors"
	"fmt"
	"strings"
)

// normalizeDomain lowercases a domain name and drops surrounding space and
// one trailing dot (the root label).
func normalizeDomain(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}

// checkDomain checks a normalized domain name against the preferred name
// syntax of RFC 1035 §2.3.1 as relaxed by RFC 1123 §2.1 (labels may start
// with a digit): labels of 1 to 63 letters, digits and hyphens, not starting
// or ending with a hyphen, 253 octets in all. Internationalized names must
// be given in their A-label (xn--) form (RFC 5890 §2.3.2.1).
func checkDomain(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 characters", truncate(label))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			case r > 0x7f:
				return fmt.Errorf("label %q is not ASCII; use its A-label (xn--…) form", truncate(label))
			default:
				return fmt.Errorf("label %q contains %q", truncate(label), r)
			}
		}
	}
	if allDigits(name[strings.LastIndexByte(name, '.')+1:]) {
		return errors.New("the last label is all digits (an IP address is not a domain name)")
	}
	return nil
}

func allDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// suggest returns the candidate closest to an unknown key, or "" when none
// is close: at most a third of the key's length (and at least 1) edits
// away, after folding case and "-" to "_".
func suggest(key string, candidates []string) string {
	norm := strings.ReplaceAll(strings.ToLower(key), "-", "_")
	limit := max(1, len(norm)/3)
	best, bestDist := "", limit+1
	for _, c := range candidates {
		if dist := editDistance(norm, c, bestDist); dist < bestDist {
			best, bestDist = c, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, or any value ≥ limit
// once it is known to reach limit (keys from untrusted files may be long).
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
