// Package deliver sends one message to the recipients of one domain:
// directly to the domain's MX hosts (RFC 5321 §5), through a relay host, or
// into a directory. It reports a result per recipient; it never decides
// policy, but it never sends over a session weaker than the TLS level it is
// asked for.
package deliver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// TLS levels a delivery must meet.
const (
	LevelNone          = "none"          // plaintext; STARTTLS not even tried
	LevelOpportunistic = "opportunistic" // STARTTLS when offered, any certificate, else plaintext
	LevelEncrypt       = "encrypt"       // STARTTLS required, any certificate
	LevelVerify        = "verify"        // STARTTLS required, certificate valid for the host name (PKIX)
)

// ValidLevel reports whether s names a level.
func ValidLevel(s string) bool {
	switch s {
	case LevelNone, LevelOpportunistic, LevelEncrypt, LevelVerify:
		return true
	}
	return false
}

// Outcome of one recipient's attempt.
type Outcome int

// Outcomes.
const (
	Delivered      Outcome = iota // accepted by the next hop
	Temporary                     // retry later (4xx, network, DNS trouble)
	Permanent                     // 5xx or unroutable: bounce
	TLSUnavailable                // the TLS requirement could not be met: fall through or defer, never plaintext
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Temporary:
		return "temporary"
	case Permanent:
		return "permanent"
	case TLSUnavailable:
		return "tls-unavailable"
	}
	return "unknown"
}

// Rcpt is one recipient with its DSN parameters.
type Rcpt struct {
	Addr   string
	Notify []string
	ORCPT  string
}

// Request is one copy of a message for the recipients of one domain.
type Request struct {
	QueueID  string
	From     string
	Params   MailParams
	Domain   string
	Rcpts    []Rcpt
	TLSLevel string // one of the Level constants
	// Open returns the message bytes (already carrying our Received header).
	Open func() (io.ReadCloser, error)
}

// TLSState describes the session a copy left over (audit "tls").
type TLSState struct {
	Version  string
	Cipher   string
	Verified bool
	Policy   string // "pkix" | "none" (dane, mta-sts come with those features)
}

// Result is the outcome for one recipient.
type Result struct {
	Rcpt     string
	Outcome  Outcome
	Status   string // enhanced status code, e.g. "2.0.0", "4.4.1", "5.1.1"
	Response string // the remote reply or our own explanation
	MX       string
	TLS      *TLSState
}

// Transport delivers a request.
type Transport interface {
	Deliver(ctx context.Context, req *Request) []Result
}

// Options configure the SMTP transports.
type Options struct {
	Hostname       string // EHLO name
	Port           int    // MX port
	Resolver       dnsr.Resolver
	Roots          *x509.CertPool // trust anchors for verify (system + delivery.tls_roots)
	ConnectTimeout time.Duration
	CommandTimeout time.Duration
	Log            *slog.Logger
	// Dial may replace net.Dialer for tests; nil means net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (o *Options) dial(ctx context.Context, addr string) (net.Conn, error) {
	if o.Dial != nil {
		return o.Dial(ctx, "tcp", addr)
	}
	d := &net.Dialer{Timeout: o.ConnectTimeout}
	return dialContext(ctx, d, addr)
}

// all returns the same result for every recipient of req.
func all(req *Request, o Outcome, status, resp, mx string, ts *TLSState) []Result {
	out := make([]Result, len(req.Rcpts))
	for i, r := range req.Rcpts {
		out[i] = Result{Rcpt: r.Addr, Outcome: o, Status: status, Response: resp, MX: mx, TLS: ts}
	}
	return out
}

// MX delivers to the recipient domain's mail exchangers.
type MX struct{ Opt Options }

