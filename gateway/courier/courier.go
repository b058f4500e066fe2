// Package courier drives the delivery of queued messages: for each due
// recipient it takes the policy decision (once, at the first attempt),
// groups recipients by domain and method, delivers, falls through to the
// next method when the TLS requirement cannot be met (SPEC §1), retries
// temporary failures on the queue's schedule, bounces permanent ones with an
// RFC 3464 DSN, and writes an audit record for every decision and outcome.
package courier

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dkim"
	"github.com/postern-mail/postern/gateway/dsn"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/gateway/tlsrpt"
	"github.com/postern-mail/postern/policy"
)

// Courier implements queue.Processor.
type Courier struct {
	Queue          *queue.Queue
	Transport      deliver.Transport
	Policy         *policy.Holder
	Checker        policy.Checker
	Audit          *audit.Log
	Metrics        *metrics.Metrics
	Hostname       string
	Retry          []time.Duration
	MaxAge         time.Duration
	PerDestination int
	Log            *slog.Logger
	Now            func() time.Time
	// Encoders produce the protected copies for the encrypting methods
	// ("pgp", "smime"); a method without one is unavailable.
	Encoders map[string]Encoder
	// TLSReports collects per-domain TLS results for RFC 8460 reports;
	// nil: no TLS reporting.
	TLSReports *tlsrpt.Collector
	// DKIM re-signs what postern changed (encrypted copies, DSNs) for the
	// sender's domain (SPEC §5a); nil or no key for the domain: unsigned.
	DKIM *dkim.Signer

	mu    sync.Mutex
	dests map[string]*dest
}

func (c *Courier) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// backoff is the delay before attempt n+1 after n attempts (n ≥ 1): the
// configured schedule, then its last step forever.
func (c *Courier) backoff(n int) time.Duration {
	if len(c.Retry) == 0 {
		return 5 * time.Minute
	}
	if n-1 < len(c.Retry) {
		return c.Retry[n-1]
	}
	return c.Retry[len(c.Retry)-1]
}

// dest is the per-recipient-domain session limit; entries are dropped
// when no delivery uses them, so the map does not grow with every domain
// ever seen.
type dest struct {
	sem   chan struct{}
	users int
}

