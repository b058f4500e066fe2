package policy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// availability is a Checker answering from tables: per "method rcpt", else
// per method; methods in neither are unavailable. It stands in for the
// gateway's key look-ups, which are outside this package.
type availability struct {
	mu      sync.Mutex
	method  map[string]bool
	rcpt    map[string]bool
	checked []string
}

func avail(methods ...string) *availability {
	a := &availability{method: map[string]bool{}, rcpt: map[string]bool{}}
	for _, m := range methods {
		a.method[m] = true
	}
	return a
}

func (a *availability) Available(_ context.Context, method, rcpt string) (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checked = append(a.checked, method+" "+rcpt)
	ok, found := a.rcpt[method+" "+rcpt]
	if !found {
		ok = a.method[method]
	}
	switch {
	case ok && method == TLS:
		return true, "decided at delivery"
	case ok:
		return true, method + " available"
	default:
		return false, "no " + method
	}
}

func (a *availability) set(method string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.method[method] = ok
}

// rawMessage builds a Message from a raw RFC 5322 text (LF line ends are
// turned into CRLF), counting how often the body is opened.
func rawMessage(t *testing.T, from, raw string) (*Message, *atomic.Int32) {
	t.Helper()
	raw = strings.ReplaceAll(strings.ReplaceAll(raw, "\r\n", "\n"), "\n", "\r\n")
	h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(raw))).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("test message header: %v", err)
	}
	opens := &atomic.Int32{}
	return &Message{
		From:   from,
		Header: h,
		Size:   int64(len(raw)),
		Open: func() (io.ReadCloser, error) {
			opens.Add(1)
			return io.NopCloser(strings.NewReader(raw)), nil
		},
	}, opens
}

// headerMessage builds a Message with only a header, like postern explain.
func headerMessage(from string, kv ...string) *Message {
	h := textproto.MIMEHeader{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return &Message{From: from, Header: h}
}

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse([]byte(src), "test.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func problemStrings(t *testing.T, err error) []string {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("error %v (%T) is not *Error", err, err)
	}
	out := make([]string, len(perr.Problems))
	for i, p := range perr.Problems {
		out[i] = p.String()
	}
	return out
}
