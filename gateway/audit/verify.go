package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// VerifyError names the first line of a log that fails verification.
type VerifyError struct {
	Line   int    // 1-based line number
	Reason string // what is wrong with it
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: line %d: %s", e.Line, e.Reason)
}

// Verify checks a whole log: every line is newline-terminated, carries a hash
// that matches its bytes, parses as a record, and has prev equal to the hash
// of the line before it ([GenesisPrev] for line 1). It returns the number of
// good records; on the first problem it returns the count so far and a
// *VerifyError. I/O errors from r are returned wrapped, not as *VerifyError.
// An empty log verifies with 0 records. On a log that is being appended to,
// a write in progress can show up as an incomplete last line. See the
// package documentation for what the chain can and cannot detect.
func Verify(r io.Reader) (int, error) {
	n, _, err := VerifyChain(r)
	return n, err
}

// VerifyChain is [Verify] that also returns the hash of the last good record
// ([GenesisPrev] for an empty log), for comparison with an externally kept
// anchor such as an earlier [Log.Head]: that comparison is what detects the
// removal of records from the end of the log.
func VerifyChain(r io.Reader) (int, string, error) {
	lr := newLineReader(r)
	prev := GenesisPrev
	count := 0
	for lineNo := 1; ; lineNo++ {
		rl, err := lr.next()
		if errors.Is(err, io.EOF) {
			return count, prev, nil
		}
		if err != nil {
			return count, prev, fmt.Errorf("audit: verify: read line %d: %w", lineNo, err)
		}
		h, reason := checkRecordLine(rl, prev, lineNo)
		if reason != "" {
			return count, prev, &VerifyError{Line: lineNo, Reason: reason}
		}
		prev = h
		count++
	}
}

// checkRecordLine is the full per-line check of Verify: chain bytes plus a
// strict parse. It returns the line's hash, or a reason it is bad.
func checkRecordLine(rl rawLine, prev string, lineNo int) (string, string) {
	if reason := rl.shapeProblem(); reason != "" {
		return "", reason
	}
	h, k, reason := checkChain(rl.b, prev, lineNo)
	if k != lineOK {
		return "", reason
	}
	var rec Record
	if err := json.Unmarshal(rl.b, &rec); err != nil {
		return "", "not a valid record: " + err.Error()
	}
	// The suffix is the last thing in the object, so encoding/json (last
	// duplicate key wins) must have read the same values; anything else
	// means the line was crafted to say two things.
	if rec.Hash != h || rec.Prev != prev {
		return "", "hash or prev field disagrees with the line's hash suffix"
	}
	if rec.Event == "" {
		return "", "record has no event"
	}
	if rec.TS.IsZero() {
		return "", "record has no timestamp"
	}
	return h, ""
}

// lineKind classifies the result of checkChain.
type lineKind int

const (
	lineOK       lineKind = iota
	lineBroken            // malformed or hash mismatch: may be a torn write
	lineUnlinked          // intact line whose prev is wrong: never a torn write
)

// checkChain checks the hash-chain bytes of one line (without its newline):
// the fixed suffix, the hash over the pre-image, and prev against want.
func checkChain(line []byte, want string, lineNo int) (string, lineKind, string) {
	if len(line) < 1+tailLen || line[0] != '{' {
		return "", lineBroken, "malformed line: no hash chain suffix"
	}
	tail := line[len(line)-tailLen:]
	p := tail[len(prevKey) : len(prevKey)+hexLen]
	hk := tail[len(prevKey)+hexLen : len(prevKey)+hexLen+len(hashKey)]
	h := tail[len(prevKey)+hexLen+len(hashKey) : tailLen-len(lineEnd)]
	if !bytes.HasPrefix(tail, []byte(prevKey)) || string(hk) != hashKey ||
		!bytes.HasSuffix(tail, []byte(lineEnd)) || !isLowerHex(p) || !isLowerHex(h) {
		return "", lineBroken, "malformed line: no hash chain suffix"
	}
	d := sha256.New()
	d.Write(line[:len(line)-hashSuffix])
	d.Write([]byte{'}'})
	var sum [hexLen]byte
	hex.Encode(sum[:], d.Sum(nil))
	if !bytes.Equal(sum[:], h) {
		return "", lineBroken, "hash mismatch: line was altered"
	}
	if string(p) != want {
		if lineNo == 1 {
			return "", lineUnlinked, "prev of the first record is not the genesis value (records missing before it?)"
		}
		return "", lineUnlinked, fmt.Sprintf("prev does not match the hash of line %d (line deleted, inserted or moved)", lineNo-1)
	}
	return string(h), lineOK, ""
}

// rawLine is one line as read, without its newline.
type rawLine struct {
	b          []byte // valid until the next call to next; nil if tooLong
	n          int64  // bytes consumed, newline included
	terminated bool   // ended with '\n'
	tooLong    bool   // exceeded MaxLineSize; b is not kept
}

// shapeProblem reports a framing problem that makes the line unusable.
func (rl rawLine) shapeProblem() string {
	switch {
	case rl.tooLong:
		return fmt.Sprintf("line longer than %d bytes", MaxLineSize)
	case !rl.terminated:
		return "incomplete final line (no trailing newline)"
	case len(rl.b) == 0:
		return "empty line"
	}
	return ""
}

// lineReader splits a stream into lines with a bounded buffer.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line, or io.EOF when the stream is exhausted.
func (lr *lineReader) next() (rawLine, error) {
	lr.buf = lr.buf[:0]
	var rl rawLine
	for {
		frag, err := lr.br.ReadSlice('\n')
		rl.n += int64(len(frag))
		if !rl.tooLong {
			if len(lr.buf)+len(frag) > MaxLineSize {
				rl.tooLong = true
				lr.buf = lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, frag...)
			}
		}
		switch {
		case err == nil:
			rl.terminated = true
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if rl.n == 0 {
				return rl, io.EOF
			}
		default:
			return rl, err
		}
		if !rl.tooLong {
			rl.b = lr.buf
			if rl.terminated {
				rl.b = rl.b[:len(rl.b)-1]
			}
		}
		return rl, nil
	}
}