// acquire waits for a session slot for domain (queue.per_destination).
func (c *Courier) acquire(ctx context.Context, domain string) (release func(), ok bool) {
	c.mu.Lock()
	if c.dests == nil {
		c.dests = map[string]*dest{}
	}
	d := c.dests[domain]
	if d == nil {
		n := c.PerDestination
		if n < 1 {
			n = 1
		}
		d = &dest{sem: make(chan struct{}, n)}
		c.dests[domain] = d
	}
	d.users++
	c.mu.Unlock()
	done := func() {
		c.mu.Lock()
		if d.users--; d.users == 0 {
			delete(c.dests, domain)
		}
		c.mu.Unlock()
	}
	select {
	case d.sem <- struct{}{}:
		return func() { <-d.sem; done() }, true
	case <-ctx.Done():
		done()
		return nil, false
	}
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// failure is a recipient that ends in a bounce.
type failure struct {
	r          *queue.Recipient
	status, mx string
	diag       string
}

// Encoder produces the protected copy of a message for one recipient
// (OpenPGP, S/MIME). A returned error wrapping ErrUnavailable means the
// method can no longer serve the recipient (key gone, revoked, unusable):
// the recipient falls through to the next method. Any other error is
// temporary.
type Encoder interface {
	// Encode writes the recipient's copy of msg to w and returns what the
	// audit says was used (e.g. "key 0xABCD… from wkd").
	Encode(ctx context.Context, c Copy, msg io.Reader, w io.Writer) (string, error)
}

// Copy names the copy an Encoder makes.
type Copy struct {
	QueueID string
	Rcpt    string
	// PortalID is the portal message id for the portal method, assigned
	// when the recipient was sent to the portal, so that the decision or
	// fallback record already names it (SPEC §6).
	PortalID string
}

// ErrUnavailable marks an Encoder error as "method unavailable".
var ErrUnavailable = errors.New("method unavailable")

// Process implements queue.Processor.
func (c *Courier) Process(ctx context.Context, it *queue.Item) {
	log := c.Log.With("queue_id", it.ID)
	now := c.now()
	var due []*queue.Recipient
	for _, r := range it.Rcpts {
		if r.State == queue.Pending && !r.NextAttempt.After(now) {
			due = append(due, r)
		}
	}
	if len(due) == 0 {
		return
	}
	// Book the next attempt before trying (a crash or panic then never
	// causes a tight retry loop). It is saved together with the
	// decisions, before any delivery.
	for _, r := range due {
		r.Attempts++
		r.LastAttempt = now
		r.NextAttempt = now.Add(c.backoff(r.Attempts))
	}
	ok := c.decide(ctx, it, due, log)
	if !ok {
		// No decision possible now (shutting down, message unreadable):
		// retried as booked, bounced once queue.max_age is exceeded.
		var fs []failure
		for _, r := range due {
			if f, expired := c.expire(it, r, "no policy decision could be taken", ""); expired {
				fs = append(fs, f)
			}
		}
		if len(fs) > 0 {
			c.bounce(it, fs, log)
		}
	}
	if err := c.Queue.Save(it); err != nil {
		log.Error("cannot book next attempt; not trying now", "err", err)
		return
	}
	if !ok {
		return
	}

	var failures []failure
	type key struct{ domain, method, level string }
	groups := map[key][]*queue.Recipient{}
	var order []key
	for _, r := range due {
		if r.Method == "" {
			// No method of the plan is available: on_unavailable.
			if f, ok := c.unavailable(it, r, "no method in the plan is available", log); ok {
				failures = append(failures, f)
			}
			continue
		}
		k := key{domainOf(r.Addr), r.Method, r.TLSLevel}
		if r.Method != policy.TLS {
			k.level = r.Addr // each recipient gets its own encrypted copy
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}

	for _, k := range order {
		rs := groups[k]
		switch {
		case k.method == policy.TLS:
			failures = append(failures, c.deliverTLS(ctx, it, k.domain, k.level, rs, log)...)
		case c.Encoders[k.method] != nil:
			for _, r := range rs {
				if f, ok := c.deliverEncoded(ctx, it, r, c.Encoders[k.method], log); ok {
					failures = append(failures, f)
				}
			}
		default:
			// A method that disappeared (e.g. unconfigured by a reload).
			for _, r := range rs {
				if f, ok := c.fallThrough(ctx, it, r, "method "+k.method+" is not available", log); ok {
					failures = append(failures, f)
				}
			}
		}
	}

	if len(failures) > 0 {
		c.bounce(it, failures, log)
	}
	if allDelivered(it) {
		// Done: the queue removes the item now. Not saving this final
		// state saves two fsyncs per message; a crash before the removal
		// redelivers (at worst twice, never zero times — SPEC §8). Bounces
		// are saved, so that a crash never sends a second DSN.
		return
	}
	if err := c.Queue.Save(it); err != nil {
		log.Error("cannot save delivery state", "err", err)
	}
}

// reportDecision is the fixed decision for a report postern generated
// (RFC 8460 §5.3: TLS reports are delivered even when TLS fails, so no
// encryption method and opportunistic TLS).
func reportDecision(rcpt string) policy.Decision {
	return policy.Decision{Rcpt: rcpt, Rule: "internal:tls-report", Method: policy.TLS, Plan: []string{policy.TLS},
		TLSLevel:   deliver.LevelOpportunistic,
		Considered: []policy.Considered{{Method: policy.TLS, OK: true, Reason: "TLS report (RFC 8460 §5.3): opportunistic TLS"}}}
}

// portalID returns a new portal message id when method is the portal:
// 128 random bits, base32, unguessable (it names the message, it is not the
// recipient's access token).
func (c *Courier) portalID(method string) string {
	if method != policy.Portal {
		return ""
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func allDelivered(it *queue.Item) bool {
	for _, r := range it.Rcpts {
		if r.State != queue.Delivered {
			return false
		}
	}
	return true
}

// decide takes the policy decision for recipients not yet decided and
// writes its audit record. It returns false when delivery must wait
// (shutting down, message unreadable, audit log failing).
func (c *Courier) decide(ctx context.Context, it *queue.Item, due []*queue.Recipient, log *slog.Logger) bool {
	var (
		pol *policy.Policy
		msg *policy.Message
	)
	for _, r := range due {
		// A recipient for whom no method was available is decided again
		// at each attempt: a key or certificate published since counts.
		if r.Decided && r.Method != "" {
			continue
		}
		if pol == nil {
			var err error
			if msg, err = c.policyMessage(it); err != nil {
				// Fail closed: no decision on a header we could not read.
				log.Error("cannot read message header for policy; deferring", "err", err)
				return false
			}
			pol = c.Policy.Get()
		}
		var d policy.Decision
		if it.Envelope.Report {
			d = reportDecision(r.Addr)
		} else {
			d = pol.Decide(ctx, msg, r.Addr, c.Checker)
		}
		if ctx.Err() != nil {
			return false // shutting down: an interrupted decision is not a decision
		}
		if err := msg.BodyErr(); err != nil {
			// A body_regex rule could not be evaluated: deciding now could
			// pick weaker protection than the policy requires.
			log.Error("cannot read message for policy; deferring", "err", err)
			return false
		}
		portalID := c.portalID(d.Method)
		rec := audit.Record{Event: "decision", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Rule: d.Rule, Method: d.Method, Considered: considered(d.Considered), PortalID: portalID}
		for _, cm := range d.Considered {
			if cm.Method == d.Method {
				rec.Reason = cm.Reason
			}
		}
		if d.Method == "" {
			rec.Reason = "no method available"
		}
		// The record is written before the decision is acted on (SPEC §6).
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed; not delivering", "err", err)
			return false
		}
		r.Decided, r.Rule, r.Plan, r.Method = true, d.Rule, d.Plan, d.Method
		r.TLSLevel, r.OnUnavailable = d.TLSLevel, d.OnUnavailable
		r.DomainTLS, r.StripSubjectTag = d.DomainTLS, d.StripSubjectTag
		r.PortalID = portalID
		if d.Method != "" {
			c.Metrics.Decisions.WithLabelValues(d.Method).Inc()
		}
		log.Info("decision", "rcpt", r.Addr, "rule", d.Rule, "method", d.Method, "plan", strings.Join(d.Plan, ","))
	}
	return true
}

func considered(cs []policy.Considered) []audit.Considered {
	out := make([]audit.Considered, len(cs))
	for i, c := range cs {
		out[i] = audit.Considered{Method: c.Method, OK: c.OK, Reason: c.Reason}
	}
	return out
}

func (c *Courier) appendAudit(r audit.Record) error {
	_, err := c.Audit.Append(r)
	return err
}

func (c *Courier) request(it *queue.Item, domain, level string, rs []*queue.Recipient, open func() (io.ReadCloser, error)) *deliver.Request {
	req := &deliver.Request{
		QueueID: it.ID,
		From:    it.Envelope.From,
		Params: deliver.MailParams{Size: it.Size, UTF8: it.Envelope.UTF8, RequireTLS: it.Envelope.RequireTLS,
			Ret: it.Envelope.Ret, EnvID: it.Envelope.EnvID, TLSRequiredNo: it.Envelope.TLSRequiredNo},
		Domain:   domain,
		TLSLevel: level,
		Open:     open,
	}
	for _, r := range rs {
		req.Rcpts = append(req.Rcpts, deliver.Rcpt{Addr: r.Addr, Notify: r.Notify, ORCPT: r.ORCPT})
	}
	return req
}

// send runs the transport under the per-destination limit.
func (c *Courier) send(ctx context.Context, method string, req *deliver.Request) ([]deliver.Result, bool) {
	release, ok := c.acquire(ctx, req.Domain)
	if !ok {
		return nil, false
	}
	start := time.Now()
	results := c.Transport.Deliver(ctx, req)
	release()
	if c.TLSReports != nil && len(results) > 0 {
		// One session per Deliver call: count it once (RFC 8460 §4.4).
		if r, ok := tlsrpt.ResultFrom(req.Domain, results[0], "", "", nil); ok {
			c.TLSReports.Record(r)
		}
	}
	c.Metrics.DeliverySeconds.WithLabelValues(method).Observe(time.Since(start).Seconds())
	return results, true
}

// deliverTLS sends the unchanged message (it already carries our Received
// header) to one domain at the required TLS level.
func (c *Courier) deliverTLS(ctx context.Context, it *queue.Item, domain, level string, rs []*queue.Recipient, log *slog.Logger) []failure {
	if level == "" {
		level = deliver.LevelVerify
	}
	open := func() (io.ReadCloser, error) { return c.Queue.OpenBody(it.ID) }
	if sd := domainOf(it.Envelope.From); c.DKIM.Has(sd) {
		// SPEC §5: the TLS copy is unchanged but for Received and, when
		// configured, a DKIM signature.
		body, err := c.Queue.OpenBody(it.ID)
		if err != nil {
			return c.temporaryAll(it, rs, "cannot read queued message", log)
		}
		tmp, err := c.Queue.TempFile()
		if err == nil {
			err = c.DKIM.Sign(tmp, body, sd)
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			defer os.Remove(tmp.Name())
		}
		body.Close()
		if err != nil {
			log.Error("DKIM signing failed", "err", err)
			return c.temporaryAll(it, rs, "DKIM signing failed", log)
		}
		signed := tmp.Name()
		open = func() (io.ReadCloser, error) { return os.Open(signed) }
	}
	req := c.request(it, domain, level, rs, open)
	results, ok := c.send(ctx, policy.TLS, req)
	if !ok {
		return nil
	}
	byAddr := map[string]*queue.Recipient{}
	for _, r := range rs {
		byAddr[r.Addr] = r
	}
	var failures []failure
	for _, res := range results {
		if r := byAddr[res.Rcpt]; r != nil {
			if f, ok := c.outcome(ctx, it, r, policy.TLS, "", res, log); ok {
				failures = append(failures, f)
			}
		}
	}
	return failures
}

// transportLevel is the TLS level an encrypted copy travels at: the
// recipient domain's requirement (SPEC §4 domains: applies whatever the
// method), else opportunistic.
func transportLevel(domainTLS string) string {
	switch domainTLS {
	case "", "none":
		return deliver.LevelOpportunistic
	}
	return domainTLS
}

// deliverEncoded encrypts one recipient's copy into a temporary file in
// the queue and delivers it.
func (c *Courier) deliverEncoded(ctx context.Context, it *queue.Item, r *queue.Recipient, enc Encoder, log *slog.Logger) (failure, bool) {
	method := r.Method
	tmp, err := c.Queue.TempFile()
	if err != nil {
		return c.temporary(it, r, method, "cannot create a temporary file: "+err.Error(), "", log)
	}
	defer os.Remove(tmp.Name())
	body, err := c.Queue.OpenBody(it.ID)
	if err != nil {
		tmp.Close()
		return c.temporary(it, r, method, "cannot read queued message", "", log)
	}
	var in io.Reader = body
	if r.StripSubjectTag != "" {
		in = stripSubjectTag(body, r.StripSubjectTag)
	}
	start := time.Now()
	desc, err := enc.Encode(ctx, Copy{QueueID: it.ID, Rcpt: r.Addr, PortalID: r.PortalID}, in, tmp)
	c.Metrics.EncryptSeconds.WithLabelValues(method).Observe(time.Since(start).Seconds())
	body.Close()
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return c.fallThrough(ctx, it, r, method+" unavailable at delivery: "+err.Error(), log)
		}
		log.Error("encryption failed", "rcpt", r.Addr, "method", method, "err", err)
		return c.temporary(it, r, method, "encryption failed", "", log)
	}
	copyPath := tmp.Name()
	if sd := domainOf(it.Envelope.From); c.DKIM.Has(sd) {
		signed, err := c.sign(tmp.Name(), sd)
		if err != nil {
			log.Error("DKIM signing failed", "rcpt", r.Addr, "err", err)
			return c.temporary(it, r, method, "DKIM signing failed", "", log)
		}
		defer os.Remove(signed)
		copyPath = signed
	}
	req := c.request(it, domainOf(r.Addr), transportLevel(r.DomainTLS), []*queue.Recipient{r},
		func() (io.ReadCloser, error) { return os.Open(copyPath) })
	req.Params.Size = 0 // the encrypted copy has its own size
	results, ok := c.send(ctx, method, req)
	if !ok || len(results) == 0 {
		return failure{}, false
	}
	return c.outcome(ctx, it, r, method, desc, results[0], log)
}

// sign writes a DKIM-signed copy of the file at path into a new queue temp
// file and returns its name.
func (c *Courier) sign(path, domain string) (string, error) {
	in, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := c.Queue.TempFile()
	if err != nil {
		return "", err
	}
	err = c.DKIM.Sign(out, in, domain)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// outcome records one recipient's delivery result: state, audit record,
// metrics. It returns a failure when the recipient is to be bounced.
func (c *Courier) outcome(ctx context.Context, it *queue.Item, r *queue.Recipient, method, desc string, res deliver.Result, log *slog.Logger) (failure, bool) {
	r.LastMX, r.Status = res.MX, res.Status
	rec := audit.Record{Event: "delivery", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
		Rcpt: r.Addr, Method: method, MX: res.MX, Response: res.Response, Reason: desc, PortalID: r.PortalID}
	if res.TLS != nil {
		rec.TLS = &audit.TLSInfo{Version: res.TLS.Version, Cipher: res.TLS.Cipher, Verified: res.TLS.Verified, Policy: res.TLS.Policy}
	}
	if res.Downgrade != "" {
		// Not refused (that is policy), but never silent (STYLE §5).
		log.Warn("TLS downgrade", "rcpt", r.Addr, "note", res.Downgrade)
		rec.Reason = strings.TrimPrefix(rec.Reason+"; TLS downgrade: "+res.Downgrade, "; ")
	}
	if res.PolicyFailure != "" {
		rec.Reason = strings.TrimPrefix(rec.Reason+"; "+res.PolicyFailure, "; ")
	}
	var (
		f      failure
		bounce bool
	)
	switch res.Outcome {
	case deliver.Delivered:
		r.State, r.LastError = queue.Delivered, ""
		rec.Result = "delivered"
		log.Info("delivered", "rcpt", r.Addr, "method", method, "mx", res.MX, "response", res.Response)
	case deliver.Permanent:
		r.State, r.LastError = queue.Bounced, res.Response
		rec.Result = "bounced"
		f, bounce = failure{r: r, status: res.Status, mx: res.MX, diag: res.Response}, true
		log.Warn("bounced", "rcpt", r.Addr, "method", method, "mx", res.MX, "response", res.Response)
	case deliver.Temporary:
		r.LastError = res.Response
		if f, bounce = c.expire(it, r, res.Response, res.MX); bounce {
			rec.Result = "bounced"
			rec.Reason = strings.TrimSpace(desc + " queue.max_age exceeded")
		} else {
			rec.Result = "deferred"
			log.Info("deferred", "rcpt", r.Addr, "method", method, "mx", res.MX, "response", res.Response, "next_attempt", r.NextAttempt)
		}
	case deliver.TLSUnavailable:
		// Not a delivery: the recipient's server cannot meet the TLS
		// requirement. The fallback or deferral record says so.
		r.LastError = res.Response
		return c.fallThrough(ctx, it, r, "TLS requirement not met: "+res.Response, log)
	}
	c.Metrics.Deliveries.WithLabelValues(method, rec.Result).Inc()
	if err := c.appendAudit(rec); err != nil {
		log.Error("audit write failed", "err", err)
	}
	return f, bounce
}

// temporaryAll defers every recipient of rs for a local reason.
func (c *Courier) temporaryAll(it *queue.Item, rs []*queue.Recipient, reason string, log *slog.Logger) []failure {
	var fs []failure
	for _, r := range rs {
		if f, ok := c.temporary(it, r, policy.TLS, reason, "", log); ok {
			fs = append(fs, f)
		}
	}
	return fs
}

// temporary defers a recipient for a local reason (bouncing it once
// queue.max_age is exceeded), with its audit record.
func (c *Courier) temporary(it *queue.Item, r *queue.Recipient, method, reason, mx string, log *slog.Logger) (failure, bool) {
	return c.outcome(context.Background(), it, r, method, "", deliver.Result{Rcpt: r.Addr, Outcome: deliver.Temporary,
		Status: "4.3.0", Response: reason, MX: mx}, log)
}

// expire bounces a recipient whose message has outlived queue.max_age.
func (c *Courier) expire(it *queue.Item, r *queue.Recipient, why, mx string) (failure, bool) {
	if c.MaxAge <= 0 || c.now().Sub(it.Received) < c.MaxAge {
		return failure{}, false
	}
	r.State = queue.Bounced
	return failure{r: r, status: "4.4.7", mx: mx, diag: why}, true
}

// fallThrough handles a method that turned out unavailable at delivery
// (SPEC §1, §4): with on_unavailable "defer" or "bounce" that is applied at
// once; by default the recipient moves to the next available method of its
// plan, and when none is left it is deferred.
func (c *Courier) fallThrough(ctx context.Context, it *queue.Item, r *queue.Recipient, reason string, log *slog.Logger) (failure, bool) {
	if r.OnUnavailable == policy.OnUnavailableDefer || r.OnUnavailable == policy.OnUnavailableBounce {
		return c.unavailable(it, r, reason, log)
	}
	pol := c.Policy.Get()
	d := policy.Decision{Rcpt: r.Addr, Rule: r.Rule, Plan: r.Plan, Method: r.Method, OnUnavailable: r.OnUnavailable,
		TLSLevel: r.TLSLevel, DomainTLS: r.DomainTLS, StripSubjectTag: r.StripSubjectTag}
	nd, ok := pol.Next(ctx, d, r.Method, reason, c.Checker)
	if ok {
		portalID := r.PortalID
		if portalID == "" {
			portalID = c.portalID(nd.Method)
		}
		rec := audit.Record{Event: "fallback", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Rule: r.Rule, Method: nd.Method, Reason: fmt.Sprintf("%s -> %s: %s", r.Method, nd.Method, reason),
			Considered: considered(nd.Considered), PortalID: portalID}
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed", "err", err)
			return failure{}, false
		}
		c.Metrics.Fallbacks.WithLabelValues(r.Method, nd.Method).Inc()
		log.Info("fallback", "rcpt", r.Addr, "from", r.Method, "to", nd.Method, "reason", reason)
		r.Method, r.PortalID = nd.Method, portalID
		r.NextAttempt = c.now() // at once
		return failure{}, false
	}
	return c.unavailable(it, r, reason, log)
}

// unavailable applies on_unavailable when no method is left: bounce, or
// (default) defer and retry on the queue's schedule, bouncing only once
// queue.max_age is exceeded. Never plaintext.
func (c *Courier) unavailable(it *queue.Item, r *queue.Recipient, reason string, log *slog.Logger) (failure, bool) {
	method := labelMethod(r.Method)
	rec := audit.Record{Event: "delivery", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
		Rcpt: r.Addr, Method: r.Method}
	var (
		f      failure
		bounce bool
	)
	r.LastError = reason
	switch {
	case r.OnUnavailable == policy.OnUnavailableBounce:
		r.State = queue.Bounced
		f, bounce = failure{r: r, status: "5.7.10", diag: reason}, true
		rec.Result, rec.Reason = "bounced", "on_unavailable: bounce: "+reason
	default:
		if f, bounce = c.expire(it, r, reason, ""); bounce {
			rec.Result, rec.Reason = "bounced", "queue.max_age exceeded: "+reason
		} else {
			rec.Result, rec.Reason = "deferred", reason
			log.Info("deferred: method unavailable", "rcpt", r.Addr, "reason", reason, "next_attempt", r.NextAttempt)
		}
	}
	c.Metrics.Deliveries.WithLabelValues(method, rec.Result).Inc()
	if err := c.appendAudit(rec); err != nil {
		log.Error("audit write failed", "err", err)
	}
	return f, bounce
}

func labelMethod(m string) string {
	if m == "" {
		return policy.TLS
	}
	return m
}

// bounce sends one RFC 3464 DSN for the failed recipients that asked for
// one, unless the message is itself a bounce (null sender: RFC 5321 §6.1,
// never a DSN for a DSN).
func (c *Courier) bounce(it *queue.Item, fs []failure, log *slog.Logger) {
	var rcpts []dsn.Recipient
	for _, f := range fs {
		if !f.r.WantsDSN("FAILURE") {
			continue
		}
		rcpts = append(rcpts, dsn.Recipient{Rcpt: f.r.Addr, ORCPT: f.r.ORCPT, Action: "failed", Status: toPermanent(f.status),
			RemoteMTA: strings.TrimPrefix(f.mx, "dir:"), Diagnostic: f.diag, LastAttempt: f.r.LastAttempt})
	}
	for _, f := range fs {
		rec := audit.Record{Event: "bounce", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: f.r.Addr, Method: f.r.Method, Result: "bounced", Reason: f.status + " " + f.diag}
		if it.Envelope.From == "" {
			rec.Reason += " (no DSN: the message is itself a bounce)"
		} else if !f.r.WantsDSN("FAILURE") {
			rec.Reason += " (no DSN: NOTIFY excludes FAILURE)"
		}
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed", "err", err)
		}
	}
	if it.Envelope.From == "" || len(rcpts) == 0 {
		return
	}
	if err := c.queueDSN(it, rcpts, log); err != nil {
		// Never lose a bounce: the recipients stay pending, and the next
		// attempt (already booked) bounces them again and retries the DSN.
		log.Error("cannot queue DSN; the bounce will be retried", "err", err)
		for _, f := range fs {
			if f.r.WantsDSN("FAILURE") {
				f.r.State = queue.Pending
				f.r.LastError = "bounce pending: DSN not queued: " + f.diag
			}
		}
	}
}

