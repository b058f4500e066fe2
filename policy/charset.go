package policy

import (
	"strings"
	"unicode/utf8"
)

// charsetKind classifies a MIME charset name (RFC 2046 §4.1.2) into the
// decodings the engine knows.
type charsetKind int

const (
	charsetRaw    charsetKind = iota // UTF-8, US-ASCII, or unknown: bytes as they are
	charsetLatin1                    // ISO-8859-1
	charsetLatin9                    // ISO-8859-15
	charsetCP1252                    // windows-1252, what Outlook often declares
)

func classifyCharset(name string) charsetKind {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(name), `"`)) {
	case "iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "iso-ir-100", "cp819", "ibm819":
		return charsetLatin1
	case "iso-8859-15", "iso8859-15", "iso_8859-15", "latin-9", "latin9", "l9":
		return charsetLatin9
	case "windows-1252", "cp1252", "x-cp1252":
		return charsetCP1252
	default:
		return charsetRaw
	}
}

// cp1252 maps windows-1252 bytes 0x80-0x9F; the five undefined bytes map to
// the C1 control of the same value, as the WHATWG encoding standard does.
var cp1252 = [32]rune{
	0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
	0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
}

// latin9 lists where ISO-8859-15 differs from ISO-8859-1.
func latin9(c byte) rune {
	switch c {
	case 0xA4:
		return 0x20AC
	case 0xA6:
		return 0x0160
	case 0xA8:
		return 0x0161
	case 0xB4:
		return 0x017D
	case 0xB8:
		return 0x017E
	case 0xBC:
		return 0x0152
	case 0xBD:
		return 0x0153
	case 0xBE:
		return 0x0178
	}
	return rune(c)
}

// decodeCharset converts text in the named charset to UTF-8. UTF-8, ASCII
// and charsets it does not know are returned as they are (regular
// expressions then see invalid bytes as U+FFFD, and ASCII still matches).
func decodeCharset(charset string, data []byte) string {
	kind := classifyCharset(charset)
	if kind == charsetRaw {
		return string(data)
	}
	var b strings.Builder
	b.Grow(len(data) + len(data)/4)
	for _, c := range data {
		switch {
		case c < 0x80:
			b.WriteByte(c)
		case kind == charsetCP1252 && c < 0xA0:
			b.WriteRune(cp1252[c-0x80])
		case kind == charsetLatin9:
			b.WriteRune(latin9(c))
		default:
			b.WriteRune(rune(c))
		}
	}
	return b.String()
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); i++ {
		n--
	}
	return s[:n]
}
