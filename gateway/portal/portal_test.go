package portal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/storage"
)

const (
	subjMarker = "SUBJECTMARKER7731"
	bodyMarker = "BODYMARKER5519"
)

// testMessage has a subject, text and HTML alternatives (with a script, a
// remote image and a javascript: link) and a hostile attachment name.
func testMessage(id string) string {
	return "From: Alice Sender <alice@example.org>\r\n" +
		"To: bob@partner.example\r\n" +
		"Subject: Quarterly <b>" + subjMarker + "</b>\r\n" +
		"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n" +
		"Message-ID: <" + id + "@example.org>\r\n" +
		"References: <earlier@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n" +
		"--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n" +
		"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob, " + bodyMarker + " plain.\r\n" +
		"--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"<p>Hello Bob, " + bodyMarker + " <b>html</b>.</p><script>alert(1)</script>" +
		"<img src=3D\"https://tracker.example/pixel.gif\"><a href=3D\"javascript:alert(2)\">click</a>" +
		"<a href=3D\"https://example.org/ok\">ok link</a>\r\n" +
		"--alt--\r\n" +
		"--outer\r\nContent-Type: text/plain; name=\"r.txt\"\r\n" +
		"Content-Disposition: attachment; filename=\"<img src=x onerror=alert(3)>.txt\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\nYXR0YWNobWVudCBkYXRh\r\n" +
		"--outer--\r\n"
}

type sent struct {
	from string
	to   []string
	msg  []byte
}

type env struct {
	t      *testing.T
	p      *Portal
	store  testStore
	srv    *httptest.Server
	mu     sync.Mutex
	now    time.Time
	sent   []sent
	events []string
}

// newEnv starts a portal on a fresh store of backend b.
func newEnv(t *testing.T, b backend) *env {
	t.Helper()
	e := &env{t: t, now: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	st := openStore(t, b)
	e.store = st
	e.srv = httptest.NewUnstartedServer(nil)
	p, err := New(Options{
		BaseURL: "http://" + e.srv.Listener.Addr().String(), NotifyFrom: "secure-mail@example.org", Hostname: "gw.example.org",
		MessageTTL: 720 * time.Hour, MasterKey: bytes.Repeat([]byte{7}, 32), Store: st,
		Send: func(ctx context.Context, from string, to []string, msg []byte) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.sent = append(e.sent, sent{from, to, msg})
			return nil
		},
		Event: func(kind, id, rcpt, detail string) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, kind+" "+id)
		},
		Now: func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	e.srv.Config.Handler = p.Handler()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) advance(d time.Duration) { e.mu.Lock(); e.now = e.now.Add(d); e.mu.Unlock() }

func (e *env) hasEvent(s string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.events {
		if ev == s {
			return true
		}
	}
	return false
}

// deposit stores a message and returns the notice and its link path.
func (e *env) deposit(id, rcpt string) (string, string) {
	e.t.Helper()
	var notice bytes.Buffer
	desc, err := e.p.Deposit(context.Background(), id, rcpt, strings.NewReader(testMessage(id)), &notice)
	if err != nil {
		e.t.Fatal(err)
	}
	if !strings.Contains(desc, id) {
		e.t.Errorf("description %q does not name the id", desc)
	}
	m := regexp.MustCompile(`http://[^/\s]+(/m/[A-Za-z0-9_-]{43})`).FindStringSubmatch(decodeNotice(e.t, notice.Bytes()))
	if m == nil {
		e.t.Fatalf("no link in notice:\n%s", notice.String())
	}
	return notice.String(), m[1]
}