// Deliver implements Transport.
func (t *MX) Deliver(ctx context.Context, req *Request) []Result {
	hosts, res := t.hosts(ctx, req.Domain)
	if res != nil {
		return all(req, res.Outcome, res.Status, res.Response, "", nil)
	}
	var (
		tlsFailures int
		tried       int
		last        []Result
	)
	for _, h := range hosts {
		ips, _, err := t.Opt.Resolver.LookupIP(ctx, h)
		if err != nil {
			last = all(req, Temporary, "4.4.4", fmt.Sprintf("cannot resolve MX host %s: %v", h, err), h, nil)
			tried++
			continue
		}
		for _, ip := range ips {
			tried++
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(t.Opt.Port))
			results, retryNext := session(ctx, &t.Opt, req, h, addr, h)
			if !retryNext {
				return results
			}
			last = results
			if len(results) > 0 && results[0].Outcome == TLSUnavailable {
				tlsFailures++
			}
		}
	}
	if tried == 0 || last == nil {
		return all(req, Temporary, "4.4.4", "no usable MX host address", "", nil)
	}
	if tlsFailures == tried {
		return last // every host failed the TLS requirement
	}
	// A mix: some host was unreachable; retry later rather than conclude.
	for i := range last {
		if last[i].Outcome == TLSUnavailable {
			last[i].Outcome = Temporary
		}
	}
	return last
}

// hosts returns the MX host names in preference order, or a final result.
// RFC 5321 §5.1: with no MX records the domain itself is the implicit MX.
// RFC 7505: a null MX means the domain accepts no mail.
func (t *MX) hosts(ctx context.Context, domain string) ([]string, *Result) {
	mxs, _, err := t.Opt.Resolver.LookupMX(ctx, domain)
	if err != nil {
		if dnsr.IsNotFound(err) {
			// Implicit MX only when the domain has an address.
			if _, _, aerr := t.Opt.Resolver.LookupIP(ctx, domain); aerr != nil {
				if dnsr.IsNotFound(aerr) {
					return nil, &Result{Outcome: Permanent, Status: "5.1.2", Response: "recipient domain " + domain + " has no MX and no address"}
				}
				return nil, &Result{Outcome: Temporary, Status: "4.4.3", Response: "DNS lookup failed for " + domain + ": " + aerr.Error()}
			}
			return []string{domain}, nil
		}
		return nil, &Result{Outcome: Temporary, Status: "4.4.3", Response: "MX lookup failed for " + domain + ": " + err.Error()}
	}
	if len(mxs) == 1 && mxs[0].Host == "" {
		return nil, &Result{Outcome: Permanent, Status: "5.1.10", Response: "recipient domain " + domain + " publishes a null MX (RFC 7505)"}
	}
	hosts := make([]string, 0, len(mxs))
	for _, m := range mxs {
		if m.Host != "" {
			hosts = append(hosts, m.Host)
		}
	}
	if len(hosts) == 0 {
		return nil, &Result{Outcome: Permanent, Status: "5.1.2", Response: "no MX hosts for " + domain}
	}
	return hosts, nil
}

// Relay delivers everything to one smart host. The relay hop is secured
// at Level (delivery.relay_tls). The request's TLS level is the recipient's
// requirement: since the relay's onward hop cannot be observed, it is
// checked with a cached STARTTLS probe of the recipient domain's MX (SPEC
// §4: EHLO, STARTTLS, certificate check, QUIT) before the copy is handed
// to the relay.
type Relay struct {
	Opt   Options
	Addr  string // host:port
	Level string // relay_tls
	// ProbeTTL and ProbeFailTTL: how long a probe result is trusted.
	ProbeTTL, ProbeFailTTL time.Duration

	mu    sync.Mutex
	cache map[string]probeResult
}

type probeResult struct {
	until   time.Time
	outcome Outcome
	reason  string
	mx      string
	ts      *TLSState
}

