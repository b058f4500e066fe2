// Package portal is the secure web portal, the method that always works
// (SPEC §4, §5): a message is stored encrypted at rest (AES-256-GCM under
// a per-message data key wrapped by the master key), the recipient gets a
// notice with one link, proves control of the address on the first visit,
// sets a password, reads the message (HTML sanitised, remote content
// blocked), downloads attachments and sends a secure reply that reaches
// the original sender. Revocation and expiry delete the content.
package portal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/microcosm-cc/bluemonday"

	"github.com/postern-mail/postern/gateway/storage"
)

// ErrNotFound is returned by Revoke for an unknown message id.
var ErrNotFound = errors.New("portal message not found")

// ErrGone is returned by Deposit when the message id was already revoked
// or expired: it must not be stored again.
var ErrGone = errors.New("portal message revoked or expired")

// Options configures a Portal.
type Options struct {
	BaseURL    string // portal.base_url, e.g. https://secure.example.org (links are BaseURL + "/m/<token>")
	NotifyFrom string // portal.notify_from
	Hostname   string // for Message-IDs of notices
	MessageTTL time.Duration
	MasterKey  []byte // 32 bytes (config.ReadMasterKey)
	Store      storage.Store
	// Send enqueues a mail postern generated (password-reset link, a
	// secure reply to the original sender) for normal delivery; from is
	// the envelope sender, msg a complete RFC 5322 message.
	Send func(ctx context.Context, from string, to []string, msg []byte) error
	// Event is called for every portal event, for the audit log (event
	// "portal") and metrics: kind one of stored, notified, opened,
	// login_failed, reply, revoked, expired; detail free text (never
	// secrets or content).
	Event func(kind, portalID, rcpt, detail string)
	Now   func() time.Time
	Log   *slog.Logger
	// TrustedProxies are the reverse proxies whose X-Forwarded-For is
	// believed for the client address (per-IP lockout and rate limits).
	// Empty: the TCP peer is the client.
	TrustedProxies []netip.Prefix
}

// Security parameters.
const (
	lockAfter      = 5                // consecutive failures (per address, per source IP)
	lockFor        = 15 * time.Minute // lockout duration
	sessionTTL     = 8 * time.Hour
	resetTTL       = time.Hour
	minPassword    = 10
	maxPassword    = 1024
	maxReplyBytes  = 25 << 20 // reply text and attachments
	forgotInterval = time.Minute
	linkGrace      = 30 * 24 * time.Hour
)

