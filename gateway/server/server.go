// Package server wires postern together for `postern serve`: configuration,
// queue, audit log, policy, delivery, SMTP ingress and the admin endpoints,
// with reload on SIGHUP or file change and a draining shutdown on SIGTERM.
package server

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/config"
	"github.com/postern-mail/postern/gateway/courier"
	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dkim"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/methods"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/mtasts"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/gateway/smtpd"
	"github.com/postern-mail/postern/gateway/storage"
	"github.com/postern-mail/postern/gateway/tlsmemory"
	"github.com/postern-mail/postern/gateway/tlsrpt"
	"github.com/postern-mail/postern/policy"
)

// NewLogger builds the process logger from the log section.
func NewLogger(c config.Log) *slog.Logger {
	var lvl slog.Level
	switch c.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	default:
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

// LoadPolicy loads the policy the config names, or the built-in default.
func LoadPolicy(cfg *config.Config) (*policy.Policy, error) {
	if cfg.Policy == "" {
		return policy.Default(), nil
	}
	return policy.Load(cfg.Policy)
}

// NewResolver returns the resolver delivery.dns names, or the system's.
func NewResolver(cfg *config.Config) dnsr.Resolver {
	if cfg.Delivery.DNS != "" {
		return dnsr.NewClient(cfg.Delivery.DNS, 5*time.Second)
	}
	return dnsr.NewSystem()
}

// Roots returns the system roots plus delivery.tls_roots.
func Roots(cfg *config.Config) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if cfg.Delivery.TLSRoots != "" {
		pem, err := os.ReadFile(cfg.Delivery.TLSRoots)
		if err != nil {
			return nil, fmt.Errorf("delivery.tls_roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("delivery.tls_roots: %s holds no PEM certificate", cfg.Delivery.TLSRoots)
		}
	}
	return pool, nil
}

// Run serves until ctx is cancelled or SIGTERM/SIGINT arrives.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	for _, d := range []string{cfg.Queue.Dir, filepath.Dir(cfg.Audit.Path)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	q, err := queue.Open(cfg.Queue.Dir, log)
	if err != nil {
		return err
	}
	auditLog, err := audit.Open(cfg.Audit.Path, log)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer auditLog.Close()
	m := metrics.New(q)

	pol, err := LoadPolicy(cfg)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	holder := policy.NewHolder(pol)

	roots, err := Roots(cfg)
	if err != nil {
		return err
	}
	opt := deliver.Options{Hostname: cfg.Hostname, Port: cfg.Delivery.Port, Resolver: NewResolver(cfg), Roots: roots,
		ConnectTimeout: 30 * time.Second, CommandTimeout: 5 * time.Minute, Log: log, DANE: cfg.Delivery.DANE,
		Sessions: tls.NewLRUClientSessionCache(1024)}
	// Transport-security state lives beside the queue (local to the node).
	if cfg.Delivery.MTASTS {
		sts := &mtasts.Client{Resolver: opt.Resolver, Roots: roots,
			Store: mtasts.DirStore{Dir: filepath.Join(cfg.Queue.Dir, "mta-sts")}, Log: log}
		opt.MTASTS = sts
		go sts.Run(ctx, time.Hour) // background refresh before policies expire
	}
	mem, err := tlsmemory.Open(filepath.Join(cfg.Queue.Dir, "tls-memory.json"))
	if err != nil {
		return fmt.Errorf("tls memory: %w", err)
	}
	opt.Memory = mem
	dkimKeys := make([]dkim.Key, 0, len(cfg.Delivery.DKIM))
	for _, k := range cfg.Delivery.DKIM {
		dkimKeys = append(dkimKeys, dkim.Key{Domain: k.Domain, Selector: k.Selector, KeyFile: k.Key})
	}
	signer, err := dkim.NewSigner(dkimKeys)
	if err != nil {
		return fmt.Errorf("delivery.dkim: %w", err)
	}
	signer.TempDir = filepath.Join(cfg.Queue.Dir, "tmp")
	var transport deliver.Transport
	switch cfg.Delivery.Mode {
	case "relay":
		transport = &deliver.Relay{Opt: opt, Addr: cfg.Delivery.Relay, Level: cfg.Delivery.RelayTLS}
	case "dir":
		if err := os.MkdirAll(cfg.Delivery.Dir, 0o750); err != nil {
			return fmt.Errorf("create delivery.dir: %w", err)
		}
		transport = &deliver.Dir{Path: cfg.Delivery.Dir}
	default:
		transport = &deliver.MX{Opt: opt}
	}
	set, err := methods.New(cfg, opt.Resolver, roots, m, log)
	if err != nil {
		return err
	}
	defer set.Close()
	if dir := filepath.Dir(cfg.Storage.DSN); cfg.Storage.Driver == "sqlite" && dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("storage: %w", err)
		}
	}
	st, err := storage.Open(ctx, cfg.Storage.Driver, cfg.Storage.DSN)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	defer st.Close()
	prt, err := NewPortal(cfg, st, Enqueue(q, cfg.Hostname), PortalEvents(auditLog, m, log), log)
	if err != nil {
		return err
	}
	set.Portal = prt
	set.ExportExpiry(m)
	// TLS reports (RFC 8460) only for direct MX delivery: in relay mode
	// the TLS seen is the relay hop's, not the recipient domain's.
	var reports *tlsrpt.Collector
	if cfg.Delivery.Mode == "mx" {
		reportsDone := make(chan struct{})
		reports, err = tlsrpt.Open(filepath.Join(cfg.Queue.Dir, "tlsrpt"))
		if err != nil {
			return fmt.Errorf("tls reports: %w", err)
		}
		reports.Log = log
		sender := &tlsrpt.Sender{Resolver: opt.Resolver, From: "postmaster@" + cfg.Hostname, Hostname: cfg.Hostname,
			DKIM: signer.Sign, Log: log,
			HTTPClient: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
			Enqueue: func(from string, to []string, msg []byte) error {
				return enqueueReport(q, from, to, msg)
			}}
		rctx, rcancel := context.WithCancel(ctx)
		defer func() { rcancel(); <-reportsDone }() // stop, and wait for the final flush of the counts
		go func() { reports.Run(rctx, sender); close(reportsDone) }()
	}
	cour := &courier.Courier{Queue: q, Transport: transport, Policy: holder, Checker: set, Audit: auditLog,
		Metrics: m, Hostname: cfg.Hostname, Retry: cfg.Queue.Retry, MaxAge: cfg.Queue.MaxAge,
		PerDestination: cfg.Queue.PerDestination, Log: log, Encoders: set.Encoders(), DKIM: signer,
		TLSReports: reports}

	tlsCfg, err := ServerTLS(cfg, log)
	if err != nil {
		return err
	}
	if leaf, err := x509.ParseCertificate(tlsCfg.Certificates[0].Certificate[0]); err == nil {
		m.CertExpiry.WithLabelValues("smtp").Set(float64(leaf.NotAfter.Unix()))
	}
	users, err := LoadUsers(cfg.SMTP.AuthUsersFile)
	if err != nil {
		return err
	}
	ingress := smtpd.New(smtpd.Options{
		Hostname: cfg.Hostname, TLS: tlsCfg, RequireTLS: cfg.SMTP.RequireTLS,
		MaxMessageBytes: cfg.SMTP.MaxMessageBytes, MaxRecipients: cfg.SMTP.MaxRecipients,
		MaxConnections: cfg.SMTP.MaxConnections, MaxLineLength: cfg.SMTP.MaxLineLength,
		ReadTimeout: cfg.SMTP.ReadTimeout, WriteTimeout: cfg.SMTP.WriteTimeout,
		AllowedNetworks: cfg.SMTP.AllowedNetworks, ClientCertNames: cfg.SMTP.ClientCertNames,
		ClientCert: cfg.ClientCertRequired(), Users: users, SenderDomains: cfg.SMTP.SenderDomains,
		Queue: q, Metrics: m, Log: log,
	})
	smtpLn, err := net.Listen("tcp", cfg.SMTP.Listen)
	if err != nil {
		return fmt.Errorf("smtp.listen %s: %w", cfg.SMTP.Listen, err)
	}
	log.Info("smtp listening", "addr", smtpLn.Addr().String(), "hostname", cfg.Hostname, "delivery", cfg.Delivery.Mode)

	var admin *http.Server
	if cfg.Admin.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			smtpLn.Close()
			return fmt.Errorf("admin.listen %s: %w", cfg.Admin.Listen, err)
		}
		ready := func() error {
			if err := q.Writable(); err != nil {
				return err
			}
			if holder.Get() == nil {
				return errors.New("no policy loaded")
			}
			pctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := st.Ping(pctx); err != nil {
				return fmt.Errorf("storage: %w", err)
			}
			return nil
		}
		mux := http.NewServeMux()
		mux.Handle("/", m.Handler(ready))
		if prt != nil {
			mux.Handle("POST /admin/portal/revoke", RevokeHandler(prt, log))
		}
		admin = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server", "err", err)
			}
		}()
		log.Info("admin listening", "addr", ln.Addr().String())
	}

	// Reload on SIGHUP and when the policy file or a key directory
	// changes: each new state is built first and swapped in only if valid.
	reload := func(why string) {
		if err := set.Reload(); err != nil {
			log.Error("key reload refused; keeping the loaded keys", "why", why, "err", err)
		}
		set.ExportExpiry(m)
		if cfg.Policy == "" {
			return
		}
		if err := holder.Reload(cfg.Policy); err != nil {
			m.PolicyReloads.WithLabelValues("error").Inc()
			log.Error("policy reload refused; keeping the running policy", "why", why, "err", err)
			return
		}
		m.PolicyReloads.WithLabelValues("ok").Inc()
		log.Info("policy reloaded", "why", why, "file", cfg.Policy)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload("SIGHUP")
			}
		}
	}()
	var watched []string
	for _, p := range []string{cfg.Policy, cfg.Keys.PGPDir, cfg.Keys.SMIMEDir} {
		if p != "" {
			watched = append(watched, p)
		}
	}
	if len(watched) > 0 {
		if err := policy.Watch(ctx, watched, 500*time.Millisecond, func() { reload("file changed") }); err != nil {
			log.Warn("cannot watch policy and key files; reload with SIGHUP", "err", err)
		}
	}

	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	queueDone := make(chan struct{})
	go func() {
		q.Run(ctx, workCtx, cour, cfg.Queue.Concurrency)
		close(queueDone)
	}()
	var portalSrv *http.Server
	if prt != nil {
		portalSrv = servePortal(ctx, cfg, prt, log)
		if cfg.Portal.TLSCert != "" {
			if pair, err := tls.LoadX509KeyPair(cfg.Portal.TLSCert, cfg.Portal.TLSKey); err == nil {
				if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err == nil {
					m.CertExpiry.WithLabelValues("portal").Set(float64(leaf.NotAfter.Unix()))
				}
			}
		}
	}
	smtpDone := make(chan error, 1)
	go func() { smtpDone <- ingress.Serve(smtpLn) }()

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-smtpDone:
		// The SMTP listener died: drain and exit non-zero rather than
		// linger without ingress.
		log.Error("smtp server stopped", "err", serveErr)
		stop()
		if serveErr == nil {
			serveErr = errors.New("smtp server stopped")
		}
	}
	// Drain: stop accepting, let in-flight SMTP transactions finish, stop
	// dispatching, give in-flight deliveries a grace period (their next
	// attempt is booked, so cancelling them leaves the queue consistent).
	log.Info("shutting down: draining")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ingress.Shutdown(sctx); err != nil {
		log.Warn("smtp shutdown", "err", err)
	}
	grace := time.AfterFunc(20*time.Second, cancelWork)
	<-queueDone
	grace.Stop()
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	if portalSrv != nil {
		_ = portalSrv.Shutdown(sctx)
	}
	log.Info("stopped", "queued", q.Len())
	return serveErr
}