// Deliver implements Transport.
func (t *Relay) Deliver(ctx context.Context, req *Request) []Result {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return all(req, Temporary, "4.3.5", "bad relay address", t.Addr, nil)
	}
	var probed *probeResult
	if req.TLSLevel != LevelNone && req.TLSLevel != LevelOpportunistic {
		p := t.probe(ctx, req.Domain, req.TLSLevel)
		if p.outcome != Delivered {
			return all(req, p.outcome, "4.7.5", p.reason, p.mx, nil)
		}
		probed = &p
	}
	r := *req
	r.TLSLevel = t.Level
	var addrs []string
	if _, err := netip.ParseAddr(host); err == nil {
		addrs = []string{t.Addr}
	} else {
		ips, _, err := t.Opt.Resolver.LookupIP(ctx, host)
		if err != nil {
			return all(req, Temporary, "4.4.4", "cannot resolve relay "+host+": "+err.Error(), host, nil)
		}
		for _, ip := range ips {
			addrs = append(addrs, net.JoinHostPort(ip.String(), port))
		}
	}
	var last []Result
	for _, a := range addrs {
		results, retryNext := session(ctx, &t.Opt, &r, host, a, host)
		if !retryNext {
			last = results
			break
		}
		last = results
	}
	if last == nil {
		return all(req, Temporary, "4.4.4", "relay has no address", host, nil)
	}
	for i := range last {
		if last[i].Outcome == TLSUnavailable {
			// The relay itself failed relay_tls: that is our hop, not
			// the recipient's; retry rather than fall through.
			last[i].Outcome = Temporary
		}
		if probed != nil && last[i].Outcome == Delivered {
			last[i].Response += fmt.Sprintf(" (recipient MX %s probed: %s, verified=%v)", probed.mx, probed.ts.Version, probed.ts.Verified)
		}
	}
	return last
}

// probe checks that the recipient domain's MX meets level, with a cache.
func (t *Relay) probe(ctx context.Context, domain, level string) probeResult {
	key := domain + "\x00" + level
	now := time.Now()
	t.mu.Lock()
	if p, ok := t.cache[key]; ok && now.Before(p.until) {
		t.mu.Unlock()
		return p
	}
	t.mu.Unlock()
	p := probeDomain(ctx, &t.Opt, domain, level)
	ttl := t.ProbeTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	if p.outcome != Delivered {
		ttl = t.ProbeFailTTL
		if ttl <= 0 {
			ttl = 5 * time.Minute
		}
	}
	if p.outcome != Temporary {
		t.mu.Lock()
		if t.cache == nil {
			t.cache = map[string]probeResult{}
		}
		p.until = now.Add(ttl)
		t.cache[key] = p
		t.mu.Unlock()
	}
	return p
}

// probeDomain runs EHLO, STARTTLS and the certificate check against the
// domain's MX hosts until one meets level.
func probeDomain(ctx context.Context, o *Options, domain, level string) probeResult {
	if !ValidLevel(level) {
		return probeResult{outcome: TLSUnavailable, reason: "TLS level " + strconvQuote(level) + " cannot be checked by this build"}
	}
	mx := &MX{Opt: *o}
	hosts, res := mx.hosts(ctx, domain)
	if res != nil {
		return probeResult{outcome: res.Outcome, reason: res.Response}
	}
	tried, tlsFailed := 0, 0
	last := probeResult{outcome: Temporary, reason: "no MX host reachable for " + domain}
	for _, h := range hosts {
		ips, _, err := o.Resolver.LookupIP(ctx, h)
		if err != nil {
			tried++
			last = probeResult{outcome: Temporary, reason: "cannot resolve MX host " + h + ": " + err.Error(), mx: h}
			continue
		}
		for _, ip := range ips {
			tried++
			conn, err := o.dial(ctx, net.JoinHostPort(ip.String(), strconv.Itoa(o.Port)))
			if err != nil {
				last = probeResult{outcome: Temporary, reason: "probe: connect to " + h + ": " + err.Error(), mx: h}
				continue
			}
			c := newClient(conn, o.CommandTimeout)
			err = c.greet(o.Hostname)
			var ts *TLSState
			outcome := Temporary
			if err == nil {
				ts, outcome, err = negotiateTLS(c, o, h, level)
			}
			c.quit()
			if err == nil {
				return probeResult{outcome: Delivered, mx: h, ts: ts}
			}
			last = probeResult{outcome: outcome, reason: "probe: " + err.Error(), mx: h}
			if outcome == TLSUnavailable {
				tlsFailed++
			}
		}
	}
	if tried > 0 && tlsFailed == tried {
		return last
	}
	if last.outcome == TLSUnavailable {
		last.outcome = Temporary
	}
	return last
}