// Portal is the portal's core and web handler.
type Portal struct {
	opt       Options
	keys      keys
	secure    bool // cookies with Secure (BaseURL is https)
	cookieSes string
	cookieCSR string
	sanitizer *bluemonday.Policy
	pages     map[string]*template.Template
	log       *slog.Logger

	limiter *limiter
	mu      sync.Mutex
	forgot  map[string]time.Time // address → last reset mail (per node)
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{8,128}$`)

// New checks opt and builds a Portal.
func New(opt Options) (*Portal, error) {
	if len(opt.MasterKey) != 32 {
		return nil, fmt.Errorf("portal: master key is %d bytes, want 32", len(opt.MasterKey))
	}
	if opt.Store == nil || opt.Send == nil {
		return nil, errors.New("portal: Store and Send are required")
	}
	if opt.MessageTTL <= 0 {
		return nil, errors.New("portal: message_ttl must be positive")
	}
	if _, err := mail.ParseAddress(opt.NotifyFrom); err != nil {
		return nil, fmt.Errorf("portal: notify_from %q: %w", opt.NotifyFrom, err)
	}
	u, err := url.Parse(opt.BaseURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("portal: base_url %q must be an absolute http(s) URL", opt.BaseURL)
	}
	secure := u.Scheme == "https"
	if !secure && !isLoopbackHost(u.Hostname()) {
		// Cookies without Secure are only acceptable for local tests.
		return nil, fmt.Errorf("portal: base_url %q must be https (http only for localhost)", opt.BaseURL)
	}
	opt.BaseURL = strings.TrimRight(opt.BaseURL, "/")
	if opt.Hostname == "" {
		opt.Hostname = "localhost"
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	pages, err := loadPages()
	if err != nil {
		return nil, err
	}
	p := &Portal{
		opt: opt, keys: deriveKeys(opt.MasterKey), secure: secure,
		cookieSes: "postern_session", cookieCSR: "postern_csrf",
		sanitizer: newSanitizer(), pages: pages, log: opt.Log,
		limiter: newLimiter(), forgot: map[string]time.Time{},
	}
	if secure {
		// RFC 6265bis §4.1.3.2: __Host- cookies are Secure, host-only, Path=/.
		p.cookieSes, p.cookieCSR = "__Host-postern_session", "__Host-postern_csrf"
	}
	return p, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (p *Portal) event(kind, id, rcpt, detail string) {
	if p.opt.Event != nil {
		p.opt.Event(kind, id, rcpt, detail)
	}
}

func normAddr(a string) string { return strings.ToLower(strings.TrimSpace(a)) }

func aad(id string) []byte { return []byte("postern portal v1 message " + id) }

// Deposit stores msg for rcpt under id, encrypted at rest, and writes the
// notification mail for rcpt to w. It is idempotent for the same id: a
// retry keeps the stored message and issues a fresh link.
func (p *Portal) Deposit(ctx context.Context, id, rcpt string, msg io.Reader, w io.Writer) (string, error) {
	if !idRE.MatchString(id) {
		return "", fmt.Errorf("portal: bad message id %q", id)
	}
	addr, err := mail.ParseAddress(rcpt)
	if err != nil {
		return "", fmt.Errorf("portal: recipient %q: %w", rcpt, err)
	}
	rcpt = normAddr(addr.Address)
	raw, err := io.ReadAll(msg)
	if err != nil {
		return "", fmt.Errorf("portal: read message: %w", err)
	}
	now := p.opt.Now().UTC()
	m, err := p.opt.Store.Message(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		m, err = p.store(ctx, id, rcpt, raw, now)
		if err != nil {
			return "", err
		}
	case err != nil:
		return "", fmt.Errorf("portal: %w", err)
	}
	if m.State != storage.StateActive || !now.Before(m.Expires) {
		return "", fmt.Errorf("portal: message %s: %w", id, ErrGone)
	}
	if m.Rcpt != rcpt {
		return "", fmt.Errorf("portal: message %s belongs to another recipient", id)
	}
	// The link outlives the message by linkGrace so that a late visitor
	// learns the message expired instead of seeing "link not valid".
	tok, err := p.newToken(ctx, storage.TokenLink, id, rcpt, m.Expires.Add(linkGrace))
	if err != nil {
		return "", err
	}
	sender := "the sender"
	if h, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		if pm, err := parseHeadersOnly(h); err == nil && pm != "" {
			sender = pm
		}
	}
	if err := p.writeNotice(w, rcpt, sender, p.opt.BaseURL+"/m/"+tok, m.Expires, now); err != nil {
		return "", fmt.Errorf("portal: write notice: %w", err)
	}
	p.event("notified", id, rcpt, "notice written")
	return fmt.Sprintf("stored as portal message %s, expires %s", id, m.Expires.Format("2006-01-02")), nil
}

// store seals and inserts a new message; a concurrent insert of the same
// id wins and is returned.
func (p *Portal) store(ctx context.Context, id, rcpt string, raw []byte, now time.Time) (*storage.Message, error) {
	dataKey := make([]byte, 32)
	if _, err := rand.Read(dataKey); err != nil {
		return nil, fmt.Errorf("portal: random: %w", err)
	}
	content, err := seal(dataKey, raw, aad(id))
	if err != nil {
		return nil, fmt.Errorf("portal: encrypt: %w", err)
	}
	wrapped, err := seal(p.keys.wrap[:], dataKey, aad(id))
	if err != nil {
		return nil, fmt.Errorf("portal: wrap key: %w", err)
	}
	m := &storage.Message{ID: id, Rcpt: rcpt, Created: now, Expires: now.Add(p.opt.MessageTTL),
		State: storage.StateActive, WrappedKey: wrapped, Content: content}
	created, err := p.opt.Store.CreateMessage(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("portal: %w", err)
	}
	if !created {
		if m, err = p.opt.Store.Message(ctx, id); err != nil {
			return nil, fmt.Errorf("portal: %w", err)
		}
		return m, nil
	}
	p.event("stored", id, rcpt, fmt.Sprintf("%d bytes, expires %s", len(raw), m.Expires.Format(time.RFC3339)))
	return m, nil
}

func parseHeadersOnly(m *mail.Message) (string, error) {
	from, err := m.Header.AddressList("From")
	if err != nil || len(from) == 0 {
		return "", fmt.Errorf("no From")
	}
	if from[0].Name != "" {
		return from[0].Name + " <" + from[0].Address + ">", nil
	}
	return from[0].Address, nil
}

// decrypt returns the plaintext of an active message.
func (p *Portal) decrypt(m *storage.Message) ([]byte, error) {
	key, err := open(p.keys.wrap[:], m.WrappedKey, aad(m.ID))
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	plain, err := open(key, m.Content, aad(m.ID))
	if err != nil {
		return nil, fmt.Errorf("decrypt message: %w", err)
	}
	return plain, nil
}

func (p *Portal) newToken(ctx context.Context, kind, id, addr string, expires time.Time) (string, error) {
	tok, err := randomToken()
	if err != nil {
		return "", fmt.Errorf("portal: %w", err)
	}
	if err := p.opt.Store.CreateToken(ctx, &storage.Token{Hash: tokenHash(tok), Kind: kind, MessageID: id, Addr: addr, Expires: expires}); err != nil {
		return "", fmt.Errorf("portal: %w", err)
	}
	return tok, nil
}

// Revoke makes message id unreadable at once (its content and data key
// are deleted). ErrNotFound when unknown.
func (p *Portal) Revoke(ctx context.Context, id string) error {
	m, err := p.opt.Store.Message(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("portal: %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("portal: revoke: %w", err)
	}
	if err := p.opt.Store.RevokeMessage(ctx, id); errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("portal: %s: %w", id, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("portal: revoke: %w", err)
	}
	p.event("revoked", id, m.Rcpt, "content deleted (was "+m.State+")")
	return nil
}

// ExpireNow deletes the content of messages past their TTL and purges
// expired links and sessions. It returns how many messages expired.
func (p *Portal) ExpireNow(ctx context.Context) (int, error) {
	now := p.opt.Now()
	ids, err := p.opt.Store.ExpireMessages(ctx, now)
	if err != nil {
		return 0, fmt.Errorf("portal: expire: %w", err)
	}
	for _, id := range ids {
		p.event("expired", id, "", "content deleted after message_ttl")
	}
	if err := p.opt.Store.Purge(ctx, now); err != nil {
		return len(ids), fmt.Errorf("portal: purge: %w", err)
	}
	return len(ids), nil
}

// newMessageID returns an RFC 5322 §3.6.4 msg-id.
func (p *Portal) newMessageID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return "<" + hex.EncodeToString(b) + "@" + p.opt.Hostname + ">"
}

// writeMail writes a multipart/alternative message (RFC 2046 §5.1.4)
// with a quoted-printable text part and an HTML part.
func writeMail(w io.Writer, hdr [][2]string, text, html string) error {
	var b bytes.Buffer
	boundary := "postern-" + randHex(12)
	for _, h := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/alternative; boundary=%q\r\n\r\n", boundary)
	for _, part := range []struct{ ct, body string }{{"text/plain", text}, {"text/html", html}} {
		if part.body == "" {
			continue
		}
		fmt.Fprintf(&b, "--%s\r\nContent-Type: %s; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", boundary, part.ct)
		qp := quotedprintable.NewWriter(&b)
		if _, err := qp.Write([]byte(strings.ReplaceAll(part.body, "\n", "\r\n"))); err != nil {
			return err
		}
		if err := qp.Close(); err != nil {
			return err
		}
		b.WriteString("\r\n")
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	_, err := w.Write(b.Bytes())
	return err
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// encodeHeader encodes a header value with RFC 2047 when it is not ASCII
// and strips line breaks (no header injection).
func encodeHeader(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	return mime.QEncoding.Encode("utf-8", s)
}

func (p *Portal) writeNotice(w io.Writer, rcpt, sender, link string, expires, now time.Time) error {
	var text, html bytes.Buffer
	data := map[string]any{"Sender": sender, "Link": link, "Expires": expires.Format("2 January 2006"), "Base": p.opt.BaseURL}
	if err := p.pages["notice.txt"].ExecuteTemplate(&text, "notice.txt", data); err != nil {
		return err
	}
	if err := p.pages["notice.html"].ExecuteTemplate(&html, "notice.html", data); err != nil {
		return err
	}
	hdr := [][2]string{
		{"From", p.opt.NotifyFrom},
		{"To", rcpt},
		{"Subject", encodeHeader("Secure message from " + sender)},
		{"Date", now.Format(time.RFC1123Z)},
		{"Message-ID", p.newMessageID()},
		{"Auto-Submitted", "auto-generated"}, // RFC 3834 §5
	}
	return writeMail(w, hdr, text.String(), html.String())
}

// clientIP is the address per-IP limits apply to.
func (p *Portal) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if !p.trusted(ip) {
		return ip.String()
	}
	// Walk X-Forwarded-For from the right, skipping trusted proxies.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if !p.trusted(a) {
			return a.String()
		}
	}
	return ip.String()
}

func (p *Portal) trusted(ip netip.Addr) bool {
	for _, pr := range p.opt.TrustedProxies {
		if pr.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}
