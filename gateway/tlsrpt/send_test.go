package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/postern-mail/postern/gateway/dkim"
)

func testAggregate() *DomainAggregate {
	return &DomainAggregate{Policies: []*PolicyAggregate{
		{Type: PolicySTS, Strings: stsStrings, MXHosts: []string{"mx1.mail.example.net"}, Success: 5326, Failure: 303,
			Failures: []*FailureAggregate{
				{ResultType: CertificateExpired, MXHost: "mx1.mail.example.net", Count: 100},
				{ResultType: StartTLSNotSupported, MXHost: "mx2.mail.example.net", ReceivingIP: "203.0.113.56", Count: 203, Detail: "mx2 does not offer STARTTLS"},
			}},
		{Type: PolicyTLSA, Strings: []string{"3 1 1 ABCD"}, MXHosts: []string{"mx3.example.net"}, Success: 7},
	}}
}

// checkReport parses a report with generic maps, so the field names are
// checked as RFC 8460 §4.4 spells them.
func checkReport(t *testing.T, js []byte, domain string) {
	t.Helper()
	var r map[string]any
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	if r["organization-name"] != "Example Org" || r["contact-info"] != "tlsrpt@gw.example.org" {
		t.Errorf("organization-name/contact-info: %v %v", r["organization-name"], r["contact-info"])
	}
	if r["report-id"] != "20261203."+domain+"@gw.example.org" {
		t.Errorf("report-id %v", r["report-id"])
	}
	dr, _ := r["date-range"].(map[string]any)
	if dr["start-datetime"] != "2026-12-03T00:00:00Z" || dr["end-datetime"] != "2026-12-03T23:59:59Z" {
		t.Errorf("date-range %v", dr)
	}
	pols, _ := r["policies"].([]any)
	if len(pols) != 2 {
		t.Fatalf("policies: %v", r["policies"])
	}
	p0 := pols[0].(map[string]any)
	pol := p0["policy"].(map[string]any)
	if pol["policy-type"] != "sts" || pol["policy-domain"] != domain || len(pol["policy-string"].([]any)) != 4 {
		t.Errorf("policy %v", pol)
	}
	if mx := pol["mx-host"].([]any); len(mx) != 1 || mx[0] != "*.mail.example.net" {
		t.Errorf("mx-host %v", pol["mx-host"])
	}
	sum := p0["summary"].(map[string]any)
	if sum["total-successful-session-count"] != 5326.0 || sum["total-failure-session-count"] != 303.0 {
		t.Errorf("summary %v", sum)
	}
	fd := p0["failure-details"].([]any)
	f1 := fd[1].(map[string]any)
	if len(fd) != 2 || f1["result-type"] != "starttls-not-supported" || f1["receiving-mx-hostname"] != "mx2.mail.example.net" ||
		f1["receiving-ip"] != "203.0.113.56" || f1["failed-session-count"] != 203.0 || f1["failure-reason-code"] != "mx2 does not offer STARTTLS" {
		t.Errorf("failure-details %v", fd)
	}
	p1 := pols[1].(map[string]any)
	if pol := p1["policy"].(map[string]any); pol["policy-type"] != "tlsa" || pol["mx-host"].([]any)[0] != "mx3.example.net" {
		t.Errorf("tlsa policy %v", pol)
	}
	if _, ok := p1["failure-details"]; ok {
		t.Error("failure-details present without failures")
	}
}

func TestBuildReport(t *testing.T) {
	js, err := BuildReport("Example Org", "tlsrpt@gw.example.org", "gw.example.org", day1.Add(13*time.Hour), "example.net", testAggregate())
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, js, "example.net")
	gz, err := Gzip(js)
	if err != nil {
		t.Fatal(err)
	}
	if got := gunzip(t, gz); !bytes.Equal(got, js) {
		t.Error("gzip round trip differs")
	}
	if _, err := BuildReport("o", "c", "s", day1, "x", nil); err == nil {
		t.Error("no error for nil aggregate")
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func testSender(res *fakeResolver, box *outbox) *Sender {
	return &Sender{Resolver: res, Enqueue: box.enqueue, From: "tlsrpt@gw.example.org", Hostname: "gw.example.org",
		Org: "Example Org", Now: func() time.Time { return day1.Add(25 * time.Hour) }}
}

func TestMailtoReport(t *testing.T) {
	res := newResolver()
	res.set("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:reports@example.net,mailto:copy@example.com")
	box := &outbox{}
	s := testSender(res, box)

	// DKIM: a real signer, verified with go-msgauth against the key.
	dir := t.TempDir()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	kf := filepath.Join(dir, "k.pem")
	if err := os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := dkim.NewSigner([]dkim.Key{{Domain: "gw.example.org", Selector: "s1", KeyFile: kf}})
	if err != nil {
		t.Fatal(err)
	}
	signer.TempDir = dir
	s.DKIM = signer.Sign

	if err := s.SendReport(context.Background(), day1, "example.net", testAggregate()); err != nil {
		t.Fatal(err)
	}
	msgs := box.all()
	if len(msgs) != 1 {
		t.Fatalf("%d mails queued, want 1", len(msgs))
	}
	q := msgs[0]
	if q.from != "tlsrpt@gw.example.org" || strings.Join(q.to, ",") != "reports@example.net,copy@example.com" {
		t.Errorf("envelope %q -> %q", q.from, q.to)
	}

	verifs, err := msgdkim.VerifyWithOptions(bytes.NewReader(q.msg), &msgdkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name == "s1._domainkey.gw.example.org" {
				return []string{"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}, nil
			}
			return nil, fmt.Errorf("no TXT at %s", name)
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "gw.example.org" {
		t.Fatalf("DKIM verification: %v %+v", err, verifs)
	}

	m, err := mail.ReadMessage(bytes.NewReader(q.msg))
	if err != nil {
		t.Fatal(err)
	}
	h := m.Header
	want := map[string]string{
		"Subject":              "Report Domain: example.net Submitter: gw.example.org Report-ID: <20261203.example.net@gw.example.org>",
		"TLS-Report-Domain":    "example.net",
		"TLS-Report-Submitter": "gw.example.org",
		"TLS-Required":         "No",
		"From":                 "tlsrpt@gw.example.org",
	}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("%s: %q, want %q", k, h.Get(k), v)
		}
	}
	if _, err := h.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q: %v", h.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	text, err := mr.NextPart()
	if err != nil || !strings.HasPrefix(text.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("first part: %v %v", err, text.Header)
	}
	att, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if att.Header.Get("Content-Type") != MediaType {
		t.Errorf("attachment type %q", att.Header.Get("Content-Type"))
	}
	_, dp, err := mime.ParseMediaType(att.Header.Get("Content-Disposition"))
	if err != nil || dp["filename"] != "gw.example.org!example.net!1796256000!1796342399.json.gz" {
		t.Errorf("filename %q (%v)", dp["filename"], err)
	}
	raw, err := io.ReadAll(att) // multipart does not decode base64
	if err != nil {
		t.Fatal(err)
	}
	gz, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, gunzip(t, gz), "example.net")
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("extra part: %v", err)
	}
}