// ServerTLS returns the STARTTLS configuration: the configured pair, or a
// generated self-signed one (logged) when none is configured.
func ServerTLS(cfg *config.Config, log *slog.Logger) (*tls.Config, error) {
	var cert tls.Certificate
	if cfg.SMTP.TLSCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.SMTP.TLSCert, cfg.SMTP.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("smtp.tls_cert/tls_key: %w", err)
		}
		cert = c
	} else {
		c, err := selfSigned(cfg.Hostname)
		if err != nil {
			return nil, err
		}
		cert = c
		sum := sha256.Sum256(c.Certificate[0])
		log.Warn("no smtp.tls_cert configured: generated a self-signed certificate for STARTTLS",
			"hostname", cfg.Hostname, "sha256", hex.EncodeToString(sum[:]))
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.SMTP.ClientCA != "" {
		pem, err := os.ReadFile(cfg.SMTP.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("smtp.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("smtp.client_ca: no PEM certificate in %s", cfg.SMTP.ClientCA)
		}
		tc.ClientCAs = pool
	}
	if cfg.ClientCertRequired() {
		// Without client_ca, client certificates chain to the system roots
		// (Exchange Online's is publicly trusted).
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

func selfSigned(host string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-sign: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// LoadUsers reads "user:bcrypt-hash" lines ('#' comments, blank lines).
func LoadUsers(path string) (map[string][]byte, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("smtp.auth_users_file: %w", err)
	}
	defer f.Close()
	users := map[string][]byte{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, h, ok := strings.Cut(line, ":")
		if !ok || u == "" || !strings.HasPrefix(h, "$2") {
			return nil, fmt.Errorf("%s:%d: want user:bcrypt-hash", path, n)
		}
		users[u] = []byte(h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("smtp.auth_users_file: %w", err)
	}
	return users, nil
}
