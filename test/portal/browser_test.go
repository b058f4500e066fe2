// Package portal_test drives the secure web portal in a real headless
// Chromium: open the notice link, set a password, read the message,
// download an attachment, send a secure reply.
package portal_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/postern-mail/postern/gateway/portal"
	"github.com/postern-mail/postern/gateway/storage"
	"github.com/postern-mail/postern/test/support/browsertest"
)

const message = "From: Alice Sender <alice@example.org>\r\n" +
	"To: bob@partner.example\r\n" +
	"Subject: Contract draft for review\r\n" +
	"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n" +
	"Message-ID: <contract-1@example.org>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
	"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" +
	"<p>Hello Bob,</p><p>please find the <b>contract draft</b> attached.</p><script>document.title='pwned'</script>" +
	"<img src=\"https://tracker.example/p.gif\"><p>Regards,<br>Alice</p>\r\n" +
	"--b\r\nContent-Type: text/plain; name=\"draft.txt\"\r\nContent-Disposition: attachment; filename=\"draft.txt\"\r\n\r\n" +
	"The contract draft.\r\n--b--\r\n"

func TestBrowserFlow(t *testing.T) {
	browsertest.Require(t)
	ctx := context.Background()
	st, err := storage.Open(ctx, "sqlite", filepath.Join(t.TempDir(), "postern.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	srv := httptest.NewUnstartedServer(nil)
	var mu sync.Mutex
	var replies [][]byte
	p, err := portal.New(portal.Options{
		BaseURL: "http://" + srv.Listener.Addr().String(), NotifyFrom: "secure-mail@example.org", Hostname: "gw.example.org",
		MessageTTL: 720 * time.Hour, MasterKey: bytes.Repeat([]byte{9}, 32), Store: st,
		Send: func(ctx context.Context, from string, to []string, msg []byte) error {
			mu.Lock()
			defer mu.Unlock()
			replies = append(replies, msg)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = p.Handler()
	srv.Start()
	defer srv.Close()

	var notice bytes.Buffer
	if _, err := p.Deposit(ctx, "BrowserMsg000000000000001", "bob@partner.example", strings.NewReader(message), &notice); err != nil {
		t.Fatal(err)
	}
	link := regexp.MustCompile(`http://[^\s"<>=]+/m/[A-Za-z0-9_-]{43}`).FindString(strings.ReplaceAll(notice.String(), "=\r\n", ""))
	if link == "" {
		t.Fatalf("no link in notice:\n%s", notice.String())
	}

	bctx := browsertest.New(t, 90*time.Second)

	downloads, done := browsertest.Downloads(t, bctx)
	err = chromedp.Do(bctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.ID("password")),
		chromedp.SendKeys(chromedp.ID("password"), "a long browser password"),
		chromedp.SendKeys(chromedp.ID("password2"), "a long browser password"),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.ID("subject")),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	subject := run(t, bctx, chromedp.Text(chromedp.ID("subject")))
	body := run(t, bctx, chromedp.Text(chromedp.ID("body")))
	title := run(t, bctx, chromedp.Title())
	if subject != "Contract draft for review" || !strings.Contains(body, "contract draft") || strings.Contains(title, "pwned") {
		t.Errorf("page: subject %q, title %q, body %q", subject, title, body)
	}
	shot := run(t, bctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(t.TempDir(), "message.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("POSTERN_SCREENSHOT_DIR"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, "portal-message.png"), shot, 0o644)
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("ul.atts a"))); err != nil {
		t.Fatalf("click attachment: %v", err)
	}
	select {
	case guid := <-done:
		data, err := os.ReadFile(filepath.Join(downloads, guid))
		if err != nil || strings.TrimSpace(string(data)) != "The contract draft." {
			t.Errorf("downloaded %q, %v", data, err)
		}
	case <-bctx.Done():
		t.Fatal("attachment download did not complete")
	}

	err = chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("reply"), "Thanks Alice, signed copy follows."),
		chromedp.Click(chromedp.CSS(`form[action$="/reply"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("p.ok")),
	)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if status := run(t, bctx, chromedp.Text(chromedp.CSS("p.ok"))); !strings.Contains(status, "sent") {
		t.Errorf("status after reply: %q", status)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(replies) != 1 {
		t.Fatalf("%d replies sent, want 1", len(replies))
	}
	m, err := mail.ReadMessage(bytes.NewReader(replies[0]))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("In-Reply-To") != "<contract-1@example.org>" || m.Header.Get("To") != "alice@example.org" {
		t.Errorf("reply headers: %v", m.Header)
	}
	if !bytes.Contains(replies[0], []byte("Thanks Alice, signed copy follows.")) {
		t.Errorf("reply body missing:\n%s", replies[0])
	}
}

func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