// queueDSN builds the RFC 3464 DSN (DKIM-signed for the hostname's domain
// when a key exists) and commits it to the queue.
func (c *Courier) queueDSN(it *queue.Item, rcpts []dsn.Recipient, log *slog.Logger) error {
	w, err := c.Queue.NewMessage()
	if err != nil {
		return err
	}
	body, err := c.Queue.OpenBody(it.ID)
	if err != nil {
		w.Abort()
		return fmt.Errorf("read message for DSN: %w", err)
	}
	defer body.Close()
	params := dsn.Params{ReportingMTA: c.Hostname, Sender: it.Envelope.From, EnvelopeID: it.Envelope.EnvID,
		QueueID: it.ID, Arrival: it.Received, Return: it.Envelope.Ret, UTF8: it.Envelope.UTF8, Recipients: rcpts,
		MessageID: w.ID() + "@" + c.Hostname}
	if c.DKIM.Has(c.Hostname) {
		// The DSN is From MAILER-DAEMON@hostname: sign for that domain.
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(dsn.Build(pw, params, body)) }()
		err = c.DKIM.Sign(w, pr, c.Hostname)
		pr.CloseWithError(err)
	} else {
		err = dsn.Build(w, params, body)
	}
	if err != nil {
		w.Abort()
		return fmt.Errorf("build DSN: %w", err)
	}
	d, err := w.Commit(queue.Envelope{From: "", UTF8: it.Envelope.UTF8}, []*queue.Recipient{{Addr: it.Envelope.From}},
		"<"+w.ID()+"@"+c.Hostname+">", "local")
	if err != nil {
		return err
	}
	log.Info("DSN queued", "dsn_queue_id", d.ID, "to", it.Envelope.From, "recipients", len(rcpts))
	return nil
}

