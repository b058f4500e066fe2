package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// binary is the postern binary built once for the package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "postern")
	_, here, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-race", "-o", binary, "./cmd/postern")
	build.Dir = filepath.Dir(filepath.Dir(here))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build postern:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// received is one message a receiver accepted.
type received struct {
	From  string
	Rcpts []string
	Data  []byte
	TLS   bool
}

// receiver is a real SMTP server (go-smtp) standing in for a recipient's MX.
// Recipients whose local part is "reject" get 550; "tempfail" gets 451 for
// the first tempFails attempts.
type receiver struct {
	t         *testing.T
	srv       *smtp.Server
	ln        net.Listener
	mu        sync.Mutex
	msgs      []received
	tempFails int
	tries     map[string]int
}

func startReceiver(t *testing.T, addr string, cert *tls.Certificate) *receiver {
	t.Helper()
	r := &receiver{t: t, tries: map[string]int{}, tempFails: 1}
	s := smtp.NewServer(r)
	s.Domain = "receiver"
	s.MaxMessageBytes = 200 << 20
	s.MaxRecipients = 100
	s.ReadTimeout, s.WriteTimeout = 30*time.Second, 30*time.Second
	s.EnableSMTPUTF8 = true
	s.EnableDSN = true
	s.AllowInsecureAuth = true
	if cert != nil {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("receiver listen %s: %v", addr, err)
	}
	r.srv, r.ln = s, ln
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return r
}

func (r *receiver) messages() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

func (r *receiver) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &rsession{r: r, tls: isTLS, c: c}, nil
}

type rsession struct {
	r     *receiver
	c     *smtp.Conn
	tls   bool
	from  string
	rcpts []string
}

func (s *rsession) Reset()        { s.from, s.rcpts = "", nil }
func (s *rsession) Logout() error { return nil }
func (s *rsession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}
func (s *rsession) Rcpt(to string, _ *smtp.RcptOptions) error {
	local, _, _ := strings.Cut(to, "@")
	switch local {
	case "reject":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	case "tempfail":
		s.r.mu.Lock()
		s.r.tries[to]++
		n := s.r.tries[to]
		s.r.mu.Unlock()
		if n <= s.r.tempFails {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *rsession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	_, isTLS := s.c.TLSConnectionState()
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, received{From: s.from, Rcpts: s.rcpts, Data: b, TLS: isTLS})
	s.r.mu.Unlock()
	return nil
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePortOn returns a port free on every listed loopback address.
func freePortOn(t *testing.T, ips ...string) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		p := freePort(t)
		ok := true
		for _, ip := range ips {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no common free port")
	return 0
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}

// bodyAfterOurReceived strips postern's Received header (the first header
// field, with its continuation lines) from a relayed message.
func bodyAfterOurReceived(b []byte) []byte {
	if !bytes.HasPrefix(b, []byte("Received: ")) {
		return b
	}
	i := bytes.Index(b, []byte("\r\n"))
	for i >= 0 && i+2 < len(b) && (b[i+2] == ' ' || b[i+2] == '\t') {
		j := bytes.Index(b[i+2:], []byte("\r\n"))
		if j < 0 {
			return nil
		}
		i = i + 2 + j
	}
	return b[i+2:]
}

func dnsrMX(host string) dnsr.MX { return dnsr.MX{Host: host, Pref: 10} }

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func itoa(n int) string { return fmt.Sprint(n) }