// reportServer is an httptest TLS server that records posted reports.
type reportServer struct {
	*httptest.Server
	mu    sync.Mutex
	posts [][]byte
	types []string
}

func newReportServer(t *testing.T, status int) *reportServer {
	rs := &reportServer{}
	rs.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.posts = append(rs.posts, b)
		rs.types = append(rs.types, r.Method+" "+r.Header.Get("Content-Type"))
		rs.mu.Unlock()
		w.WriteHeader(status)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20)) // a large body is ignored
	}))
	t.Cleanup(rs.Close)
	return rs
}

func TestHTTPSReport(t *testing.T) {
	rs := newReportServer(t, http.StatusAccepted)
	res := newResolver()
	res.set("_smtp._tls.example.net", "v=TLSRPTv1; rua="+rs.URL+"/tlsrpt")
	box := &outbox{}
	s := testSender(res, box)
	s.HTTPClient = rs.Client() // trusts the test CA only
	if err := s.SendReport(context.Background(), day1, "example.net", testAggregate()); err != nil {
		t.Fatal(err)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if len(rs.posts) != 1 || rs.types[0] != "POST application/tlsrpt+gzip" {
		t.Fatalf("posts %d %q", len(rs.posts), rs.types)
	}
	checkReport(t, gunzip(t, rs.posts[0]), "example.net")
	if len(box.all()) != 0 {
		t.Error("mail queued for an https-only record")
	}

	// Without the test CA the server is not trusted.
	s.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	if err := s.SendReport(context.Background(), day1, "example.net", testAggregate()); err == nil {
		t.Error("report posted to an untrusted server")
	}
}

func TestHTTPSFailuresAndRedirects(t *testing.T) {
	bad := newReportServer(t, http.StatusInternalServerError)
	other := newReportServer(t, http.StatusOK)
	redir := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/same" {
			http.Redirect(w, r, "/final", http.StatusTemporaryRedirect)
			return
		}
		if r.URL.Path == "/final" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer redir.Close()
	s := testSender(newResolver(), &outbox{})
	s.HTTPClient = redir.Client()
	ctx := context.Background()
	if err := s.Post(ctx, redir.URL+"/same", []byte("x")); err != nil {
		t.Errorf("same-host redirect: %v", err)
	}
	if err := s.Post(ctx, redir.URL+"/away", []byte("x")); err == nil || !strings.Contains(err.Error(), "another host") {
		t.Errorf("redirect to another host: %v", err)
	}
	other.mu.Lock()
	if len(other.posts) != 0 {
		t.Error("redirect to another host was followed")
	}
	other.mu.Unlock()
	s.HTTPClient = bad.Client()
	if err := s.Post(ctx, bad.URL+"/r", []byte("x")); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("500: %v", err)
	}
	if err := s.Post(ctx, "http://127.0.0.1:1/", []byte("x")); err == nil {
		t.Error("plain http accepted")
	}
}

func TestLookupErrors(t *testing.T) {
	res := newResolver()
	res.fail["_smtp._tls.down.example"] = true
	res.set("_smtp._tls.two.example", "v=TLSRPTv1; rua=mailto:a@two.example", "v=TLSRPTv1; rua=mailto:b@two.example")
	s := testSender(res, &outbox{})
	ctx := context.Background()
	if _, err := s.Lookup(ctx, "none.example"); !errors.Is(err, ErrNoRecord) {
		t.Errorf("no record: %v", err)
	}
	if _, err := s.Lookup(ctx, "two.example"); !errors.Is(err, ErrNoRecord) {
		t.Errorf("two records: %v", err)
	}
	if _, err := s.Lookup(ctx, "down.example"); err == nil || errors.Is(err, ErrNoRecord) {
		t.Errorf("temporary DNS failure: %v", err)
	}
}