// session runs one SMTP session to addr. retryNext reports whether the
// caller should try another host (connection-level trouble or TLS failure)
// rather than take these results as final for this attempt.
func session(ctx context.Context, o *Options, req *Request, host, addr, mxName string) (results []Result, retryNext bool) {
	if !ValidLevel(req.TLSLevel) {
		// dane and mta-sts need their validators; an unknown level is
		// never treated as a weaker one.
		return all(req, TLSUnavailable, "4.7.5", "TLS level "+strconvQuote(req.TLSLevel)+" cannot be checked by this build", mxName, nil), true
	}
	conn, err := o.dial(ctx, addr)
	if err != nil {
		return all(req, Temporary, "4.4.1", fmt.Sprintf("connect to %s (%s): %v", host, addr, err), mxName, nil), true
	}
	c := newClient(conn, o.CommandTimeout)
	defer c.quit()
	if err := c.greet(o.Hostname); err != nil {
		// A host refusing service at the greeting or EHLO (even with 5xx)
		// says nothing about the recipient: try the next host, and retry
		// later if none takes the message (RFC 5321 §3.1, §5.1).
		_, st, resp := classify(err, "4.4.2")
		return all(req, Temporary, "4"+st[1:], resp, mxName, nil), true
	}

	ts, outcome, err := negotiateTLS(c, o, host, req.TLSLevel)
	if err != nil {
		if outcome == TLSUnavailable {
			return all(req, TLSUnavailable, "4.7.5", err.Error(), mxName, nil), true
		}
		return fromErr(req, err, "4.4.2", mxName, nil), true
	}
	// RFC 6531 §3.4: a message needing SMTPUTF8 cannot go to a hop without it.
	if req.Params.UTF8 && !c.has("SMTPUTF8") {
		return all(req, Permanent, "5.6.7", host+" does not support SMTPUTF8", mxName, ts), false
	}
	// RFC 8689 §4.2.1: the next hop must advertise REQUIRETLS.
	if req.Params.RequireTLS && (ts == nil || !ts.Verified || !c.has("REQUIRETLS")) {
		return all(req, Permanent, "5.7.30", host+" cannot honour REQUIRETLS", mxName, ts), false
	}
	if _, err := c.mail(req.From, req.Params); err != nil {
		return fromErr(req, err, "4.4.2", mxName, ts), false
	}
	results = make([]Result, len(req.Rcpts))
	accepted := 0
	for i, r := range req.Rcpts {
		rep, err := c.rcpt(r.Addr, r.Notify, r.ORCPT)
		results[i] = Result{Rcpt: r.Addr, MX: mxName, TLS: ts}
		if err != nil {
			results[i].Outcome, results[i].Status, results[i].Response = classify(err, "4.4.2")
			continue
		}
		_ = rep
		accepted++
	}
	if accepted == 0 {
		return results, false
	}
	body, err := req.Open()
	if err != nil {
		for i := range results {
			if results[i].Response == "" {
				results[i].Outcome, results[i].Status, results[i].Response = Temporary, "4.3.0", "cannot read queued message"
			}
		}
		return results, false
	}
	defer body.Close()
	rep, err := c.data(body)
	for i := range results {
		if results[i].Response != "" {
			continue // refused at RCPT
		}
		if err != nil {
			results[i].Outcome, results[i].Status, results[i].Response = classify(err, "4.4.2")
			continue
		}
		results[i].Outcome = Delivered
		results[i].Status = orDefault(rep.Enhanced, "2.0.0")
		results[i].Response = rep.String()
	}
	return results, false
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// classify turns an error into an outcome: 5xx permanent, everything else
// (4xx, network) temporary.
func classify(err error, tempStatus string) (Outcome, string, string) {
	var re *ReplyError
	if errors.As(err, &re) {
		st := re.Reply.Enhanced
		if re.Reply.Code >= 500 {
			return Permanent, orDefault(st, "5.0.0"), re.Reply.String()
		}
		return Temporary, orDefault(st, "4.0.0"), re.Reply.String()
	}
	return Temporary, tempStatus, err.Error()
}

func fromErr(req *Request, err error, tempStatus, mx string, ts *TLSState) []Result {
	o, st, resp := classify(err, tempStatus)
	return all(req, o, st, resp, mx, ts)
}

// negotiateTLS raises the session to the TLS level required. It returns
// the TLS state (nil for plaintext, allowed only at none and opportunistic)
// or an error with TLSUnavailable when the host cannot meet the level.
func negotiateTLS(c *client, o *Options, host, level string) (*TLSState, Outcome, error) {
	if level == LevelNone {
		return nil, Delivered, nil
	}
	if !c.has("STARTTLS") {
		if level == LevelOpportunistic {
			return nil, Delivered, nil
		}
		return nil, TLSUnavailable, fmt.Errorf("%s does not offer STARTTLS; TLS level %s required", host, level)
	}
	state := &TLSState{Policy: "none"}
	cfg := &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, so the outcome can be recorded
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := verifyPKIX(cs, host, o.Roots)
			state.Verified = err == nil
			if err == nil {
				state.Policy = "pkix"
			}
			if err != nil && level == LevelVerify {
				return fmt.Errorf("certificate of %s not valid: %w", host, err)
			}
			return nil
		},
	}
	if err := c.startTLS(cfg, o.Hostname); err != nil {
		var te *tlsError
		if errors.As(err, &te) {
			return nil, TLSUnavailable, fmt.Errorf("%s: %w", host, err)
		}
		return nil, Temporary, err
	}
	state.Version = strings.ReplaceAll(tls.VersionName(c.tls.Version), " ", "")
	state.Cipher = tls.CipherSuiteName(c.tls.CipherSuite)
	return state, Delivered, nil
}

