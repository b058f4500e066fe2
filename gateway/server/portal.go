package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/config"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/portal"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/gateway/storage"
)

// enqueueReport queues a TLS report (already DKIM-signed when a key
// exists) marked to bypass the policy engine.
func enqueueReport(q *queue.Queue, from string, to []string, msg []byte) error {
	w, err := q.NewMessage()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		w.Abort()
		return fmt.Errorf("queue TLS report: %w", err)
	}
	rcpts := make([]*queue.Recipient, len(to))
	for i, a := range to {
		rcpts[i] = &queue.Recipient{Addr: a}
	}
	_, err = w.Commit(queue.Envelope{From: from, Report: true, TLSRequiredNo: true}, rcpts, "", "local")
	return err
}

// Enqueue returns a function that queues a mail postern generated
// (portal password-reset links, secure replies) on the same durable path
// as SMTP ingress: it returns nil only once the message is committed.
func Enqueue(q *queue.Queue, hostname string) func(ctx context.Context, from string, to []string, msg []byte) error {
	return func(_ context.Context, from string, to []string, msg []byte) error {
		w, err := q.NewMessage()
		if err != nil {
			return err
		}
		received := fmt.Sprintf("Received: by %s (postern) id %s;\r\n\t%s\r\n", hostname, w.ID(), time.Now().Format(time.RFC1123Z))
		if _, err := w.Write([]byte(received)); err != nil {
			w.Abort()
			return err
		}
		if _, err := w.Write(msg); err != nil {
			w.Abort()
			return err
		}
		msgID := ""
		if m, err := mail.ReadMessage(bytes.NewReader(msg)); err == nil {
			msgID = m.Header.Get("Message-ID")
		}
		rcpts := make([]*queue.Recipient, len(to))
		for i, a := range to {
			rcpts[i] = &queue.Recipient{Addr: a}
		}
		_, err = w.Commit(queue.Envelope{From: from}, rcpts, msgID, "local")
		return err
	}
}

// PortalEvents returns the portal's event hook: a "portal" audit record
// (no content, no secrets) and postern_portal_events_total{event}.
func PortalEvents(a *audit.Log, m *metrics.Metrics, log *slog.Logger) func(kind, id, rcpt, detail string) {
	return func(kind, id, rcpt, detail string) {
		if m != nil {
			m.PortalEvents.WithLabelValues(kind).Inc()
		}
		reason := kind
		if detail != "" {
			reason += ": " + detail
		}
		if _, err := a.Append(audit.Record{Event: "portal", PortalID: id, Rcpt: rcpt, Reason: reason}); err != nil {
			log.Error("audit write failed for a portal event", "event", kind, "portal_id", id, "err", err)
		}
	}
}

// NewPortal builds the portal from the config, or returns nil when
// portal.base_url is not set.
func NewPortal(cfg *config.Config, st storage.Store, send func(context.Context, string, []string, []byte) error,
	event func(kind, id, rcpt, detail string), log *slog.Logger) (*portal.Portal, error) {
	if !cfg.Portal.Enabled() {
		return nil, nil
	}
	key, err := config.ReadMasterKey(cfg.Portal.MasterKeyFile)
	if err != nil {
		return nil, fmt.Errorf("portal.master_key_file: %w", err)
	}
	p, err := portal.New(portal.Options{
		BaseURL: cfg.Portal.BaseURL, NotifyFrom: cfg.Portal.NotifyFrom, Hostname: cfg.Hostname,
		MessageTTL: cfg.Portal.MessageTTL, MasterKey: key, Store: st, Send: send, Event: event,
		TrustedProxies: cfg.Portal.TrustedProxies,
		Log:            log.With("component", "portal"),
	})
	if err != nil {
		return nil, fmt.Errorf("portal: %w", err)
	}
	return p, nil
}

// servePortal runs the portal's HTTP(S) listener and its expiry sweep
// until ctx is done; it returns the server for shutdown.
func servePortal(ctx context.Context, cfg *config.Config, p *portal.Portal, log *slog.Logger) *http.Server {
	go func() {
		t := time.NewTicker(10 * time.Minute)
		defer t.Stop()
		for {
			if n, err := p.ExpireNow(ctx); err != nil {
				log.Error("portal expiry", "err", err)
			} else if n > 0 {
				log.Info("portal messages expired", "count", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	hs := &http.Server{Addr: cfg.Portal.Listen, Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 5 * time.Minute, WriteTimeout: 5 * time.Minute, IdleTimeout: 2 * time.Minute}
	go func() {
		var err error
		if cfg.Portal.TLSCert != "" {
			err = hs.ListenAndServeTLS(cfg.Portal.TLSCert, cfg.Portal.TLSKey)
		} else {
			err = hs.ListenAndServe()
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("portal listener", "addr", cfg.Portal.Listen, "err", err)
		}
	}()
	log.Info("portal listening", "addr", cfg.Portal.Listen, "base_url", cfg.Portal.BaseURL)
	return hs
}

// RevokeHandler serves POST /admin/portal/revoke?id=ID on the admin
// listener for `postern portal revoke` while the server runs (the server
// holds the audit log). Only loopback clients may use it.
func RevokeHandler(p *portal.Portal, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.Unmap().IsLoopback() {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		id := r.URL.Query().Get("id")
		switch err := p.Revoke(r.Context(), id); {
		case err == nil:
			log.Info("portal message revoked", "portal_id", id)
			fmt.Fprintf(w, "portal message %s revoked\n", id)
		case errors.Is(err, portal.ErrNotFound):
			http.Error(w, "no portal message "+id, http.StatusNotFound)
		default:
			log.Error("portal revoke", "portal_id", id, "err", err)
			http.Error(w, "revoke failed", http.StatusInternalServerError)
		}
	})
}
