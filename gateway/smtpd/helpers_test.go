package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/test/support/testpki"
)

const testHost = "gw.test"

// serverTLS is a STARTTLS configuration with a certificate for testHost.
func serverTLS(t testing.TB) *tls.Config {
	t.Helper()
	cfg := testpki.NewCA(t, "server CA").ServerTLS(t, testHost)
	cfg.MinVersion = tls.VersionTLS12
	return cfg
}

// syncBuffer collects log output from concurrent sessions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a running ingress on 127.0.0.1 with its queue.
type harness struct {
	srv  *Server
	opt  Options
	q    *queue.Queue
	dir  string
	addr string
	logs *syncBuffer
}

// start runs an ingress with sensible test options, changed by mod.
func start(t testing.TB, mod func(*Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	q, err := queue.Open(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	opt := Options{
		Hostname:        testHost,
		TLS:             serverTLS(t),
		MaxMessageBytes: 1 << 20,
		MaxRecipients:   10,
		MaxConnections:  20,
		MaxLineLength:   4096,
		ReadTimeout:     10 * time.Second,
		WriteTimeout:    10 * time.Second,
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Queue:           q,
		Metrics:         metrics.New(nil),
		Log:             log,
	}
	if mod != nil {
		mod(&opt)
	}
	s := New(opt)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return &harness{srv: s, opt: opt, q: q, dir: dir, addr: ln.Addr().String(), logs: logs}
}

// dial connects a go-smtp client and says EHLO.
func (h *harness) dial(t testing.TB) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(h.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

// dialTLS connects and starts TLS, with an optional client certificate.
func (h *harness) dialTLS(t testing.TB, clientCert *tls.Certificate) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(h.addr, clientTLS(clientCert))
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func clientTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: testHost}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// send runs one transaction; it returns the final reply text on success.
func send(c *smtp.Client, from string, to []string, msg string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	return data(c, msg)
}

func data(c *smtp.Client, msg string) (string, error) {
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// wantCode checks that err is an SMTP reply with code (and enhanced code, if given).
func wantCode(t testing.TB, what string, err error, code int, enhanced ...int) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: got %v, want SMTP reply %d", what, err, code)
	}
	if se.Code != code {
		t.Fatalf("%s: reply %d %v %q, want %d", what, se.Code, se.EnhancedCode, se.Message, code)
	}
	if len(enhanced) == 3 && se.EnhancedCode != (smtp.EnhancedCode{enhanced[0], enhanced[1], enhanced[2]}) {
		t.Fatalf("%s: enhanced code %v, want %v", what, se.EnhancedCode, enhanced)
	}
	return se
}

// queued returns the on-disk record and body of the one queued message.
func (h *harness) queued(t testing.TB) (*queue.Item, string) {
	t.Helper()
	ids := h.q.Items()
	if len(ids) != 1 {
		t.Fatalf("queue holds %d messages, want 1", len(ids))
	}
	return h.item(t, ids[0])
}

func (h *harness) item(t testing.TB, id string) (*queue.Item, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, "meta", id+".json"))
	if err != nil {
		t.Fatalf("queue record of %s: %v", id, err)
	}
	var it queue.Item
	if err := json.Unmarshal(b, &it); err != nil {
		t.Fatalf("queue record of %s: %v", id, err)
	}
	body, err := os.ReadFile(filepath.Join(h.dir, "msg", id))
	if err != nil {
		t.Fatalf("queued body of %s: %v", id, err)
	}
	return &it, string(body)
}

// assertNothingQueued checks that no message and no leftover file exists.
func (h *harness) assertNothingQueued(t testing.TB) {
	t.Helper()
	if n := h.q.Len(); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
	for _, sub := range []string{"msg", "meta", "tmp"} {
		es, err := os.ReadDir(filepath.Join(h.dir, sub))
		if err != nil {
			continue // replaced on purpose by some tests
		}
		if len(es) != 0 {
			t.Errorf("%s/ holds %d files, want none", sub, len(es))
		}
	}
}

// rawConn is a plain textproto connection for what go-smtp's client refuses
// to send or cannot show.
type rawConn struct {
	t testing.TB
	c net.Conn
	*textproto.Conn
}

func (h *harness) raw(t testing.TB) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, Conn: textproto.NewConn(c)}
}

// cmd sends a command and returns the reply code and text.
func (r *rawConn) cmd(format string, args ...any) (int, string) {
	r.t.Helper()
	if format != "" {
		if err := r.PrintfLine(format, args...); err != nil {
			r.t.Fatalf("send %q: %v", format, err)
		}
	}
	code, msg, err := r.ReadResponse(0)
	if err != nil && code == 0 {
		r.t.Fatalf("reply to %q: %v", format, err)
	}
	return code, msg
}

func hasLine(text, prefix string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(l)), prefix) {
			return true
		}
	}
	return false
}
