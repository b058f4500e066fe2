// Package deliver sends one message to the recipients of one domain:
// directly to the domain's MX hosts (RFC 5321 §5), through a relay host, or
// into a directory. It reports a result per recipient; it never decides
// policy, but it never sends over a session weaker than the TLS level it is
// asked for, nor weaker than what the recipient domain publishes (DANE,
// RFC 7672; MTA-STS, RFC 8461).
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
	"github.com/postern-mail/postern/gateway/mtasts"
	"github.com/postern-mail/postern/gateway/tlsmemory"
)

// TLS levels a delivery must meet.
const (
	LevelNone          = "none"          // plaintext; STARTTLS not even tried (unless the domain publishes DANE or MTA-STS enforce)
	LevelOpportunistic = "opportunistic" // STARTTLS when offered, any certificate, else plaintext
	LevelEncrypt       = "encrypt"       // STARTTLS required, any certificate
	LevelVerify        = "verify"        // STARTTLS required, certificate validated: PKIX for the MX name, DANE or MTA-STS
	LevelDANE          = "dane"          // STARTTLS required, certificate authenticated by DNSSEC-signed TLSA records (RFC 7672)
	LevelMTASTS        = "mta-sts"       // STARTTLS required to an MX listed in the domain's MTA-STS policy, PKIX-valid (RFC 8461)
)

