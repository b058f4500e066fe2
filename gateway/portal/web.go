package portal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/microcosm-cc/bluemonday"

	"github.com/postern-mail/postern/gateway/storage"
)

//go:embed templates
var templateFS embed.FS

// csp forbids every script, remote images, framing and foreign form
// targets (CSP Level 3).
const csp = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func loadPages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range []string{"home", "info", "setpw", "login", "message"} {
		t, err := template.ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("portal: template %s: %w", name, err)
		}
		pages[name] = t
	}
	for _, name := range []string{"notice.txt", "notice.html", "reset.txt", "reset.html"} {
		t, err := template.ParseFS(templateFS, "templates/mail/"+name)
		if err != nil {
			return nil, fmt.Errorf("portal: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

var dataImageRE = regexp.MustCompile(`^data:image/(png|gif|jpeg|webp);base64,[A-Za-z0-9+/=\s]*$`)

// newSanitizer allows formatting, tables, lists and links (http, https,
// mailto only: no javascript:), and images only as inline data: URIs, so
// no remote content (tracking pixels) is fetched.
func newSanitizer() *bluemonday.Policy {
	p := bluemonday.NewPolicy()
	p.AllowStandardURLs()
	p.AllowURLSchemes("http", "https", "mailto")
	p.AllowAttrs("href").OnElements("a")
	p.RequireNoReferrerOnLinks(true)
	p.RequireNoFollowOnLinks(true)
	p.AddTargetBlankToFullyQualifiedLinks(true)
	p.AllowDataURIImages()
	p.AllowAttrs("src").Matching(dataImageRE).OnElements("img")
	p.AllowAttrs("alt", "width", "height").OnElements("img")
	p.AllowLists()
	p.AllowTables()
	p.AllowElements("p", "br", "div", "span", "b", "i", "u", "strong", "em", "small", "sub", "sup", "s",
		"blockquote", "pre", "code", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "center", "font")
	return p
}

// Handler serves the portal: everything under portal.listen.
func (p *Portal) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.home)
	mux.HandleFunc("GET /static/style.css", p.style)
	mux.HandleFunc("GET /m/{token}", p.link)
	mux.HandleFunc("POST /m/{token}/password", p.setPassword)
	mux.HandleFunc("POST /m/{token}/login", p.login)
	mux.HandleFunc("POST /m/{token}/forgot", p.forgotPassword)
	mux.HandleFunc("GET /msg/{id}", p.message)
	mux.HandleFunc("GET /msg/{id}/att/{n}", p.download)
	mux.HandleFunc("POST /msg/{id}/reply", p.reply)
	mux.HandleFunc("POST /logout", p.logout)
	return p.guard(mux)
}

// guard adds the security headers, rate limits per client address and
// checks the CSRF token of every POST.
func (p *Portal) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if p.secure {
			h.Set("Strict-Transport-Security", "max-age=31536000") // RFC 6797
		}
		ip := p.clientIP(r)
		if !p.limiter.allow(ip, r.Method == http.MethodPost, p.opt.Now()) {
			p.page(w, r, http.StatusTooManyRequests, "info", info("Too many requests", "Please wait a minute and try again."))
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxReplyBytes+1<<20)
			if !p.csrfOK(r) {
				p.page(w, r, http.StatusForbidden, "info", info("Form expired", "This form is no longer valid. Go back, reload the page and try again."))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type infoData struct{ Title, Text string }

func info(title, text string) infoData { return infoData{title, text} }

func (p *Portal) page(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	var b bytes.Buffer
	if err := p.pages[name].ExecuteTemplate(&b, "layout", data); err != nil {
		p.log.Error("portal: render page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

func (p *Portal) home(w http.ResponseWriter, r *http.Request) {
	p.page(w, r, http.StatusOK, "home", nil)
}

func (p *Portal) style(w http.ResponseWriter, r *http.Request) {
	b, err := templateFS.ReadFile("templates/style.css")
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	_, _ = w.Write(b)
}

// ---- CSRF (double-submit cookie bound with an HMAC; sessions bind their own id)

// csrfToken is the token for forms shown to r: bound to the session id
// when logged in, else to the pre-session cookie (set here if missing).
func (p *Portal) csrfToken(w http.ResponseWriter, r *http.Request, sessionID string) string {
	if sessionID != "" {
		return p.csrfFor("s", sessionID)
	}
	c, err := r.Cookie(p.cookieCSR)
	v := ""
	if err == nil && len(c.Value) >= 43 {
		v = c.Value
	} else {
		v, err = randomToken()
		if err != nil {
			return ""
		}
		http.SetCookie(w, p.cookie(p.cookieCSR, v, 0))
	}
	return p.csrfFor("c", v)
}

func (p *Portal) csrfFor(kind, v string) string {
	return base64.RawURLEncoding.EncodeToString(hmacSum(p.keys.csrf[:], kind, v))
}

func (p *Portal) csrfOK(r *http.Request) bool {
	var got string
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		if err := r.ParseMultipartForm(8 << 20); err != nil {
			return false
		}
	} else if err := r.ParseForm(); err != nil {
		return false
	}
	got = r.PostFormValue("csrf")
	if got == "" {
		return false
	}
	for _, b := range []struct{ cookie, kind string }{{p.cookieSes, "s"}, {p.cookieCSR, "c"}} {
		if c, err := r.Cookie(b.cookie); err == nil && c.Value != "" {
			if hmac.Equal([]byte(got), []byte(p.csrfFor(b.kind, c.Value))) {
				return true
			}
		}
	}
	return false
}

func (p *Portal) cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, Secure: p.secure,
		HttpOnly: true, SameSite: http.SameSiteStrictMode}
}

// ---- sessions

// session returns the valid session of r and its raw id, or nil.
func (p *Portal) session(r *http.Request) (*storage.Session, string) {
	c, err := r.Cookie(p.cookieSes)
	if err != nil || c.Value == "" || len(c.Value) > 100 {
		return nil, ""
	}
	s, err := p.opt.Store.Session(r.Context(), tokenHash(c.Value))
	if err != nil || !p.opt.Now().Before(s.Expires) {
		return nil, ""
	}
	return s, c.Value
}

// startSession ends any session r had and starts a new one for addr (a
// fresh id at every login: no session fixation).
func (p *Portal) startSession(w http.ResponseWriter, r *http.Request, addr string) error {
	if c, err := r.Cookie(p.cookieSes); err == nil && c.Value != "" {
		_ = p.opt.Store.DeleteSession(r.Context(), tokenHash(c.Value))
	}
	id, err := randomToken()
	if err != nil {
		return err
	}
	if err := p.opt.Store.CreateSession(r.Context(), &storage.Session{Hash: tokenHash(id), Addr: addr, Expires: p.opt.Now().Add(sessionTTL)}); err != nil {
		return err
	}
	http.SetCookie(w, p.cookie(p.cookieSes, id, int(sessionTTL/time.Second)))
	return nil
}

func (p *Portal) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(p.cookieSes); err == nil && c.Value != "" {
		_ = p.opt.Store.DeleteSession(r.Context(), tokenHash(c.Value))
	}
	http.SetCookie(w, p.cookie(p.cookieSes, "", -1))
	p.page(w, r, http.StatusOK, "info", info("Signed out", "You have signed out. Use the link in your email to read your messages again."))
}

// ---- lockout (per address and per source IP)

func (p *Portal) locked(ctx context.Context, keys ...string) (time.Time, error) {
	var until time.Time
	now := p.opt.Now()
	for _, k := range keys {
		a, err := p.opt.Store.Attempts(ctx, k)
		if err != nil {
			return time.Time{}, err
		}
		if a.LockedUntil.After(now) && a.LockedUntil.After(until) {
			until = a.LockedUntil
		}
	}
	return until, nil
}

func (p *Portal) fail(ctx context.Context, keys ...string) error {
	now := p.opt.Now()
	for _, k := range keys {
		n, err := p.opt.Store.AddFailure(ctx, k, now)
		if err != nil {
			return err
		}
		if n >= lockAfter {
			if err := p.opt.Store.Lock(ctx, k, now.Add(lockFor)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Portal) lockedPage(w http.ResponseWriter, r *http.Request, until time.Time) {
	p.page(w, r, http.StatusTooManyRequests, "info", info("Temporarily locked",
		"Too many failed attempts. Try again after "+until.UTC().Format("15:04 MST")+", or ask for a new link by email."))
}

// ---- link flow

type linkCtx struct {
	tok   string
	token *storage.Token
	msg   *storage.Message
}

// resolveLink checks the link token of r. On failure it has answered.
func (p *Portal) resolveLink(w http.ResponseWriter, r *http.Request) (*linkCtx, bool) {
	ctx := r.Context()
	ipKey := "ip:" + p.clientIP(r)
	if until, err := p.locked(ctx, ipKey); err != nil {
		p.internal(w, r, err)
		return nil, false
	} else if !until.IsZero() {
		p.lockedPage(w, r, until)
		return nil, false
	}
	tok := r.PathValue("token")
	var t *storage.Token
	var err error
	if len(tok) == 43 { // 256 bits, base64url
		t, err = p.opt.Store.Token(ctx, tokenHash(tok))
	} else {
		err = storage.ErrNotFound
	}
	if errors.Is(err, storage.ErrNotFound) || (err == nil && !p.opt.Now().Before(t.Expires)) {
		// Guessing tokens counts as failures of the source address.
		if err := p.fail(ctx, ipKey); err != nil {
			p.internal(w, r, err)
			return nil, false
		}
		p.page(w, r, http.StatusNotFound, "info", info("Link not valid",
			"This link is not valid or has expired. Use the most recent email you received, or ask the sender to send the message again."))
		return nil, false
	}
	if err != nil {
		p.internal(w, r, err)
		return nil, false
	}
	m, ok := p.loadMessage(w, r, t.MessageID)
	if !ok {
		return nil, false
	}
	return &linkCtx{tok: tok, token: t, msg: m}, true
}

// loadMessage returns an active, unexpired message or answers with a
// "gone" page.
func (p *Portal) loadMessage(w http.ResponseWriter, r *http.Request, id string) (*storage.Message, bool) {
	m, err := p.opt.Store.Message(r.Context(), id)
	if errors.Is(err, storage.ErrNotFound) {
		p.page(w, r, http.StatusNotFound, "info", info("Not found", "There is no such message."))
		return nil, false
	}
	if err != nil {
		p.internal(w, r, err)
		return nil, false
	}
	switch {
	case m.State == storage.StateRevoked:
		p.page(w, r, http.StatusGone, "info", info("Message withdrawn", "The sender has withdrawn this message. It can no longer be read."))
		return nil, false
	case m.State == storage.StateExpired || !p.opt.Now().Before(m.Expires):
		p.page(w, r, http.StatusGone, "info", info("Message expired", "This message has expired and was deleted. Ask the sender to send it again if you still need it."))
		return nil, false
	}
	return m, true
}

func (p *Portal) internal(w http.ResponseWriter, r *http.Request, err error) {
	p.log.Error("portal: request failed", "path", r.URL.Path, "err", err)
	p.page(w, r, http.StatusInternalServerError, "info", info("Something went wrong", "Please try again in a few minutes."))
}

type formData struct {
	Action, CSRF, Addr, Forgot, Error string
	Reset                             bool
	Sender                            string
}

func (p *Portal) link(w http.ResponseWriter, r *http.Request) {
	lc, ok := p.resolveLink(w, r)
	if !ok {
		return
	}
	acct, err := p.opt.Store.Account(r.Context(), lc.token.Addr)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		p.internal(w, r, err)
		return
	}
	hasPassword := acct != nil && acct.PasswordHash != ""
	if lc.token.Kind == storage.TokenLink && hasPassword {
		if s, _ := p.session(r); s != nil && s.Addr == lc.token.Addr {
			http.Redirect(w, r, "/msg/"+lc.msg.ID, http.StatusSeeOther)
			return
		}
		p.showLogin(w, r, lc, "", http.StatusOK)
		return
	}
	p.showSetPassword(w, r, lc, "", http.StatusOK)
}

func (p *Portal) showLogin(w http.ResponseWriter, r *http.Request, lc *linkCtx, msg string, status int) {
	p.page(w, r, status, "login", formData{Action: "/m/" + lc.tok + "/login", Forgot: "/m/" + lc.tok + "/forgot",
		CSRF: p.csrfToken(w, r, ""), Addr: lc.token.Addr, Error: msg})
}

func (p *Portal) showSetPassword(w http.ResponseWriter, r *http.Request, lc *linkCtx, msg string, status int) {
	p.page(w, r, status, "setpw", formData{Action: "/m/" + lc.tok + "/password", CSRF: p.csrfToken(w, r, ""),
		Addr: lc.token.Addr, Error: msg, Reset: lc.token.Kind == storage.TokenReset})
}

func (p *Portal) setPassword(w http.ResponseWriter, r *http.Request) {
	lc, ok := p.resolveLink(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	acct, err := p.opt.Store.Account(ctx, lc.token.Addr)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		p.internal(w, r, err)
		return
	}
	if lc.token.Kind != storage.TokenReset && acct != nil && acct.PasswordHash != "" {
		// A notice link cannot replace an existing password: that needs
		// a fresh emailed reset link.
		p.showLogin(w, r, lc, "A password is already set for this address.", http.StatusForbidden)
		return
	}
	pw, pw2 := r.PostFormValue("password"), r.PostFormValue("password2")
	switch {
	case len([]rune(pw)) < minPassword:
		p.showSetPassword(w, r, lc, fmt.Sprintf("Choose a password of at least %d characters.", minPassword), http.StatusBadRequest)
		return
	case len(pw) > maxPassword:
		p.showSetPassword(w, r, lc, "That password is too long.", http.StatusBadRequest)
		return
	case pw != pw2:
		p.showSetPassword(w, r, lc, "The two passwords differ.", http.StatusBadRequest)
		return
	}
	hash, err := hashPassword(pw)
	if err != nil {
		p.internal(w, r, err)
		return
	}
	if err := p.opt.Store.SetPassword(ctx, lc.token.Addr, hash, p.opt.Now()); err != nil {
		p.internal(w, r, err)
		return
	}
	if lc.token.Kind == storage.TokenReset {
		// A reset link is single-use and ends all other sessions.
		if err := p.opt.Store.DeleteToken(ctx, tokenHash(lc.tok)); err != nil {
			p.internal(w, r, err)
			return
		}
		if err := p.opt.Store.DeleteSessions(ctx, lc.token.Addr); err != nil {
			p.internal(w, r, err)
			return
		}
	}
	_ = p.opt.Store.ClearFailures(ctx, "addr:"+lc.token.Addr)
	if err := p.startSession(w, r, lc.token.Addr); err != nil {
		p.internal(w, r, err)
		return
	}
	http.Redirect(w, r, "/msg/"+lc.msg.ID, http.StatusSeeOther)
}

func (p *Portal) login(w http.ResponseWriter, r *http.Request) {
	lc, ok := p.resolveLink(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	addrKey, ipKey := "addr:"+lc.token.Addr, "ip:"+p.clientIP(r)
	if until, err := p.locked(ctx, addrKey, ipKey); err != nil {
		p.internal(w, r, err)
		return
	} else if !until.IsZero() {
		p.lockedPage(w, r, until)
		return
	}
	acct, err := p.opt.Store.Account(ctx, lc.token.Addr)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		p.internal(w, r, err)
		return
	}
	pw := r.PostFormValue("password")
	if acct == nil || len(pw) > maxPassword || !checkPassword(acct.PasswordHash, pw) {
		if err := p.fail(ctx, addrKey, ipKey); err != nil {
			p.internal(w, r, err)
			return
		}
		p.event("login_failed", lc.msg.ID, lc.token.Addr, "wrong password")
		if until, err := p.locked(ctx, addrKey, ipKey); err == nil && !until.IsZero() {
			p.event("login_failed", lc.msg.ID, lc.token.Addr, "locked for "+lockFor.String())
			p.lockedPage(w, r, until)
			return
		}
		p.showLogin(w, r, lc, "Wrong password.", http.StatusUnauthorized)
		return
	}
	_ = p.opt.Store.ClearFailures(ctx, addrKey)
	_ = p.opt.Store.ClearFailures(ctx, ipKey)
	if err := p.startSession(w, r, lc.token.Addr); err != nil {
		p.internal(w, r, err)
		return
	}
	http.Redirect(w, r, "/msg/"+lc.msg.ID, http.StatusSeeOther)
}

// forgotPassword mails a fresh single-use reset link to the address (the
// holder of the address proves control again).
func (p *Portal) forgotPassword(w http.ResponseWriter, r *http.Request) {
	lc, ok := p.resolveLink(w, r)
	if !ok {
		return
	}
	addr := lc.token.Addr
	now := p.opt.Now()
	p.mu.Lock()
	last, seen := p.forgot[addr]
	if !seen || now.Sub(last) >= forgotInterval {
		p.forgot[addr] = now
		for a, t := range p.forgot {
			if now.Sub(t) > forgotInterval {
				delete(p.forgot, a)
			}
		}
	}
	p.mu.Unlock()
	done := info("Check your email", "We sent a new link to "+addr+". It works for one hour.")
	if seen && now.Sub(last) < forgotInterval {
		p.page(w, r, http.StatusOK, "info", done)
		return
	}
	tok, err := p.newToken(r.Context(), storage.TokenReset, lc.msg.ID, addr, now.Add(resetTTL))
	if err != nil {
		p.internal(w, r, err)
		return
	}
	var text, html, msg bytes.Buffer
	data := map[string]any{"Link": p.opt.BaseURL + "/m/" + tok}
	if err := p.pages["reset.txt"].ExecuteTemplate(&text, "reset.txt", data); err != nil {
		p.internal(w, r, err)
		return
	}
	if err := p.pages["reset.html"].ExecuteTemplate(&html, "reset.html", data); err != nil {
		p.internal(w, r, err)
		return
	}
	hdr := [][2]string{{"From", p.opt.NotifyFrom}, {"To", addr}, {"Subject", "Your new secure mail link"},
		{"Date", now.Format(time.RFC1123Z)}, {"Message-ID", p.newMessageID()}, {"Auto-Submitted", "auto-generated"}}
	if err := writeMail(&msg, hdr, text.String(), html.String()); err != nil {
		p.internal(w, r, err)
		return
	}
	if err := p.opt.Send(r.Context(), p.opt.NotifyFrom, []string{addr}, msg.Bytes()); err != nil {
		p.internal(w, r, fmt.Errorf("send reset link: %w", err))
		return
	}
	p.page(w, r, http.StatusOK, "info", done)
}

// ---- message view, download, reply

type messageData struct {
	ID, CSRF, Subject, From, To, Date, Text string
	HTML                                    template.HTML
	Atts                                    []attView
	Sent                                    bool
	Expires                                 string
	ReplyTo                                 string
}

type attView struct {
	N          int
	Name, Type string
	Size       string
}

// authorised returns the message id of r when r's session may read it.
func (p *Portal) authorised(w http.ResponseWriter, r *http.Request) (*storage.Message, *parsed, string, bool) {
	s, sid := p.session(r)
	if s == nil {
		p.page(w, r, http.StatusUnauthorized, "info", info("Please sign in", "Open the link in your email to sign in."))
		return nil, nil, "", false
	}
	m, ok := p.loadMessage(w, r, r.PathValue("id"))
	if !ok {
		return nil, nil, "", false
	}
	if m.Rcpt != s.Addr {
		p.page(w, r, http.StatusNotFound, "info", info("Not found", "There is no such message."))
		return nil, nil, "", false
	}
	raw, err := p.decrypt(m)
	if err != nil {
		p.internal(w, r, err)
		return nil, nil, "", false
	}
	pm, err := parseMessage(raw)
	if err != nil {
		pm = &parsed{Text: "(This message could not be parsed; download it below.)",
			Atts: []attachment{{Name: "message.eml", Type: "message/rfc822", Data: raw}}}
	}
	return m, pm, sid, true
}

func (p *Portal) message(w http.ResponseWriter, r *http.Request) {
	m, pm, sid, ok := p.authorised(w, r)
	if !ok {
		return
	}
	d := messageData{ID: m.ID, CSRF: p.csrfToken(w, r, sid), Subject: pm.Subject, From: pm.From, To: pm.To,
		Text: pm.Text, HTML: template.HTML(p.sanitizer.Sanitize(pm.HTML)), // #nosec: sanitised by bluemonday
		Sent: r.URL.Query().Get("sent") == "1", Expires: m.Expires.UTC().Format("2 January 2006"), ReplyTo: pm.ReplyTo}
	if !pm.Date.IsZero() {
		d.Date = pm.Date.Format("Mon, 2 Jan 2006 15:04 MST")
	}
	if d.Subject == "" {
		d.Subject = "(no subject)"
	}
	for i, a := range pm.Atts {
		d.Atts = append(d.Atts, attView{N: i, Name: a.Name, Type: a.Type, Size: humanSize(len(a.Data))})
	}
	p.event("opened", m.ID, m.Rcpt, "message viewed")
	p.page(w, r, http.StatusOK, "message", d)
}

func humanSize(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func (p *Portal) download(w http.ResponseWriter, r *http.Request) {
	m, pm, _, ok := p.authorised(w, r)
	if !ok {
		return
	}
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 || n >= len(pm.Atts) {
		p.page(w, r, http.StatusNotFound, "info", info("Not found", "There is no such attachment."))
		return
	}
	a := pm.Atts[n]
	ct := "application/octet-stream"
	if t, _, err := mime.ParseMediaType(a.Type); err == nil && t != "" {
		ct = t
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	// RFC 6266: always a download, never rendered in the portal's origin.
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Name}))
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Content-Length", strconv.Itoa(len(a.Data)))
	p.event("opened", m.ID, m.Rcpt, "attachment downloaded")
	_, _ = w.Write(a.Data)
}

func (p *Portal) reply(w http.ResponseWriter, r *http.Request) {
	m, pm, _, ok := p.authorised(w, r)
	if !ok {
		return
	}
	to := pm.ReplyTo
	if to == "" {
		p.page(w, r, http.StatusBadRequest, "info", info("Cannot reply", "The original message names no sender to reply to."))
		return
	}
	text := strings.TrimSpace(r.PostFormValue("body"))
	var files []*multipart.FileHeader
	if r.MultipartForm != nil {
		for _, fh := range r.MultipartForm.File["attachment"] {
			if fh.Size > 0 {
				files = append(files, fh)
			}
		}
	}
	if text == "" && len(files) == 0 {
		http.Redirect(w, r, "/msg/"+m.ID, http.StatusSeeOther)
		return
	}
	msg, err := p.buildReply(m.Rcpt, to, pm, text, files)
	if err != nil {
		p.internal(w, r, err)
		return
	}
	if err := p.opt.Send(r.Context(), p.opt.NotifyFrom, []string{to}, msg); err != nil {
		p.internal(w, r, fmt.Errorf("send reply: %w", err))
		return
	}
	p.event("reply", m.ID, m.Rcpt, fmt.Sprintf("secure reply to %s, %d attachment(s)", to, len(files)))
	http.Redirect(w, r, "/msg/"+m.ID+"?sent=1", http.StatusSeeOther)
}

// buildReply writes the secure reply, threaded with In-Reply-To and
// References (RFC 5322 §3.6.4).
func (p *Portal) buildReply(from, to string, orig *parsed, text string, files []*multipart.FileHeader) ([]byte, error) {
	var b bytes.Buffer
	subject := orig.Subject
	if !strings.HasPrefix(strings.ToLower(subject), "re:") {
		subject = "Re: " + subject
	}
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSender: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n",
		from, to, p.opt.NotifyFrom, encodeHeader(subject), p.opt.Now().Format(time.RFC1123Z), p.newMessageID())
	if id := oneLine(orig.MessageID); id != "" {
		refs := strings.TrimSpace(oneLine(orig.Refs) + " " + id)
		fmt.Fprintf(&b, "In-Reply-To: %s\r\nReferences: %s\r\n", id, refs)
	}
	b.WriteString("MIME-Version: 1.0\r\n")
	mw := multipart.NewWriter(&b)
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\r\n\r\n", mw.Boundary())
	th := textproto.MIMEHeader{}
	th.Set("Content-Type", "text/plain; charset=utf-8")
	th.Set("Content-Transfer-Encoding", "quoted-printable")
	pw, err := mw.CreatePart(th)
	if err != nil {
		return nil, err
	}
	if err := writeQP(pw, text+"\n\n-- \nSent through the secure mail portal.\n"); err != nil {
		return nil, err
	}
	for _, fh := range files {
		f, err := fh.Open()
		if err != nil {
			return nil, fmt.Errorf("read attachment: %w", err)
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read attachment: %w", err)
		}
		ct := fh.Header.Get("Content-Type")
		if _, _, err := mime.ParseMediaType(ct); err != nil || ct == "" {
			ct = "application/octet-stream"
		}
		ah := textproto.MIMEHeader{}
		ah.Set("Content-Type", oneLine(ct))
		ah.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": cleanName(fh.Filename)}))
		ah.Set("Content-Transfer-Encoding", "base64")
		aw, err := mw.CreatePart(ah)
		if err != nil {
			return nil, err
		}
		if err := writeBase64(aw, data); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func oneLine(s string) string { return strings.NewReplacer("\r", "", "\n", "").Replace(s) }

// ---- rate limiting (per node, per client address; token buckets)

type bucket struct {
	tokens float64
	last   time.Time
}

type limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

func newLimiter() *limiter { return &limiter{buckets: map[string]*bucket{}} }

// allow takes one token from ip's bucket: 120 requests burst, refilled at
// 2 per second; a POST costs 5.
func (l *limiter) allow(ip string, post bool, now time.Time) bool {
	const burst, rate = 120.0, 2.0
	cost := 1.0
	if post {
		cost = 5
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buckets) > 100000 {
		for k, b := range l.buckets {
			if now.Sub(b.last) > time.Minute {
				delete(l.buckets, k)
			}
		}
	}
	b, ok := l.buckets[ip]
	if !ok {
		b = &bucket{tokens: burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens += now.Sub(b.last).Seconds() * rate
	if b.tokens > burst {
		b.tokens = burst
	}
	b.last = now
	if b.tokens < cost {
		return false
	}
	b.tokens -= cost
	return true
}