func decodeNotice(t *testing.T, b []byte) string {
	t.Helper()
	p, err := parseMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	return p.Text + "\n" + p.HTML
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects.
type browser struct {
	t   *testing.T
	e   *env
	c   *http.Client
	url string
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: e.t, e: e, url: e.srv.URL, c: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) get(path string) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Get(b.url + path)
	if err != nil {
		b.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.PostForm(b.url+path, form)
	if err != nil {
		b.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field in page:\n%s", page)
	}
	return m[1]
}

func (b *browser) cookie(name string) string {
	u, _ := url.Parse(b.url)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// setPassword follows link and sets pw; it returns the message page.
func (b *browser) setPassword(link, pw string) string {
	b.t.Helper()
	resp, page := b.get(link)
	if resp.StatusCode != 200 || !strings.Contains(page, `autocomplete="new-password"`) || !strings.Contains(page, `type="password"`) {
		b.t.Fatalf("link page %d:\n%s", resp.StatusCode, page)
	}
	resp, page = b.post(link+"/password", url.Values{"csrf": {csrfOf(b.t, page)}, "password": {pw}, "password2": {pw}})
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("set password: %d\n%s", resp.StatusCode, page)
	}
	resp, page = b.get(resp.Header.Get("Location"))
	if resp.StatusCode != 200 {
		b.t.Fatalf("message page %d:\n%s", resp.StatusCode, page)
	}
	return page
}

func TestFullFlowAndSecurity(t *testing.T) { eachStore(t, testFullFlowAndSecurity) }

func testFullFlowAndSecurity(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	const id = "Msg0000000000000000000001"
	notice, link := e.deposit(id, "Bob@Partner.example")

	// The notice names the sender, never the subject or the body.
	for _, want := range []string{"From: secure-mail@example.org", "To: bob@partner.example", "Auto-Submitted: auto-generated",
		"text/plain", "text/html", "Subject: Secure message from Alice Sender"} {
		if !strings.Contains(notice, want) {
			t.Errorf("notice lacks %q:\n%s", want, notice)
		}
	}
	if strings.Contains(notice, subjMarker) || strings.Contains(notice, bodyMarker) {
		t.Errorf("notice leaks the subject or body:\n%s", notice)
	}
	if !e.hasEvent("stored "+id) || !e.hasEvent("notified "+id) {
		t.Errorf("events %v", e.events)
	}

	// Nothing readable in the database files (SQLite: the file and its
	// WAL; PostgreSQL: every file of the cluster, after a checkpoint).
	// The message id and the recipient are stored in clear: finding them
	// shows the scan sees the row.
	if files := e.store.atRest(t); files != nil {
		var seenID, seenRcpt bool
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			seenID = seenID || bytes.Contains(data, []byte(id))
			seenRcpt = seenRcpt || bytes.Contains(data, []byte("bob@partner.example"))
			for _, marker := range []string{subjMarker, bodyMarker, "attachment data", "alice@example.org"} {
				if bytes.Contains(data, []byte(marker)) {
					t.Errorf("%s holds plaintext %q", f, marker)
				}
			}
		}
		if !seenID || !seenRcpt {
			t.Errorf("the stored row is not in the files scanned (id %v, rcpt %v): the at-rest check sees nothing", seenID, seenRcpt)
		}
	}

	b := e.browser()
	// CSRF: a POST without the token is refused.
	resp, _ := b.get(link)
	if resp.StatusCode != 200 {
		t.Fatalf("link: %d", resp.StatusCode)
	}
	if resp, _ := b.post(link+"/password", url.Values{"password": {"correct horse battery"}, "password2": {"correct horse battery"}}); resp.StatusCode != 403 {
		t.Fatalf("POST without csrf: %d, want 403", resp.StatusCode)
	}
	if resp, _ := b.post(link+"/password", url.Values{"csrf": {"forged"}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}}); resp.StatusCode != 403 {
		t.Fatalf("POST with a forged csrf: %d, want 403", resp.StatusCode)
	}
	// An attacker-planted session cookie is not adopted.
	u, _ := url.Parse(b.url)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "postern_session", Value: "attacker-chosen"}})
	page := b.setPassword(link, "correct horse battery")
	if sid := b.cookie("postern_session"); sid == "" || sid == "attacker-chosen" {
		t.Fatalf("session id after password set = %q", sid)
	}

	// The message view: subject, sender, text; scripts, remote images and
	// javascript: links gone; hostile names escaped.
	for _, want := range []string{"Quarterly &lt;b&gt;" + subjMarker, "Alice Sender &lt;alice@example.org&gt;", bodyMarker,
		"&lt;img src=x onerror=alert(3)&gt;.txt", `href="https://example.org/ok"`, "Secure reply to alice@example.org"} {
		if !strings.Contains(page, want) {
			t.Errorf("message page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "alert(1)", "tracker.example", "javascript:", "<img src=x", "<b>" + subjMarker} {
		if strings.Contains(page, bad) {
			t.Errorf("message page contains %q", bad)
		}
	}
	if !e.hasEvent("opened " + id) {
		t.Error("no opened event")
	}

	// Attachment download.
	resp, body := b.get("/msg/" + id + "/att/0")
	if resp.StatusCode != 200 || body != "attachment data" {
		t.Fatalf("download %d %q", resp.StatusCode, body)
	}
	if cd := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") {
		t.Errorf("Content-Disposition %q", cd)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("download without nosniff")
	}
	if resp, _ := b.get("/msg/" + id + "/att/9"); resp.StatusCode != 404 {
		t.Errorf("missing attachment: %d", resp.StatusCode)
	}

	// Secure reply with an attachment, threaded.
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	mw.WriteField("csrf", csrfOf(t, page))
	mw.WriteField("body", "Thanks, "+bodyMarker+" received.")
	fw, _ := mw.CreateFormFile("attachment", "answer.pdf")
	fw.Write([]byte("%PDF-1.4 reply attachment"))
	mw.Close()
	resp, err := b.c.Post(b.url+"/msg/"+id+"/reply", mw.FormDataContentType(), &form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("reply: %d", resp.StatusCode)
	}
	if len(e.sent) != 1 {
		t.Fatalf("sent %d mails, want 1", len(e.sent))
	}
	s := e.sent[0]
	if s.from != "secure-mail@example.org" || len(s.to) != 1 || s.to[0] != "alice@example.org" {
		t.Errorf("reply envelope from %q to %v", s.from, s.to)
	}
	rm, err := mail.ReadMessage(bytes.NewReader(s.msg))
	if err != nil {
		t.Fatal(err)
	}
	if got := rm.Header.Get("In-Reply-To"); got != "<"+id+"@example.org>" {
		t.Errorf("In-Reply-To %q", got)
	}
	if got := rm.Header.Get("References"); got != "<earlier@example.org> <"+id+"@example.org>" {
		t.Errorf("References %q", got)
	}
	if got := rm.Header.Get("From"); got != "bob@partner.example" {
		t.Errorf("reply From %q", got)
	}
	rp, err := parseMessage(s.msg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rp.Text, "Thanks, "+bodyMarker) || len(rp.Atts) != 1 || rp.Atts[0].Name != "answer.pdf" ||
		string(rp.Atts[0].Data) != "%PDF-1.4 reply attachment" {
		t.Errorf("reply content: %+v", rp)
	}
	if !e.hasEvent("reply " + id) {
		t.Error("no reply event")
	}

	// Another browser without the session cannot read the message.
	if resp, _ := e.browser().get("/msg/" + id); resp.StatusCode != 401 {
		t.Errorf("message without session: %d", resp.StatusCode)
	}

	// Revocation: gone at once, content deleted.
	if err := e.p.Revoke(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if resp, body := b.get("/msg/" + id); resp.StatusCode != 410 || strings.Contains(body, bodyMarker) {
		t.Errorf("revoked message: %d", resp.StatusCode)
	}
	if resp, _ := b.get(link); resp.StatusCode != 410 {
		t.Errorf("revoked message link: %d", resp.StatusCode)
	}
	if m, _ := e.store.Message(context.Background(), id); m.Content != nil || m.WrappedKey != nil {
		t.Error("revoked content kept")
	}
	if err := e.p.Revoke(context.Background(), "Unknown000000000"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if !e.hasEvent("revoked " + id) {
		t.Error("no revoked event")
	}
	// A retried Deposit of a revoked message is refused.
	if _, err := e.p.Deposit(context.Background(), id, "bob@partner.example", strings.NewReader(testMessage(id)), io.Discard); !errors.Is(err, ErrGone) {
		t.Errorf("deposit after revoke: %v", err)
	}
}

func TestSecurityHeadersAndCookies(t *testing.T) { eachStore(t, testSecurityHeadersAndCookies) }

func testSecurityHeadersAndCookies(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	_, link := e.deposit("Msg0000000000000000000002", "bob@partner.example")
	resp, _ := e.browser().get(link)
	if got := resp.Header.Get("Content-Security-Policy"); got != csp {
		t.Errorf("CSP %q", got)
	}
	if got := resp.Header.Get("Content-Security-Policy"); strings.Contains(got, "unsafe-inline") || strings.Contains(got, "script-src") {
		t.Errorf("CSP allows script: %q", got)
	}
	var c *http.Cookie
	for _, x := range resp.Cookies() {
		if x.Name == "postern_csrf" {
			c = x
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("csrf cookie %+v", c)
	}

	// With an https base URL the cookies are Secure and __Host- named.
	p, err := New(Options{BaseURL: "https://secure.example.org", NotifyFrom: "n@example.org", MessageTTL: time.Hour,
		MasterKey: make([]byte, 32), Store: e.store, Send: func(context.Context, string, []string, []byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	var notice bytes.Buffer
	if _, err := p.Deposit(context.Background(), "Msg0000000000000000000003", "c@x.example", strings.NewReader(testMessage("x")), &notice); err != nil {
		t.Fatal(err)
	}
	tok := regexp.MustCompile(`/m/([A-Za-z0-9_-]{43})`).FindStringSubmatch(decodeNotice(t, notice.Bytes()))[1]
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "https://secure.example.org/m/"+tok, nil))
	sc := rec.Header().Get("Set-Cookie")
	for _, want := range []string{"__Host-postern_csrf=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %q", sc, want)
		}
	}
	if rec.Header().Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS on https")
	}

	// Plain http is refused unless the base URL is loopback.
	if _, err := New(Options{BaseURL: "http://secure.example.org", NotifyFrom: "n@example.org", MessageTTL: time.Hour,
		MasterKey: make([]byte, 32), Store: e.store, Send: p.opt.Send}); err == nil {
		t.Error("http base_url on a public name accepted")
	}
	if _, err := New(Options{BaseURL: "https://x.example", NotifyFrom: "n@example.org", MessageTTL: time.Hour,
		MasterKey: make([]byte, 16), Store: e.store, Send: p.opt.Send}); err == nil {
		t.Error("short master key accepted")
	}
}

func TestLoginLockoutAndSessionRotation(t *testing.T) {
	eachStore(t, testLoginLockoutAndSessionRotation)
}

func testLoginLockoutAndSessionRotation(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	_, link1 := e.deposit("Msg0000000000000000000010", "bob@partner.example")
	_, link2 := e.deposit("Msg0000000000000000000011", "bob@partner.example")
	b := e.browser()
	b.setPassword(link1, "the right password")
	first := b.cookie("postern_session")

	// The second message asks for the password (a new browser).
	b2 := e.browser()
	resp, page := b2.get(link2)
	if resp.StatusCode != 200 || !strings.Contains(page, `autocomplete="current-password"`) || strings.Contains(page, "new-password") {
		t.Fatalf("second link does not ask for the password: %d\n%s", resp.StatusCode, page)
	}
	// The notice link cannot overwrite the existing password.
	if resp, _ := b2.post(link2+"/password", url.Values{"csrf": {csrfOf(t, page)}, "password": {"attacker password"}, "password2": {"attacker password"}}); resp.StatusCode != 403 {
		t.Errorf("password overwrite through a notice link: %d", resp.StatusCode)
	}
	// Login in the first browser rotates its session id.
	resp, page = b.get(link2)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logged-in browser on the second link: %d", resp.StatusCode)
	}
	b.c.Jar.SetCookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(b.url, "http://")}, []*http.Cookie{{Name: "postern_session", Value: "", MaxAge: -1}})
	_, page = b.get(link2)
	resp, _ = b.post(link2+"/login", url.Values{"csrf": {csrfOf(t, page)}, "password": {"the right password"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	if second := b.cookie("postern_session"); second == "" || second == first {
		t.Errorf("session id not renewed at login: %q → %q", first, second)
	}

	// Five wrong passwords lock the address, also against the right one.
	_, page = b2.get(link2)
	tok := csrfOf(t, page)
	for i := 0; i < 4; i++ {
		if resp, _ := b2.post(link2+"/login", url.Values{"csrf": {tok}, "password": {"wrong"}}); resp.StatusCode != 401 {
			t.Fatalf("wrong password %d: %d", i+1, resp.StatusCode)
		}
	}
	if resp, _ := b2.post(link2+"/login", url.Values{"csrf": {tok}, "password": {"wrong"}}); resp.StatusCode != 429 {
		t.Fatalf("fifth wrong password: %d, want 429", resp.StatusCode)
	}
	if resp, _ := b2.post(link2+"/login", url.Values{"csrf": {tok}, "password": {"the right password"}}); resp.StatusCode != 429 {
		t.Fatalf("right password while locked: %d, want 429", resp.StatusCode)
	}
	if !e.hasEvent("login_failed Msg0000000000000000000011") {
		t.Error("no login_failed event")
	}
	e.advance(14 * time.Minute)
	if resp, _ := b2.post(link2+"/login", url.Values{"csrf": {tok}, "password": {"the right password"}}); resp.StatusCode != 429 {
		t.Fatalf("after 14 minutes: %d, want still locked", resp.StatusCode)
	}
	e.advance(2 * time.Minute)
	if resp, _ := b2.post(link2+"/login", url.Values{"csrf": {tok}, "password": {"the right password"}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after 16 minutes: %d, want login", resp.StatusCode)
	}
}

func TestForgotPassword(t *testing.T) { eachStore(t, testForgotPassword) }

func testForgotPassword(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	_, link := e.deposit("Msg0000000000000000000020", "bob@partner.example")
	e.browser().setPassword(link, "forgotten password")
	b := e.browser()
	_, page := b.get(link)
	resp, _ := b.post(link+"/forgot", url.Values{"csrf": {csrfOf(t, page)}})
	if resp.StatusCode != 200 || len(e.sent) != 1 {
		t.Fatalf("forgot: %d, %d mails", resp.StatusCode, len(e.sent))
	}
	if e.sent[0].to[0] != "bob@partner.example" || e.sent[0].from != "secure-mail@example.org" {
		t.Errorf("reset mail envelope %+v", e.sent[0])
	}
	m := regexp.MustCompile(`/m/[A-Za-z0-9_-]{43}`).FindString(decodeNotice(t, e.sent[0].msg))
	if m == "" || m == link {
		t.Fatalf("no fresh link in the reset mail")
	}
	page = b.setPassword(m, "a brand new password")
	if !strings.Contains(page, bodyMarker) {
		t.Error("message not shown after reset")
	}
	// The reset link is single-use.
	if resp, _ := e.browser().get(m); resp.StatusCode != 404 {
		t.Errorf("reset link reused: %d", resp.StatusCode)
	}
	// The new password works, the old one does not.
	b3 := e.browser()
	_, page = b3.get(link)
	if resp, _ := b3.post(link+"/login", url.Values{"csrf": {csrfOf(t, page)}, "password": {"forgotten password"}}); resp.StatusCode != 401 {
		t.Errorf("old password: %d", resp.StatusCode)
	}
	if resp, _ := b3.post(link+"/login", url.Values{"csrf": {csrfOf(t, page)}, "password": {"a brand new password"}}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("new password: %d", resp.StatusCode)
	}
}

func TestExpiry(t *testing.T) { eachStore(t, testExpiry) }

func testExpiry(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	const id = "Msg0000000000000000000030"
	_, link := e.deposit(id, "bob@partner.example")
	b := e.browser()
	e.advance(719 * time.Hour)
	b.setPassword(link, "expiring password")
	e.advance(time.Hour)
	// Unreadable at the TTL even before the sweeper ran.
	if resp, _ := b.get("/msg/" + id); resp.StatusCode != 410 {
		t.Errorf("expired message before sweep: %d", resp.StatusCode)
	}
	if resp, body := e.browser().get(link); resp.StatusCode != 410 || !strings.Contains(body, "expired") {
		t.Errorf("link of an expired message: %d", resp.StatusCode)
	}
	n, err := e.p.ExpireNow(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("ExpireNow = %d, %v", n, err)
	}
	if m, _ := e.store.Message(context.Background(), id); m.State != storage.StateExpired || m.Content != nil {
		t.Errorf("expired message kept content: %+v", m.State)
	}
	if resp, body := b.get("/msg/" + id); resp.StatusCode != 410 || !strings.Contains(body, "expired") {
		t.Errorf("expired message: %d", resp.StatusCode)
	}
	if !e.hasEvent("expired " + id) {
		t.Error("no expired event")
	}
}

func TestDepositIdempotent(t *testing.T) { eachStore(t, testDepositIdempotent) }

func testDepositIdempotent(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	const id = "Msg0000000000000000000040"
	_, link1 := e.deposit(id, "bob@partner.example")
	_, link2 := e.deposit(id, "bob@partner.example")
	if link1 == link2 {
		t.Error("retry did not issue a fresh link")
	}
	n := 0
	for _, ev := range e.events {
		if ev == "stored "+id {
			n++
		}
	}
	if n != 1 {
		t.Errorf("stored %d times", n)
	}
	for _, l := range []string{link1, link2} {
		if resp, _ := e.browser().get(l); resp.StatusCode != 200 {
			t.Errorf("link %d", resp.StatusCode)
		}
	}
	if _, err := e.p.Deposit(context.Background(), id, "eve@x.example", strings.NewReader("x"), io.Discard); err == nil {
		t.Error("same id for another recipient accepted")
	}
	if _, err := e.p.Deposit(context.Background(), "bad id!", "bob@partner.example", strings.NewReader("x"), io.Discard); err == nil {
		t.Error("bad id accepted")
	}
}

func TestTokenGuessingLocksSource(t *testing.T) { eachStore(t, testTokenGuessingLocksSource) }

func testTokenGuessingLocksSource(t *testing.T, kind backend) {
	e := newEnv(t, kind)
	_, link := e.deposit("Msg0000000000000000000050", "bob@partner.example")
	b := e.browser()
	for i := 0; i < lockAfter; i++ {
		tok, _ := randomToken()
		if resp, _ := b.get("/m/" + tok); resp.StatusCode != 404 {
			t.Fatalf("guess %d: %d", i, resp.StatusCode)
		}
	}
	if resp, _ := b.get(link); resp.StatusCode != 429 {
		t.Errorf("after %d bad tokens the source is not locked: %d", lockAfter, resp.StatusCode)
	}
	if resp, _ := b.get("/m/short"); resp.StatusCode != 429 {
		t.Errorf("locked source: %d", resp.StatusCode)
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := hashPassword("pw one two three")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$") {
		t.Errorf("hash %q", h)
	}
	if !checkPassword(h, "pw one two three") || checkPassword(h, "pw one two thre") || checkPassword("garbage", "x") {
		t.Error("checkPassword wrong")
	}
	h2, _ := hashPassword("pw one two three")
	if h == h2 {
		t.Error("no salt")
	}
}

func TestSealOpen(t *testing.T) {
	k := bytes.Repeat([]byte{1}, 32)
	s, err := seal(k, []byte("secret"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := open(k, s, []byte("a")); err != nil || string(p) != "secret" {
		t.Fatalf("open = %q, %v", p, err)
	}
	if _, err := open(k, s, []byte("b")); err == nil {
		t.Error("wrong aad accepted")
	}
	s[len(s)-1] ^= 1
	if _, err := open(k, s, []byte("a")); err == nil {
		t.Error("tampered ciphertext accepted")
	}
	if _, err := open(k, []byte("x"), nil); err == nil {
		t.Error("short input accepted")
	}
}

func TestClientIPTrustedProxy(t *testing.T) {
	p := &Portal{}
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.1:1234"
	r.Header.Set("X-Forwarded-For", "203.0.113.9, 10.0.0.2")
	if got := p.clientIP(r); got != "10.0.0.1" {
		t.Errorf("untrusted proxy: %s", got)
	}
	p.opt.TrustedProxies = mustPrefixes("10.0.0.0/8")
	if got := p.clientIP(r); got != "203.0.113.9" {
		t.Errorf("trusted proxy: %s", got)
	}
}

func TestParseMessageEncodings(t *testing.T) {
	raw := "From: =?iso-8859-1?q?J=F6rg?= <j@x.example>\r\nSubject: =?utf-8?b?w7xiZXI=?=\r\n" +
		"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n"
	p, err := parseMessage([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if p.Subject != "über" || !strings.Contains(p.Text, "Grüße") || !strings.HasPrefix(p.From, "Jörg") {
		t.Errorf("parsed %+v", p)
	}
	if got := cleanName("../../etc/passwd\x00"); got != "passwd_" {
		t.Errorf("cleanName = %q", got)
	}
}

func mustPrefixes(s ...string) (out []netipPrefix) {
	for _, x := range s {
		out = append(out, mustPrefix(x))
	}
	return out
}