// ValidLevel reports whether s names a level.
func ValidLevel(s string) bool {
	switch s {
	case LevelNone, LevelOpportunistic, LevelEncrypt, LevelVerify, LevelDANE, LevelMTASTS:
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

// TLS policies a session was validated by (audit "tls.policy").
const (
	PolicyDANE   = "dane"    // TLSA records (RFC 7672)
	PolicyMTASTS = "mta-sts" // MTA-STS policy match and PKIX (RFC 8461)
	PolicyPKIX   = "pkix"    // certificate valid for the MX name
	PolicyNone   = "none"    // not validated
)

// TLSState describes the session a copy left over (audit "tls").
type TLSState struct {
	Version  string
	Cipher   string
	Verified bool
	Policy   string // one of the Policy constants
}

// Result is the outcome for one recipient.
type Result struct {
	Rcpt     string
	Outcome  Outcome
	Status   string // enhanced status code, e.g. "2.0.0", "4.4.1", "5.1.1"
	Response string // the remote reply or our own explanation
	MX       string
	TLS      *TLSState
	// PolicyFailure notes a check that failed without stopping delivery:
	// an MTA-STS policy in testing mode (RFC 8461 §5) that the MX did not
	// meet. Empty when none.
	PolicyFailure string
	// Downgrade is set on a delivered result when the domain earlier
	// received mail over a better-secured session (see Options.Memory),
	// e.g. "domain previously did verified TLS (pkix) …; now encrypt only".
	Downgrade string
}

// Transport delivers a request.
type Transport interface {
	Deliver(ctx context.Context, req *Request) []Result
}

// STSPolicies gives the MTA-STS policy of a domain; *mtasts.Client
// implements it. Get returns an error wrapping mtasts.ErrNoPolicy when the
// domain has none.
type STSPolicies interface {
	Get(ctx context.Context, domain string) (*mtasts.Cached, error)
}

// Options configure the SMTP transports.
type Options struct {
	Hostname       string // EHLO name
	Port           int    // MX port; TLSA records are looked up at _<Port>._tcp (RFC 7672 §2.2: 25)
	Resolver       dnsr.Resolver
	Roots          *x509.CertPool // trust anchors for verify (system + delivery.tls_roots)
	ConnectTimeout time.Duration
	CommandTimeout time.Duration
	Log            *slog.Logger
	// Sessions caches TLS sessions for resumption (RFC 8446 §2.2); the
	// peer is still verified (DANE, MTA-STS, PKIX) on every connection.
	Sessions tls.ClientSessionCache
	// Dial may replace net.Dialer for tests; nil means net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DANE enables TLSA look-ups (delivery.dane); they are trusted only
	// when the resolver reports DNSSEC-authentic answers.
	DANE bool
	// MTASTS gives MTA-STS policies (delivery.mta_sts); nil disables.
	MTASTS STSPolicies
	// Memory, when set, remembers the best TLS each domain achieved and
	// fills Result.Downgrade.
	Memory *tlsmemory.Memory
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.New(slog.DiscardHandler)
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
	if !ValidLevel(req.TLSLevel) {
		// An unknown level is never treated as a weaker one.
		return all(req, TLSUnavailable, "4.7.5", "TLS level "+strconvQuote(req.TLSLevel)+" is unknown", "", nil)
	}
	results := walk(ctx, &t.Opt, req, func(hp *hostPlan, addr string) ([]Result, bool) {
		return session(ctx, &t.Opt, req, hp, addr)
	})
	t.remember(req.Domain, results)
	return results
}

// remember updates the per-domain TLS memory with a delivered result and
// notes a downgrade.
func (t *MX) remember(domain string, results []Result) {
	if t.Opt.Memory == nil {
		return
	}
	for i := range results {
		if results[i].Outcome != Delivered {
			continue
		}
		ts := results[i].TLS
		lvl, how := tlsmemory.None, PolicyNone
		if ts != nil {
			lvl, how = tlsmemory.Of(true, ts.Verified, ts.Policy), ts.Policy
		}
		note, err := t.Opt.Memory.Observe(domain, lvl, how, t.Opt.now())
		if err != nil {
			t.Opt.log().Warn("tls memory", "domain", domain, "err", err)
		}
		for j := range results {
			if results[j].Outcome == Delivered {
				results[j].Downgrade = note
			}
		}
		return
	}
}

// walk tries the MX hosts of req.Domain in order with try, one address at
// a time, until try returns final results, and sums up the attempts when
// none did.
func walk(ctx context.Context, o *Options, req *Request, try func(hp *hostPlan, addr string) ([]Result, bool)) []Result {
	hosts, authentic, res := mxHosts(ctx, o, req.Domain)
	if res != nil {
		return all(req, res.Outcome, res.Status, res.Response, "", nil)
	}
	// RFC 8689 §5: "TLS-Required: No" relaxes the recipient's published
	// policies, never a requirement of postern's own policy (dane and
	// mta-sts levels come from the admin's domains: entries).
	relax := req.Params.TLSRequiredNo && !req.Params.RequireTLS && req.TLSLevel != LevelDANE && req.TLSLevel != LevelMTASTS
	var sts *mtasts.Policy
	if !relax {
		var res *Result
		if sts, res = stsPolicy(ctx, o, req.Domain, req.TLSLevel); res != nil {
			return all(req, res.Outcome, res.Status, res.Response, "", nil)
		}
	}
	var (
		tlsFailures, rtFailures, tried int
		last                           []Result
	)
	note := func(rs []Result) {
		tried++
		last = rs
		if len(rs) == 0 {
			return
		}
		switch {
		case rs[0].Outcome == TLSUnavailable:
			tlsFailures++
		case rs[0].Status == statusRequireTLS:
			rtFailures++
		}
	}
	for _, h := range hosts {
		ips, ipRes, err := o.Resolver.LookupIP(ctx, h)
		if err != nil {
			note(all(req, Temporary, "4.4.4", fmt.Sprintf("cannot resolve MX host %s: %v", h, err), h, nil))
			continue
		}
		hp, res := planHost(ctx, o, h, authentic && ipRes.Authentic && !relax, sts)
		if res != nil {
			note(all(req, res.Outcome, res.Status, res.Response, h, nil))
			continue
		}
		if oc, st, why := hp.refuse(req.TLSLevel, req.Params.RequireTLS); why != "" {
			note(all(req, oc, st, why, h, nil))
			continue
		}
		for _, ip := range ips {
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(o.Port))
			results, retryNext := try(hp, addr)
			if !retryNext {
				return results
			}
			note(results)
		}
	}
	if tried == 0 || last == nil {
		return all(req, Temporary, "4.4.4", "no usable MX host address", "", nil)
	}
	if tlsFailures+rtFailures == tried {
		if req.Params.RequireTLS {
			// RFC 8689 §4.2.1: no MX meets REQUIRETLS: a non-delivery
			// report with 5.7.30, never a weaker path.
			for i := range last {
				if last[i].Outcome == TLSUnavailable {
					last[i].Outcome = Permanent
					last[i].Status = statusRequireTLS
					last[i].Response = "REQUIRETLS cannot be met: " + last[i].Response
				}
			}
		}
		return last // every host failed the TLS requirement
	}
	// A mix: some host was unreachable; retry later rather than conclude.
	for i := range last {
		if last[i].Outcome == TLSUnavailable || last[i].Status == statusRequireTLS {
			last[i].Outcome = Temporary
			last[i].Status = "4" + last[i].Status[1:]
		}
	}
	return last
}

// statusRequireTLS is the enhanced status of RFC 8689 §5.
const statusRequireTLS = "5.7.30"

// mxHosts returns the MX host names in preference order and whether the
// MX answer was DNSSEC-authentic, or a final result.
// RFC 5321 §5.1: with no MX records the domain itself is the implicit MX.
// RFC 7505: a null MX means the domain accepts no mail.
func mxHosts(ctx context.Context, o *Options, domain string) ([]string, bool, *Result) {
	mxs, res, err := o.Resolver.LookupMX(ctx, domain)
	if err != nil {
		if dnsr.IsNotFound(err) {
			// Implicit MX only when the domain has an address. RFC 7672
			// §2.2.1: then the domain is the TLSA base domain, secure when
			// the denial of MX and the address records are.
			_, ares, aerr := o.Resolver.LookupIP(ctx, domain)
			if aerr != nil {
				if dnsr.IsNotFound(aerr) {
					return nil, false, &Result{Outcome: Permanent, Status: "5.1.2", Response: "recipient domain " + domain + " has no MX and no address"}
				}
				return nil, false, &Result{Outcome: Temporary, Status: "4.4.3", Response: "DNS lookup failed for " + domain + ": " + aerr.Error()}
			}
			return []string{strings.ToLower(strings.TrimSuffix(domain, "."))}, res.Authentic && ares.Authentic, nil
		}
		return nil, false, &Result{Outcome: Temporary, Status: "4.4.3", Response: "MX lookup failed for " + domain + ": " + err.Error()}
	}
	if len(mxs) == 1 && mxs[0].Host == "" {
		return nil, false, &Result{Outcome: Permanent, Status: "5.1.10", Response: "recipient domain " + domain + " publishes a null MX (RFC 7505)"}
	}
	hosts := make([]string, 0, len(mxs))
	for _, m := range mxs {
		if m.Host != "" {
			hosts = append(hosts, m.Host)
		}
	}
	if len(hosts) == 0 {
		return nil, false, &Result{Outcome: Permanent, Status: "5.1.2", Response: "no MX hosts for " + domain}
	}
	return hosts, res.Authentic, nil
}

// Relay delivers everything to one smart host. The relay hop is secured
// at Level (delivery.relay_tls). The request's TLS level is the recipient's
// requirement: since the relay's onward hop cannot be observed, it is
// checked with a cached STARTTLS probe of the recipient domain's MX (SPEC
// §4: EHLO, STARTTLS, certificate check, QUIT), with the domain's DANE and
// MTA-STS policies applied, before the copy is handed to the relay.
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
	if !ValidLevel(req.TLSLevel) || !ValidLevel(t.Level) {
		return all(req, TLSUnavailable, "4.7.5", "TLS level "+strconvQuote(req.TLSLevel)+" is unknown", "", nil)
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
	if probed != nil && t.Level != LevelVerify {
		// The copy's plan requires TLS: it never crosses the relay hop in
		// plaintext, whatever relay_tls says (SPEC §8).
		r.TLSLevel = LevelEncrypt
	}
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
	hp := &hostPlan{name: host}
	var last []Result
	for _, a := range addrs {
		results, retryNext := session(ctx, &t.Opt, &r, hp, a)
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
			last[i].Response += fmt.Sprintf(" (recipient MX %s probed: %s, verified=%v, policy=%s)", probed.mx, probed.ts.Version, probed.ts.Verified, probed.ts.Policy)
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
// domain's MX hosts, with their DANE and MTA-STS policies, until one meets
// level.
func probeDomain(ctx context.Context, o *Options, domain, level string) probeResult {
	req := &Request{Domain: domain, TLSLevel: level, Rcpts: []Rcpt{{Addr: "probe@" + domain}}}
	rs := walk(ctx, o, req, func(hp *hostPlan, addr string) ([]Result, bool) {
		conn, err := o.dial(ctx, addr)
		if err != nil {
			return all(req, Temporary, "4.4.1", "probe: connect to "+hp.name+": "+err.Error(), hp.name, nil), true
		}
		c := newClient(conn, o.CommandTimeout)
		defer c.quit()
		if err := c.greet(o.Hostname); err != nil {
			return all(req, Temporary, "4.4.2", "probe: "+err.Error(), hp.name, nil), true
		}
		var pf string
		ts, outcome, err := negotiateTLS(c, o, hp, level, false, &pf)
		if err != nil {
			return all(req, outcome, "4.7.5", "probe: "+err.Error(), hp.name, nil), true
		}
		return all(req, Delivered, "2.0.0", "", hp.name, ts), false
	})
	r := rs[0]
	p := probeResult{outcome: r.Outcome, reason: r.Response, mx: r.MX, ts: r.TLS}
	if p.outcome == Delivered && p.ts == nil {
		p.ts = &TLSState{Policy: PolicyNone}
	}
	return p
}

// session runs one SMTP session to addr for the MX host hp. retryNext
// reports whether the caller should try another host (connection-level
// trouble or TLS failure) rather than take these results as final for
// this attempt.
func session(ctx context.Context, o *Options, req *Request, hp *hostPlan, addr string) (results []Result, retryNext bool) {
	host, mxName := hp.name, hp.name
	conn, err := o.dial(ctx, addr)
	if err != nil {
		return all(req, Temporary, "4.4.1", fmt.Sprintf("connect to %s (%s): %v", host, addr, err), mxName, nil), true
	}
	// Deadlines bound each command; the context (shutdown grace) aborts
	// the whole session.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := newClient(conn, o.CommandTimeout)
	defer c.quit()
	if err := c.greet(o.Hostname); err != nil {
		// A host refusing service at the greeting or EHLO (even with 5xx)
		// says nothing about the recipient: try the next host, and retry
		// later if none takes the message (RFC 5321 §3.1, §5.1).
		_, st, resp := classify(err, "4.4.2")
		return all(req, Temporary, "4"+st[1:], resp, mxName, nil), true
	}

	var policyFailure string
	ts, outcome, err := negotiateTLS(c, o, hp, req.TLSLevel, req.Params.RequireTLS, &policyFailure)
	if err != nil && errors.Is(err, errPlainRetry) && req.TLSLevel != LevelNone {
		c.quit()
		plain := *req
		plain.TLSLevel = LevelNone
		o.log().Info("opportunistic TLS failed; retrying without TLS", "host", host, "err", err)
		return session(ctx, o, &plain, hp, addr)
	}
	if err != nil {
		if outcome == TLSUnavailable {
			return all(req, TLSUnavailable, "4.7.5", err.Error(), mxName, nil), true
		}
		return fromErr(req, err, "4.4.2", mxName, nil), true
	}
	defer func() {
		for i := range results {
			results[i].PolicyFailure = policyFailure
		}
	}()
	// RFC 6531 §3.4: a message needing SMTPUTF8 cannot go to a hop without it.
	if req.Params.UTF8 && !c.has("SMTPUTF8") {
		return all(req, Permanent, "5.6.7", host+" does not support SMTPUTF8", mxName, ts), false
	}
	// RFC 8689 §4.2.1: a REQUIRETLS message goes only over TLS validated
	// by DANE or MTA-STS to a hop that advertises REQUIRETLS; another MX
	// may still qualify.
	if req.Params.RequireTLS && (ts == nil || !ts.Verified || (ts.Policy != PolicyDANE && ts.Policy != PolicyMTASTS) || !c.has("REQUIRETLS")) {
		why := host + " cannot honour REQUIRETLS"
		switch {
		case ts == nil || !ts.Verified || (ts.Policy != PolicyDANE && ts.Policy != PolicyMTASTS):
			why += ": session not validated by DANE or MTA-STS"
		default:
			why += ": REQUIRETLS not advertised"
		}
		return all(req, Permanent, statusRequireTLS, why, mxName, ts), true
	}
	if _, err := c.mail(req.From, req.Params); err != nil {
		return fromErr(req, err, "4.4.2", mxName, ts), false
	}
	results = make([]Result, len(req.Rcpts))
	accepted := 0
	for i, r := range req.Rcpts {
		_, err := c.rcpt(r.Addr, r.Notify, r.ORCPT)
		results[i] = Result{Rcpt: r.Addr, MX: mxName, TLS: ts}
		if err != nil {
			results[i].Outcome, results[i].Status, results[i].Response = classify(err, "4.4.2")
			continue
		}
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