// verifyPKIX checks the peer chain against roots and the host name.
func verifyPKIX(cs tls.ConnectionState, host string, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: inter,
	})
	return err
}

// Dir writes each recipient's copy as a .eml file into a directory (the
// development and testing transport). Files are written to a temporary name,
// fsynced and renamed, so a reader never sees a partial file.
type Dir struct {
	Path string
}

// Deliver implements Transport.
func (t *Dir) Deliver(ctx context.Context, req *Request) []Result {
	out := make([]Result, len(req.Rcpts))
	for i, r := range req.Rcpts {
		out[i] = Result{Rcpt: r.Addr, MX: "dir:" + t.Path}
		if err := t.write(req, r); err != nil {
			out[i].Outcome, out[i].Status, out[i].Response = Temporary, "4.3.0", err.Error()
			continue
		}
		out[i].Outcome, out[i].Status, out[i].Response = Delivered, "2.0.0", "written to "+t.Path
	}
	return out
}

func (t *Dir) write(req *Request, r Rcpt) error {
	if err := os.MkdirAll(t.Path, 0o750); err != nil {
		return fmt.Errorf("create outbox: %w", err)
	}
	name := fmt.Sprintf("%s-%s.eml", req.QueueID, safeName(r.Addr))
	tmp, err := os.CreateTemp(t.Path, ".tmp-*")
	if err != nil {
		return fmt.Errorf("create outbox file: %w", err)
	}
	defer os.Remove(tmp.Name())
	body, err := req.Open()
	if err != nil {
		tmp.Close()
		return err
	}
	defer body.Close()
	// Return-Path and Delivered-To record the envelope, as a final
	// delivery agent would (RFC 5321 §4.4).
	_, err = fmt.Fprintf(tmp, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", req.From, r.Addr)
	if err == nil {
		_, err = io.Copy(tmp, body)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write outbox file: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(t.Path, name)); err != nil {
		return fmt.Errorf("commit outbox file: %w", err)
	}
	// The rename is durable only once the directory is synced; the queue
	// forgets the message as soon as this returns (SPEC §8).
	if err := syncDir(t.Path); err != nil {
		return fmt.Errorf("commit outbox file: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory, making renames into it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func safeName(addr string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '@', r == '+':
			return r
		}
		return '_'
	}, addr)
}

func strconvQuote(s string) string { return strconv.Quote(s) }
