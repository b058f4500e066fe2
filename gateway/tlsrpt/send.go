package tlsrpt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"net/textproto"
	"strings"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// DefaultHTTPTimeout bounds one HTTPS report submission.
const DefaultHTTPTimeout = time.Minute

// maxRedirects bounds same-host redirects of an HTTPS submission.
const maxRedirects = 3

// Sender delivers reports to the destinations a domain publishes.
type Sender struct {
	Resolver dnsr.Resolver
	// HTTPClient posts https: reports; nil means a client with
	// DefaultHTTPTimeout. Its redirect policy is replaced: only same-host
	// https redirects are followed.
	HTTPClient *http.Client
	// Enqueue queues a report mail for delivery (mailto: destinations).
	Enqueue func(from string, to []string, msg []byte) error
	// From is the report mail's From and envelope sender, e.g.
	// "tlsrpt@gw.example.org"; its domain is the DKIM signing domain.
	From string
	// Hostname is the submitter (RFC 8460 §5.3 TLS-Report-Submitter) and
	// the domain of report-ids and Message-IDs.
	Hostname string
	// Org is organization-name; "" means Hostname. Contact is
	// contact-info; "" means From.
	Org, Contact string
	// DKIM signs the report mail for domain (RFC 8460 §5.3 requires a
	// DKIM signature by the reporting domain); nil leaves it unsigned.
	DKIM func(w io.Writer, r io.Reader, domain string) error
	Log  *slog.Logger
	// Now is the clock for the Date header; nil means time.Now.
	Now func() time.Time
}

func (s *Sender) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Sender) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Sender) org() string {
	if s.Org != "" {
		return s.Org
	}
	return s.Hostname
}

func (s *Sender) contact() string {
	if s.Contact != "" {
		return s.Contact
	}
	return s.From
}

// Lookup returns the TLSRPT record of domain (RFC 8460 §3). The error
// wraps ErrNoRecord when the domain publishes none (or several, or a bad
// one), and is a DNS error otherwise (retry later).
func (s *Sender) Lookup(ctx context.Context, domain string) (*Record, error) {
	name := "_smtp._tls." + domain
	txts, _, err := s.Resolver.LookupTXT(ctx, name)
	if dnsr.IsNotFound(err) {
		return nil, fmt.Errorf("%w at %s", ErrNoRecord, name)
	}
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: look up %s: %w", name, err)
	}
	rec, err := SelectRecord(txts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return rec, nil
}

// SendReport builds the report of domain for day from agg and sends it to
// every destination of the domain's TLSRPT record. It succeeds when at
// least one destination took the report (RFC 8460 §3: the reporter MAY
// attempt each of the rua destinations). The error wraps ErrNoRecord when
// the domain does not want reports.
func (s *Sender) SendReport(ctx context.Context, day time.Time, domain string, agg *DomainAggregate) error {
	rec, err := s.Lookup(ctx, domain)
	if err != nil {
		return err
	}
	js, err := BuildReport(s.org(), s.contact(), s.Hostname, day, domain, agg)
	if err != nil {
		return err
	}
	gz, err := Gzip(js)
	if err != nil {
		return err
	}
	var errs []error
	sent := 0
	if to := rec.MailTo(); len(to) > 0 {
		if err := s.mail(day, domain, to, gz); err != nil {
			errs = append(errs, err)
		} else {
			sent++
			s.log().Info("tlsrpt report queued", "domain", domain, "to", to)
		}
	}
	for _, u := range rec.HTTPS() {
		if err := s.Post(ctx, u, gz); err != nil {
			errs = append(errs, err)
		} else {
			sent++
			s.log().Info("tlsrpt report posted", "domain", domain, "url", u)
		}
	}
	if sent > 0 {
		for _, e := range errs {
			s.log().Warn("tlsrpt: a destination failed", "domain", domain, "err", e)
		}
		return nil
	}
	return errors.Join(errs...)
}

func (s *Sender) mail(day time.Time, domain string, to []string, gz []byte) error {
	if s.Enqueue == nil {
		return errors.New("tlsrpt: no mail queue configured for mailto: reports")
	}
	msg, err := s.BuildMail(day, domain, to, gz)
	if err != nil {
		return err
	}
	if err := s.Enqueue(s.From, to, msg); err != nil {
		return fmt.Errorf("tlsrpt: queue report mail for %s: %w", domain, err)
	}
	return nil
}