// toPermanent turns a 4.x.x status into 5.x.x for a final failure (RFC 3464
// §2.3.4: a failed action carries a permanent status).
func toPermanent(s string) string {
	if strings.HasPrefix(s, "4.") {
		return "5." + s[2:]
	}
	if s == "" {
		return "5.0.0"
	}
	return s
}

// policyMessage builds what the policy engine sees: envelope sender, the
// header block (bounded) and the size; the body is opened on demand.
func (c *Courier) policyMessage(it *queue.Item) (*policy.Message, error) {
	m := &policy.Message{From: it.Envelope.From, Size: it.Size,
		Open: func() (io.ReadCloser, error) { return c.Queue.OpenBody(it.ID) }}
	f, err := c.Queue.OpenBody(it.ID)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := readHeader(f, maxHeaderBytes)
	if err != nil {
		return nil, err
	}
	m.Header = h
	return m, nil
}

// maxHeaderBytes bounds the header block the policy reads.
const maxHeaderBytes = 1 << 20

// readHeader reads a message's header block leniently (RFC 5322 §2.2):
// a malformed line is skipped rather than ending the header, so a rule on
// a field below it (a [secure] Subject) still matches; "Name :" counts as
// "Name". A header block larger than max is an error: the decision would
// be taken on part of the header, and could pick weaker protection.
func readHeader(r io.Reader, max int) (textproto.MIMEHeader, error) {
	br := bufio.NewReader(io.LimitReader(r, int64(max)+1))
	h := textproto.MIMEHeader{}
	var name, val string
	flush := func() {
		if name != "" {
			h.Add(textproto.CanonicalMIMEHeaderKey(name), strings.TrimSpace(val))
		}
		name, val = "", ""
	}
	total := 0
	for {
		line, err := br.ReadString('\n')
		total += len(line)
		if total > max {
			return nil, fmt.Errorf("header block larger than %d bytes", max)
		}
		l := strings.TrimRight(line, "\r\n")
		switch {
		case l == "":
			if err == nil || line != "" {
				flush()
				return h, nil
			}
		case l[0] == ' ' || l[0] == '\t':
			if name != "" {
				val += " " + strings.TrimSpace(l)
			}
		default:
			flush()
			if n, v, ok := strings.Cut(l, ":"); ok && validFieldName(strings.TrimSpace(n)) {
				name, val = strings.TrimSpace(n), v
			}
		}
		if err != nil {
			flush()
			if errors.Is(err, io.EOF) {
				return h, nil // a message that is all header
			}
			return nil, err
		}
	}
}

