// Package metrics holds postern's Prometheus metrics (SPEC §7) and the admin
// HTTP endpoints /metrics, /healthz and /readyz.
//
// Every family is registered at start-up with its known label values set to
// zero, so dashboards and alerts work before the first event.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label values, listed so that every series exists from start-up.
var (
	// Methods are the policy methods (SPEC §4).
	Methods = []string{"smime", "pgp", "tls", "portal"}
	// ReceivedResults: accepted (queued, 250), rejected (5xx to the client),
	// error (4xx: our trouble, e.g. disk).
	ReceivedResults = []string{"accepted", "rejected", "error"}
	// DeliveryResults as in audit records (SPEC §6).
	DeliveryResults = []string{"delivered", "deferred", "bounced"}
	// KeySources and KeyResults label key look-ups.
	KeySources = []string{"local", "wkd", "vks", "ldap"}
	KeyResults = []string{"found", "not_found", "error"}
	// ReloadResults label policy reloads.
	ReloadResults = []string{"ok", "error"}
	// PortalEvents label portal activity.
	PortalEvents = []string{"stored", "notified", "opened", "login_failed", "reply", "revoked", "expired"}
)

// Metrics is the set of postern metric families on one registry.
type Metrics struct {
	Registry *prometheus.Registry

	Received        *prometheus.CounterVec   // result
	Decisions       *prometheus.CounterVec   // method
	Deliveries      *prometheus.CounterVec   // method, result
	Fallbacks       *prometheus.CounterVec   // from, to
	EncryptSeconds  *prometheus.HistogramVec // method
	DeliverySeconds *prometheus.HistogramVec // method
	KeyLookups      *prometheus.CounterVec   // source, result
	PolicyReloads   *prometheus.CounterVec   // result
	PortalEvents    *prometheus.CounterVec   // event
	// CertExpiry: NotAfter (Unix seconds) of postern's own TLS
	// certificates; listener: smtp | portal.
	CertExpiry *prometheus.GaugeVec
	// KeyExpiry: expiry (Unix seconds) of local recipient keys and
	// certificates; kind: pgp_key | smime_cert; subject: the address.
	// Keys that never expire are not listed.
	KeyExpiry *prometheus.GaugeVec
}

// QueueStats is what the queue reports for the queue gauges.
type QueueStats interface {
	// Stats returns the number of messages queued and the time the oldest
	// was received (zero when empty).
	Stats() (messages int, oldest time.Time)
}

// New registers every family on a fresh registry. qs may be nil until the
// queue exists; SetQueue wires it later.
func New(qs QueueStats) *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_messages_received_total", Help: "Messages received over SMTP, by result (accepted, rejected, error).",
		}, []string{"result"}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_decisions_total", Help: "Per-recipient policy decisions, by chosen method.",
		}, []string{"method"}),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_deliveries_total", Help: "Per-recipient delivery outcomes, by method and result (delivered, deferred, bounced).",
		}, []string{"method", "result"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_fallbacks_total", Help: "Recipients moved from one method to the next at delivery time.",
		}, []string{"from", "to"}),
		EncryptSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postern_encrypt_seconds", Help: "Time to encrypt one recipient's copy, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"method"}),
		DeliverySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postern_delivery_seconds", Help: "Time of one delivery attempt (connect to final reply), by method.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 10),
		}, []string{"method"}),
		KeyLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_key_lookups_total", Help: "Key and certificate look-ups, by source and result.",
		}, []string{"source", "result"}),
		PolicyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_policy_reloads_total", Help: "Policy reloads, by result (ok, error).",
		}, []string{"result"}),
		PortalEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_portal_events_total", Help: "Portal events, by event.",
		}, []string{"event"}),
	}
	m.CertExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "postern_tls_cert_expiry_timestamp_seconds", Help: "NotAfter of postern's own TLS certificate, by listener.",
	}, []string{"listener"})
	m.KeyExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "postern_key_expiry_timestamp_seconds", Help: "Expiry of local recipient keys and certificates, by kind and address.",
	}, []string{"kind", "subject"})
	r.MustRegister(m.CertExpiry, m.KeyExpiry)
	r.MustRegister(m.Received, m.Decisions, m.Deliveries, m.Fallbacks, m.EncryptSeconds,
		m.DeliverySeconds, m.KeyLookups, m.PolicyReloads, m.PortalEvents)
	r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postern_queue_messages", Help: "Messages in the queue.",
	}, func() float64 {
		if qs == nil {
			return 0
		}
		n, _ := qs.Stats()
		return float64(n)
	}))
	r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postern_queue_oldest_seconds", Help: "Age of the oldest queued message in seconds (0 when empty).",
	}, func() float64 {
		if qs == nil {
			return 0
		}
		_, oldest := qs.Stats()
		if oldest.IsZero() {
			return 0
		}
		return time.Since(oldest).Seconds()
	}))

	for _, v := range ReceivedResults {
		m.Received.WithLabelValues(v)
	}
	for _, meth := range Methods {
		m.Decisions.WithLabelValues(meth)
		m.EncryptSeconds.WithLabelValues(meth)
		m.DeliverySeconds.WithLabelValues(meth)
		for _, res := range DeliveryResults {
			m.Deliveries.WithLabelValues(meth, res)
		}
		for _, to := range Methods {
			if to != meth {
				m.Fallbacks.WithLabelValues(meth, to)
			}
		}
	}
	for _, s := range KeySources {
		for _, res := range KeyResults {
			m.KeyLookups.WithLabelValues(s, res)
		}
	}
	for _, v := range ReloadResults {
		m.PolicyReloads.WithLabelValues(v)
	}
	for _, v := range PortalEvents {
		m.PortalEvents.WithLabelValues(v)
	}
	return m
}

// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz (200 only when ready returns nil; the error text otherwise).
func (m *Metrics) Handler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
