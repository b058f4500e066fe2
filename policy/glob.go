package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// globToRegexp translates an address or domain glob into an anchored,
// case-insensitive RE2 expression. The syntax is path.Match's:
//
//	"*"        any sequence of characters, including none (unlike path.Match, also "/")
//	"?"        any single character
//	"[class]"  one character of the class: c, lo-hi, [^...] negates
//	"\c"       the character c
//
// The pattern must match the whole address (or domain). Translating to RE2
// keeps matching linear in the input, whatever the pattern.
func globToRegexp(pat string) (string, error) {
	var b strings.Builder
	b.WriteString(`(?is)\A`)
	for i := 0; i < len(pat); {
		switch c := pat[i]; c {
		case '*':
			for i < len(pat) && pat[i] == '*' {
				i++
			}
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
			i++
		case '[':
			n, err := globClass(&b, pat[i+1:])
			if err != nil {
				return "", err
			}
			i += 1 + n
		case '\\':
			if i+1 >= len(pat) {
				return "", errors.New("trailing backslash")
			}
			r, size := utf8.DecodeRuneInString(pat[i+1:])
			writeLiteral(&b, r)
			i += 1 + size
		default:
			r, size := utf8.DecodeRuneInString(pat[i:])
			writeLiteral(&b, r)
			i += size
		}
	}
	b.WriteString(`\z`)
	return b.String(), nil
}

// globClass translates the class starting after "[" in s, returning how many
// bytes of s it used (through the closing "]").
func globClass(b *strings.Builder, s string) (int, error) {
	i := 0
	b.WriteByte('[')
	if i < len(s) && s[i] == '^' {
		b.WriteByte('^')
		i++
	}
	items := 0
	for {
		if i >= len(s) {
			return 0, errors.New("unterminated [")
		}
		if s[i] == ']' {
			if items == 0 {
				return 0, errors.New("empty []")
			}
			b.WriteByte(']')
			return i + 1, nil
		}
		lo, n, err := classChar(s[i:])
		if err != nil {
			return 0, err
		}
		i += n
		hi := lo
		if i < len(s) && s[i] == '-' {
			hi, n, err = classChar(s[i+1:])
			if err != nil {
				return 0, err
			}
			i += 1 + n
			if hi < lo {
				return 0, fmt.Errorf("range %c-%c is backwards", lo, hi)
			}
		}
		fmt.Fprintf(b, `\x{%x}`, lo)
		if hi != lo {
			fmt.Fprintf(b, `-\x{%x}`, hi)
		}
		items++
	}
}

// classChar reads one (possibly escaped) character of a class; like
// path.Match, an unescaped "-" or "]" in a character position is an error.
func classChar(s string) (rune, int, error) {
	if s == "" {
		return 0, 0, errors.New("unterminated [")
	}
	switch s[0] {
	case '-', ']':
		return 0, 0, fmt.Errorf("unescaped %q in []", s[0])
	case '\\':
		if len(s) < 2 {
			return 0, 0, errors.New("trailing backslash")
		}
		r, size := utf8.DecodeRuneInString(s[1:])
		return r, 1 + size, nil
	}
	r, size := utf8.DecodeRuneInString(s)
	return r, size, nil
}

func writeLiteral(b *strings.Builder, r rune) {
	if r == utf8.RuneError {
		b.WriteString(`\x{fffd}`)
		return
	}
	if r < utf8.RuneSelf && strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
		b.WriteByte('\\')
	}
	b.WriteRune(r)
}
