// Package bench measures postern's throughput end to end, in process: SMTP
// ingress, durable queue, policy decision, audit log and delivery over
// verified STARTTLS to a loopback receiver. See README.md.
package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/courier"
	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
	"github.com/postern-mail/postern/gateway/methods"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/gateway/smtpd"
	"github.com/postern-mail/postern/policy"
	"github.com/postern-mail/postern/test/support/testpki"
)

const (
	gwHost    = "gw.bench.example"
	rcptDom   = "rcpt.bench.example"
	mxHost    = "mx.rcpt.bench.example"
	msgSize   = 10 << 10
	waitLimit = 5 * time.Minute
)

// BenchmarkPipeline sends b.N messages of 10 KB into the gateway and stops
// the clock when the receiver has accepted all of them. Sub-benchmarks
// differ in the number of concurrent client connections.
func BenchmarkPipeline(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			p := startPipeline(b)
			b.SetBytes(msgSize)
			b.ResetTimer()
			start := time.Now()
			p.send(b, b.N, conns)
			p.wait(b, b.N)
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			p.check(b, b.N)
		})
	}
}

// TestPipeline runs the benchmark's pipeline with a few messages, so that
// a plain `go test` keeps its wiring honest.
func TestPipeline(t *testing.T) {
	p := startPipeline(t)
	p.send(t, 6, 2)
	p.wait(t, 6)
	p.check(t, 6)
}

// pipeline is one gateway and one receiving MX.
type pipeline struct {
	addr string // ingress
	q    *queue.Queue
	m    *metrics.Metrics
	al   *audit.Log
	recv *receiver
	msg  string
}

func startPipeline(tb testing.TB) *pipeline {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	dir := tb.TempDir()

	// The recipient domain's MX: DNS on loopback, STARTTLS with a
	// certificate from a test CA that delivery trusts (level verify).
	ca := testpki.NewCA(tb, "postern bench CA")
	recv := startReceiver(tb, ca.Server(tb, mxHost))
	dns, err := dnstest.Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dns.Close() })
	dns.SetMX(rcptDom, dnsr.MX{Host: mxHost, Pref: 10})
	dns.SetA(mxHost, "127.0.0.1")
	_, port, _ := net.SplitHostPort(recv.addr)
	mxPort, _ := strconv.Atoi(port)

	q, err := queue.Open(filepath.Join(dir, "queue"), log)
	if err != nil {
		tb.Fatal(err)
	}
	al, err := audit.Open(filepath.Join(dir, "audit.jsonl"), log)
	if err != nil {
		tb.Fatal(err)
	}
	m := metrics.New(q)
	transport := &deliver.MX{Opt: deliver.Options{
		Hostname: gwHost, Port: mxPort, Resolver: dnsr.NewClient(dns.Addr, 5*time.Second), Roots: ca.Pool(),
		ConnectTimeout: 10 * time.Second, CommandTimeout: time.Minute, Log: log,
	}}
	cour := &courier.Courier{Queue: q, Transport: transport, Policy: policy.NewHolder(policy.Default()),
		Checker: &methods.Set{}, Audit: al, Metrics: m, Hostname: gwHost,
		Retry: []time.Duration{time.Second}, MaxAge: time.Hour, PerDestination: 4, Log: log}

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		q.Run(ctx, context.Background(), cour, 64)
		close(ran)
	}()

	ingress := smtpd.New(smtpd.Options{
		Hostname: gwHost, TLS: ca.ServerTLS(tb, gwHost),
		MaxMessageBytes: 10 << 20, MaxRecipients: 100, MaxConnections: 100, MaxLineLength: 32768,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute,
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Queue:           q, Metrics: m, Log: log,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = ingress.Serve(ln) }()

	tb.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = ingress.Shutdown(sctx)
		cancel()
		<-ran
		if err := al.Close(); err != nil {
			tb.Errorf("audit close: %v", err)
		}
	})
	return &pipeline{addr: ln.Addr().String(), q: q, m: m, al: al, recv: recv, msg: message()}
}

// message is a 10 KB plain-text message.
func message() string {
	var b strings.Builder
	b.WriteString("From: sender@example.org\r\nTo: rcpt@" + rcptDom + "\r\nSubject: benchmark\r\n" +
		"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	line := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2)[:76] + "\r\n"
	for b.Len()+len(line) <= msgSize {
		b.WriteString(line)
	}
	for b.Len() < msgSize-2 {
		b.WriteByte('x')
	}
	b.WriteString("\r\n")
	return b.String()
}

// send submits n messages over conns concurrent connections (STARTTLS,
// several transactions per connection).
func (p *pipeline) send(tb testing.TB, n, conns int) {
	tb.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.DialStartTLS(p.addr, &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				errs <- fmt.Errorf("connect: %w", err)
				return
			}
			defer c.Close()
			for next.Add(1) <= int64(n) {
				if err := c.SendMail("sender@example.org", []string{"rcpt@" + rcptDom}, strings.NewReader(p.msg)); err != nil {
					errs <- fmt.Errorf("send: %w", err)
					return
				}
			}
			_ = c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// wait returns when the receiver has accepted n messages.
func (p *pipeline) wait(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(waitLimit)
	for p.recv.count.Load() < int64(n) {
		if time.Now().After(deadline) {
			tb.Fatalf("receiver got %d of %d messages in %v", p.recv.count.Load(), n, waitLimit)
		}
		time.Sleep(time.Millisecond)
	}
}

// check verifies the run: every message delivered once, over verified TLS,
// and the queue empty.
func (p *pipeline) check(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for p.q.Len() > 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("queue still holds %d messages", p.q.Len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.recv.count.Load(); got != int64(n) {
		tb.Errorf("receiver got %d messages, want %d", got, n)
	}
	if got := p.recv.plain.Load(); got != 0 {
		tb.Errorf("%d messages arrived without TLS", got)
	}
	if got := p.recv.short.Load(); got != 0 {
		tb.Errorf("%d messages arrived shorter than sent", got)
	}
	if _, records := p.al.Head(); records < 2*n {
		tb.Errorf("audit log holds %d records, want at least %d (decision + delivery each)", records, 2*n)
	}
}

// receiver is the recipient domain's MX: go-smtp with STARTTLS.
type receiver struct {
	addr  string
	count atomic.Int64 // messages accepted
	plain atomic.Int64 // of which without TLS
	short atomic.Int64 // of which shorter than the message sent
}

func startReceiver(tb testing.TB, cert tls.Certificate) *receiver {
	tb.Helper()
	r := &receiver{}
	s := smtp.NewServer(r)
	s.Domain = mxHost
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.MaxMessageBytes = 20 << 20
	s.MaxRecipients = 100
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	s.EnableSMTPUTF8, s.EnableDSN, s.EnableREQUIRETLS = true, true, true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r.addr = ln.Addr().String()
	go func() { _ = s.Serve(ln) }()
	tb.Cleanup(func() { s.Close() })
	return r
}

func (r *receiver) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, tlsOn := c.TLSConnectionState()
	return &rsession{r: r, tls: tlsOn}, nil
}

type rsession struct {
	r   *receiver
	tls bool
}

func (s *rsession) Reset()                               {}
func (s *rsession) Logout() error                        { return nil }
func (s *rsession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *rsession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *rsession) Data(rd io.Reader) error {
	n, err := io.Copy(io.Discard, rd)
	if err != nil {
		return err
	}
	if !s.tls {
		s.r.plain.Add(1)
	}
	if n < msgSize {
		s.r.short.Add(1)
	}
	s.r.count.Add(1)
	return nil
}
