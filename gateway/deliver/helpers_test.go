package deliver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
)

// received is one message a receiver accepted.
type received struct {
	From     string
	MailOpts smtp.MailOptions
	Rcpts    []string
	RcptOpts []smtp.RcptOptions
	Data     []byte
	TLS      bool
}

// rcvConfig configures a receiver.
type rcvConfig struct {
	cert       *tls.Certificate
	noUTF8     bool
	dsn        bool
	requireTLS bool
	// rcpt replies by local part, e.g. "reject" -> 550 5.1.1.
	rcpt map[string]*smtp.SMTPError
}

// receiver is a real SMTP server (go-smtp) on loopback standing in for a
// recipient's MX.
type receiver struct {
	addr  string
	mu    sync.Mutex
	msgs  []received
	mails int // MAIL commands seen
	conns int // sessions opened (go-smtp opens a new one after STARTTLS)
}

func startReceiver(t *testing.T, cfg rcvConfig) *receiver {
	t.Helper()
	r := &receiver{}
	s := smtp.NewServer(&backend{r: r, cfg: cfg})
	s.Domain = "receiver.test"
	s.MaxMessageBytes = 10 << 20
	s.MaxRecipients = 100
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	s.EnableSMTPUTF8 = !cfg.noUTF8
	s.EnableDSN = cfg.dsn
	s.EnableREQUIRETLS = cfg.requireTLS
	if cfg.cert != nil {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cfg.cert}}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("receiver listen: %v", err)
	}
	r.addr = ln.Addr().String()
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	return r
}

func (r *receiver) messages() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

func (r *receiver) counts() (conns, mails int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, r.mails
}

type backend struct {
	r   *receiver
	cfg rcvConfig
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.r.mu.Lock()
	b.r.conns++
	b.r.mu.Unlock()
	return &rsession{b: b, c: c}, nil
}

type rsession struct {
	b   *backend
	c   *smtp.Conn
	cur received
}

func (s *rsession) Reset()        { s.cur = received{} }
func (s *rsession) Logout() error { return nil }

func (s *rsession) Mail(from string, opts *smtp.MailOptions) error {
	s.b.r.mu.Lock()
	s.b.r.mails++
	s.b.r.mu.Unlock()
	s.cur = received{From: from}
	if opts != nil {
		s.cur.MailOpts = *opts
	}
	return nil
}

func (s *rsession) Rcpt(to string, opts *smtp.RcptOptions) error {
	local, _, _ := strings.Cut(to, "@")
	if e := s.b.cfg.rcpt[local]; e != nil {
		return e
	}
	s.cur.Rcpts = append(s.cur.Rcpts, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	s.cur.RcptOpts = append(s.cur.RcptOpts, o)
	return nil
}

func (s *rsession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	_, isTLS := s.c.TLSConnectionState()
	m := s.cur
	m.Data, m.TLS = b, isTLS
	s.b.r.mu.Lock()
	s.b.r.msgs = append(s.b.r.msgs, m)
	s.b.r.mu.Unlock()
	return nil
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// env is a loopback world: a DNS server and a dialer that redirects the
// (fake) MX addresses on port 25 to real listeners.
type env struct {
	t      *testing.T
	dns    *dnstest.Server
	mu     sync.Mutex
	routes map[string]string // "ip:25" -> real "127.0.0.1:port"
	byAddr map[string]int    // dials per real address
	dials  atomic.Int32
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &env{t: t, dns: s, routes: map[string]string{}, byAddr: map[string]int{}}
}

// host publishes name with address ip and routes ip:25 to realAddr.
func (e *env) host(name, ip, realAddr string) {
	e.dns.SetA(name, ip)
	e.mu.Lock()
	e.routes[net.JoinHostPort(ip, "25")] = realAddr
	e.mu.Unlock()
}

func (e *env) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	e.dials.Add(1)
	e.mu.Lock()
	target, ok := e.routes[addr]
	e.byAddr[target]++
	e.mu.Unlock()
	if !ok {
		e.t.Errorf("dial to unexpected address %s", addr)
		return nil, &net.OpError{Op: "dial", Net: network, Err: io.EOF}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, target)
}

// dialsTo is the number of connections made to a receiver.
func (e *env) dialsTo(r *receiver) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byAddr[r.addr]
}

func (e *env) options(roots *x509.CertPool) Options {
	return Options{
		Hostname:       "postern.test",
		Port:           25,
		Resolver:       dnsr.NewClient(e.dns.Addr, 2*time.Second),
		Roots:          roots,
		ConnectTimeout: 5 * time.Second,
		CommandTimeout: 10 * time.Second,
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial:           e.dial,
	}
}

const testBody = "From: a@example.org\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"

// request builds a request for rcpts at level with body as the message.
func request(level, body string, rcpts ...string) *Request {
	req := &Request{
		QueueID:  "q1",
		From:     "a@example.org",
		TLSLevel: level,
		Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader([]byte(body))), nil
		},
	}
	for _, r := range rcpts {
		req.Rcpts = append(req.Rcpts, Rcpt{Addr: r})
		if req.Domain == "" {
			_, req.Domain, _ = strings.Cut(r, "@")
		}
	}
	return req
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// one returns the only result, failing the test when there is not exactly one.
func one(t *testing.T, rs []Result) Result {
	t.Helper()
	if len(rs) != 1 {
		t.Fatalf("got %d results, want 1: %+v", len(rs), rs)
	}
	return rs[0]
}