// Filename is the report file name (RFC 8460 §5.1):
// submitter "!" policy-domain "!" begin-timestamp "!" end-timestamp "." extension,
// timestamps in seconds since the epoch.
func Filename(submitter, domain string, day time.Time) string {
	start, end := DayRange(day)
	return fmt.Sprintf("%s!%s!%d!%d.json.gz", submitter, domain, start.Unix(), end.Unix())
}

// BuildMail returns the report mail (RFC 8460 §5.3): multipart/report
// with report-type "tlsrpt", a text part and the gzip report as an
// application/tlsrpt+gzip attachment, DKIM-signed when s.DKIM is set.
func (s *Sender) BuildMail(day time.Time, domain string, to []string, gz []byte) ([]byte, error) {
	if _, err := mail.ParseAddress(s.From); err != nil {
		return nil, fmt.Errorf("tlsrpt: bad From %q: %w", s.From, err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	submitter := s.Hostname
	id := ReportID(submitter, day, domain)

	var h bytes.Buffer
	hdr := func(k, v string) { h.WriteString(k + ": " + v + "\r\n") }
	hdr("From", s.From)
	hdr("To", strings.Join(to, ", "))
	hdr("Date", s.now().Format(time.RFC1123Z))
	hdr("Subject", "Report Domain: "+domain+" Submitter: "+submitter+" Report-ID: <"+id+">")
	hdr("Message-ID", "<tlsrpt."+hex.EncodeToString(rnd[:])+"@"+s.Hostname+">")
	hdr("TLS-Report-Domain", domain)
	hdr("TLS-Report-Submitter", submitter)
	// RFC 8460 §5.3: reports must be delivered despite TLS failures at
	// the receiver; RFC 8689 §5 lets this message say so.
	hdr("TLS-Required", "No")
	hdr("Auto-Submitted", "auto-generated") // RFC 3834 §5
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", mime.FormatMediaType("multipart/report", map[string]string{"report-type": "tlsrpt", "boundary": mw.Boundary()}))
	h.WriteString("\r\n")

	tp, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"text/plain; charset=us-ascii"},
		"Content-Transfer-Encoding": {"7bit"},
	})
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: build mail: %w", err)
	}
	fmt.Fprintf(tp, "This is an aggregate TLS report (RFC 8460) from %s for %s.\r\n", submitter, domain)
	ap, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {MediaType},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {mime.FormatMediaType("attachment", map[string]string{"filename": Filename(submitter, domain, day)})},
	})
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: build mail: %w", err)
	}
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		io.WriteString(ap, enc[:76]+"\r\n")
		enc = enc[76:]
	}
	io.WriteString(ap, enc+"\r\n")
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("tlsrpt: build mail: %w", err)
	}
	msg := append(h.Bytes(), body.Bytes()...)
	if s.DKIM == nil {
		return msg, nil
	}
	_, signDomain, _ := strings.Cut(addrOf(s.From), "@")
	var signed bytes.Buffer
	if err := s.DKIM(&signed, bytes.NewReader(msg), signDomain); err != nil {
		return nil, fmt.Errorf("tlsrpt: dkim sign report mail: %w", err)
	}
	return signed.Bytes(), nil
}

func addrOf(s string) string {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return s
	}
	return a.Address
}

func (s *Sender) httpClient() *http.Client {
	c := &http.Client{Timeout: DefaultHTTPTimeout}
	if s.HTTPClient != nil {
		cp := *s.HTTPClient
		c = &cp
		if c.Timeout == 0 {
			c.Timeout = DefaultHTTPTimeout
		}
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			return errors.New("too many redirects")
		}
		if req.URL.Scheme != "https" || !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
			return fmt.Errorf("redirect to another host (%s) refused", req.URL.Redacted())
		}
		return nil
	}
	return c
}

// Post submits a gzip report to an https: destination (RFC 8460 §5.4).
// Content-Type is application/tlsrpt+gzip; any 2xx status is success.
func (s *Sender) Post(ctx context.Context, url string, gz []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(gz))
	if err != nil {
		return fmt.Errorf("tlsrpt: post %s: %w", url, err)
	}
	if req.URL.Scheme != "https" {
		return fmt.Errorf("tlsrpt: post %s: not https", url)
	}
	req.Header.Set("Content-Type", MediaType)
	resp, err := s.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("tlsrpt: post %s: %w", req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	// The response body means nothing to us; read a little so the
	// connection can be reused, never more.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("tlsrpt: post %s: %s", req.URL.Redacted(), resp.Status)
	}
	return nil
}
