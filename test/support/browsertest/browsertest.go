// Package browsertest starts a headless Chromium for tests, driven
// through chromedp.
package browsertest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is where Debian's chromium package installs the browser.
const ChromiumPath = "/usr/bin/chromium"

// Require skips tb when Chromium is not installed at ChromiumPath.
func Require(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		tb.Skip("Chromium not installed at " + ChromiumPath + " (apt-get install -y chromium)")
	}
}

// New starts a headless Chromium with a fresh profile (skipping tb when
// it is not installed) and returns its context, bounded to timeout after
// the browser has started. The browser is shut down when tb ends.
func New(tb testing.TB, timeout time.Duration) context.Context {
	tb.Helper()
	Require(tb)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(tb.TempDir()), chromedp.WindowSize(1100, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	tb.Cleanup(cancelA)
	bctx, cancelB := chromedp.NewContext(actx)
	tb.Cleanup(cancelB)
	// The first Run starts the browser; it must not carry the timeout.
	if err := chromedp.Do(bctx); err != nil {
		tb.Fatalf("start chromium: %v", err)
	}
	bctx, cancelT := context.WithTimeout(bctx, timeout)
	tb.Cleanup(cancelT)
	return bctx
}

// Downloads lets the browser save downloads into a temporary folder it
// returns, and reports the GUID (the saved file's name in that folder) of
// each completed download on the channel.
func Downloads(tb testing.TB, ctx context.Context) (dir string, done <-chan string) {
	tb.Helper()
	dir = tb.TempDir()
	ch := make(chan string, 1)
	if err := chromedp.ListenBrowser(ctx, func(ev any) {
		if e, ok := ev.(*browser.EventDownloadProgress); ok && e.State == browser.DownloadProgressStateCompleted {
			select {
			case ch <- e.GUID:
			default:
			}
		}
	}); err != nil {
		tb.Fatalf("listen to the browser: %v", err)
	}
	events := true
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: &events}); err != nil {
		tb.Fatalf("download behaviour: %v", err)
	}
	return dir, ch
}