// validFieldName: printable US-ASCII except ":" (RFC 5322 §2.2).
func validFieldName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if n[i] < 33 || n[i] > 126 || n[i] == ':' {
			return false
		}
	}
	return true
}

// stripSubjectTag returns msg with tag removed from its Subject header
// field (policy strip_subject_tag). Only the header block is rewritten;
// a header block over 1 MiB, or a Subject that does not hold the tag
// literally (e.g. RFC 2047-encoded), is passed through unchanged.
func stripSubjectTag(msg io.Reader, tag string) io.Reader {
	br := bufio.NewReaderSize(msg, 64<<10)
	var head []byte
	for len(head) < 1<<20 {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			break
		}
		if string(line) == "\r\n" || string(line) == "\n" {
			break
		}
	}
	return io.MultiReader(bytes.NewReader(rewriteSubject(head, tag)), br)
}

func rewriteSubject(head []byte, tag string) []byte {
	lines := bytes.SplitAfter(head, []byte("\n"))
	var out bytes.Buffer
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if len(l) < 8 || !strings.EqualFold(string(l[:8]), "subject:") {
			out.Write(l)
			continue
		}
		field := string(l)
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			field += string(lines[i])
		}
		value := strings.TrimRight(field[8:], "\r\n")
		unfolded := strings.NewReplacer("\r\n", "", "\n", "").Replace(value)
		stripped := policy.RemoveSubjectTag(strings.TrimSpace(unfolded), tag)
		if stripped == strings.TrimSpace(unfolded) {
			out.WriteString(field)
			continue
		}
		out.WriteString("Subject: " + stripped + "\r\n")
	}
	return out.Bytes()
}
