package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/postern-mail/postern/test/support/browsertest"
	"github.com/postern-mail/postern/test/support/pgtest"
)

// TestPortalBrowserEndToEnd is issue 6's "done when", through the real
// binary and a real browser, on both stores: a [secure] message with an
// attachment to a recipient without keys → the notice arrives at the
// recipient's MX → headless Chromium follows its link, sets a password,
// reads the message, downloads the attachment and sends a secure reply
// (with an attachment) → the reply arrives at the sender domain's MX,
// threaded to the original; the audit log has the portal records; five
// wrong passwords lock the address; nothing readable is at rest.
func TestPortalBrowserEndToEnd(t *testing.T) {
	browsertest.Require(t)
	t.Run("sqlite", func(t *testing.T) { portalBrowserE2E(t, "sqlite") })
	t.Run("postgres", func(t *testing.T) { portalBrowserE2E(t, "postgres") })
}

func portalBrowserE2E(t *testing.T, driver string) {
	w := newWorld(t)
	rcptMX := w.receiver(ipPlain, "mx.plain.example", false)
	senderMX := w.receiver(ipSender, "mx.example.org", true)

	storageSection := ""
	var pg *pgtest.Cluster
	if driver == "postgres" {
		pg = pgtest.Start(t)
		storageSection = "storage:\n  driver: postgres\n  dsn: \"" + pg.DSN(t) + "\"\n"
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.dir, "master.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	portalPort := freePort(t)
	base := "http://127.0.0.1:" + itoa(portalPort)
	w.policy = "methods: [smime, pgp, tls, portal]\ntls: {level: verify}\nrules:\n  - name: confidential\n    when: {subject_contains: [\"[secure]\"]}\n    methods: [smime, pgp, portal]\n    strip_subject_tag: true\n"
	w.portal = "portal:\n  listen: \"127.0.0.1:" + itoa(portalPort) + "\"\n  base_url: \"" + base + "\"\n  master_key_file: master.key\n  notify_from: secure-mail@example.org\n" + storageSection
	w.start()

	const (
		origID      = "<portal-browser-e2e@example.org>"
		bodyMarker  = "BROWSER-BODY-MARKER-4417"
		subjMarker  = "BROWSER-SUBJECT-MARKER"
		attMarker   = "ATTACHMENT-MARKER-9902 lab values"
		replyText   = "Thank you doctor, REPLY-MARKER-6203 received."
		replyAttTxt = "REPLY-ATTACHMENT-MARKER-1180"
		password    = "a long browser password"
	)
	attFile := filepath.Join(t.TempDir(), "labs.txt")
	if err := os.WriteFile(attFile, []byte(attMarker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := w.swaks("--from", "doctor@example.org", "--to", "dave@plain.example",
		"--header", "Subject: [secure] biopsy "+subjMarker, "--header", "Message-Id: "+origID,
		"--body", "Dear Dave, "+bodyMarker+" see the attached lab values.",
		"--attach-type", "text/plain", "--attach-name", "labs.txt", "--attach", "@"+attFile)
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}

	// The notice at the recipient's MX: the sender, not the subject or body.
	waitFor(t, 30*time.Second, "the portal notice at mx.plain.example", func() bool { return len(rcptMX.messages()) == 1 })
	notice := rcptMX.messages()[0]
	if len(notice.Rcpts) != 1 || notice.Rcpts[0] != "dave@plain.example" {
		t.Fatalf("notice envelope: to %v", notice.Rcpts)
	}
	for _, leak := range []string{bodyMarker, subjMarker, attMarker} {
		if bytes.Contains(notice.Data, []byte(leak)) {
			t.Fatalf("the notice leaks %q:\n%s", leak, notice.Data)
		}
	}
	link := regexp.MustCompile(`http://127\.0\.0\.1:\d+/m/[A-Za-z0-9_-]{43}`).FindString(strings.ReplaceAll(string(notice.Data), "=\r\n", ""))
	if link == "" || !strings.HasPrefix(link, base+"/m/") {
		t.Fatalf("no portal link under %s in the notice:\n%s", base, notice.Data)
	}
	dec := w.findAudit("decision", "dave@plain.example", "")
	portalID, _ := dec["portal_id"].(string)
	if dec["method"] != "portal" || portalID == "" || dec["message_id"] != origID {
		t.Fatalf("decision record: %v", dec)
	}

	// The browser.
	bctx := browsertest.New(t, 60*time.Second)
	downloads, done := browsertest.Downloads(t, bctx)

	// Follow the link, set a password, read the message.
	if err := chromedp.Do(bctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.ID("password2")),
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.SendKeys(chromedp.ID("password2"), password),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.ID("subject")),
	); err != nil {
		t.Fatalf("set password: %v", err)
	}
	subject := mustRun(t, bctx, chromedp.Text(chromedp.ID("subject")))
	from := mustRun(t, bctx, chromedp.Text(chromedp.ID("from")))
	body := mustRun(t, bctx, chromedp.Text(chromedp.ID("body")))
	if !strings.Contains(subject, "biopsy "+subjMarker) || strings.Contains(subject, "[secure]") {
		t.Errorf("subject on the page %q (want the tag stripped)", subject)
	}
	if !strings.Contains(from, "doctor@example.org") || !strings.Contains(body, bodyMarker) {
		t.Errorf("page: from %q, body %q", from, body)
	}
	if w.findAudit("portal", "dave@plain.example", "") == nil {
		t.Error("no portal audit record for the recipient")
	}

	// The attachment: its response headers (with the browser's session
	// cookie), then a real download in the browser.
	href := mustRun(t, bctx, chromedp.AttributeValue(chromedp.CSS("ul.atts a"), "href"))
	if !href.Exists || !strings.HasPrefix(href.Value, "/msg/"+portalID+"/att/") {
		t.Fatalf("attachment link %+v", href)
	}
	cookies, err := chromedp.Call(bctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	if err != nil {
		t.Fatalf("cookies: %v", err)
	}
	req, _ := http.NewRequest("GET", base+href.Value, nil)
	var session bool
	for _, c := range cookies.Cookies {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
		session = session || (c.Name == "postern_session" && c.HTTPOnly)
	}
	if !session {
		t.Errorf("no HttpOnly session cookie in the browser: %+v", cookies.Cookies)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(data)) != attMarker {
		t.Errorf("attachment with the session: %s %q", resp.Status, data)
	}
	if cd, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err != nil || cd != "attachment" || params["filename"] != "labs.txt" {
		t.Errorf("Content-Disposition %q", resp.Header.Get("Content-Disposition"))
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("attachment without nosniff: %v", resp.Header)
	}
	if resp, err := http.Get(base + href.Value); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("attachment without a session: %s, want 401", resp.Status)
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("ul.atts a"))); err != nil {
		t.Fatalf("click attachment: %v", err)
	}
	select {
	case guid := <-done:
		got, err := os.ReadFile(filepath.Join(downloads, guid))
		if err != nil || strings.TrimSpace(string(got)) != attMarker {
			t.Errorf("downloaded %q, %v", got, err)
		}
	case <-bctx.Done():
		t.Fatal("attachment download did not complete")
	}

	// The secure reply, with an attachment.
	replyAtt := filepath.Join(t.TempDir(), "signed.txt")
	if err := os.WriteFile(replyAtt, []byte(replyAttTxt), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("reply"), replyText),
		chromedp.SetUploadFiles(chromedp.ID("attachment"), []string{replyAtt}),
		chromedp.Click(chromedp.CSS(`form[action$="/reply"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("p.ok")),
	); err != nil {
		t.Fatalf("reply: %v", err)
	}
	waitFor(t, 30*time.Second, "the reply at mx.example.org", func() bool { return len(senderMX.messages()) >= 1 })
	got := senderMX.messages()
	if len(got) != 1 {
		t.Fatalf("mx.example.org got %d messages, want the reply only", len(got))
	}
	reply := got[0]
	if !reply.TLS || reply.From != "secure-mail@example.org" || len(reply.Rcpts) != 1 || reply.Rcpts[0] != "doctor@example.org" {
		t.Fatalf("reply envelope: TLS %v from %q to %v", reply.TLS, reply.From, reply.Rcpts)
	}
	checkReply(t, reply.Data, origID, replyText, replyAttTxt)
	waitFor(t, 10*time.Second, "the portal and delivery audit records", func() bool {
		return portalAudit(w, portalID, "opened") && portalAudit(w, portalID, "reply") &&
			w.findAudit("delivery", "doctor@example.org", "delivered") != nil
	})

	// Sign out; five wrong passwords lock the address, then also the
	// right one is refused.
	if _, err := chromedp.RunResponse(bctx, chromedp.Click(chromedp.CSS(`form[action="/logout"] button`))); err != nil {
		t.Fatalf("sign out: %v", err)
	}
	if h1 := mustRun(t, bctx, chromedp.Text(chromedp.CSS("h1"))); h1 != "Signed out" {
		t.Fatalf("after sign out: %q", h1)
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(link)); err != nil {
		t.Fatalf("reopen the link: %v", err)
	}
	for i := 1; i <= 5; i++ {
		status, h1 := loginAttempt(t, bctx, "not the password")
		if i < 5 && (status != http.StatusUnauthorized || h1 != "Sign in") {
			t.Fatalf("wrong password %d: %d %q, want 401 and the sign-in page again", i, status, h1)
		}
		if i == 5 && (status != http.StatusTooManyRequests || h1 != "Temporarily locked") {
			t.Fatalf("fifth wrong password: %d %q, want 429 Temporarily locked", status, h1)
		}
	}
	// The right password is refused while locked (the lock is per address
	// and per source IP, so the link page itself answers 429 now).
	nav, err := chromedp.RunResponse(bctx, chromedp.Navigate(link))
	if err != nil {
		t.Fatal(err)
	}
	if h1 := mustRun(t, bctx, chromedp.Text(chromedp.CSS("h1"))); nav.Status != http.StatusTooManyRequests || h1 != "Temporarily locked" {
		t.Errorf("link while locked: %d %q", nav.Status, h1)
	}
	if !portalAudit(w, portalID, "login_failed") {
		t.Error("no login_failed audit record")
	}

	// Nothing readable at rest.
	var files []string
	if pg != nil {
		files = pg.DataFiles(t)
	} else {
		files = []string{filepath.Join(w.dir, "var", "postern.db"), filepath.Join(w.dir, "var", "postern.db-wal")}
	}
	var seen bool
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		seen = seen || bytes.Contains(b, []byte(portalID))
		for _, m := range []string{bodyMarker, subjMarker, attMarker} {
			if bytes.Contains(b, []byte(m)) {
				t.Errorf("%s holds %q in plaintext", f, m)
			}
		}
	}
	if files != nil && !seen {
		t.Errorf("portal id %s not found in the %s files: the at-rest check sees nothing", portalID, driver)
	}
}

// loginAttempt submits pw on the sign-in page in the browser and returns
// the HTTP status and the heading of the page that answers.
func loginAttempt(t *testing.T, ctx context.Context, pw string) (int64, string) {
	t.Helper()
	resp, err := chromedp.RunResponse(ctx,
		chromedp.WaitVisible(chromedp.CSS(`input[autocomplete="current-password"]`)),
		chromedp.SendKeys(chromedp.ID("password"), pw),
		chromedp.Click(chromedp.CSS(`form[action$="/login"] button[type=submit]`)),
	)
	if err != nil {
		t.Fatalf("login attempt: %v", err)
	}
	return resp.Status, mustRun(t, ctx, chromedp.Text(chromedp.CSS("h1")))
}

// checkReply checks the reply mail: threaded to orig, the text and the
// attachment.
func checkReply(t *testing.T, raw []byte, orig, text, att string) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("reply: %v\n%s", err, raw)
	}
	if got := m.Header.Get("In-Reply-To"); got != orig {
		t.Errorf("reply In-Reply-To %q, want %q", got, orig)
	}
	if refs := m.Header.Get("References"); !strings.Contains(refs, orig) {
		t.Errorf("reply References %q lacks %s", refs, orig)
	}
	if m.Header.Get("To") != "doctor@example.org" || m.Header.Get("From") != "dave@plain.example" {
		t.Errorf("reply From %q To %q", m.Header.Get("From"), m.Header.Get("To"))
	}
	subj, _ := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if !strings.HasPrefix(subj, "Re: ") || !strings.Contains(subj, "biopsy") {
		t.Errorf("reply Subject %q", subj)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("reply Content-Type %q", m.Header.Get("Content-Type"))
	}
	var gotText, gotAtt bool
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reply part: %v", err)
		}
		b, _ := io.ReadAll(p) // quoted-printable is decoded by NextPart
		if p.Header.Get("Content-Transfer-Encoding") == "base64" {
			b, _ = base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(b)))
		}
		gotText = gotText || strings.Contains(string(b), text)
		gotAtt = gotAtt || (p.FileName() == "signed.txt" && string(b) == att)
	}
	if !gotText || !gotAtt {
		t.Errorf("reply content: text %v, attachment %v\n%s", gotText, gotAtt, raw)
	}
}

func portalAudit(w *world, id, kind string) bool {
	for _, r := range w.audit() {
		reason, _ := r["reason"].(string)
		if r["event"] == "portal" && r["portal_id"] == id && strings.HasPrefix(reason, kind) {
			return true
		}
	}
	return false
}

func mustRun[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
