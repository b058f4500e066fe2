// Package courier drives the delivery of queued messages: for each due
// recipient it takes the policy decision (once, at the first attempt),
// groups recipients by domain and method, delivers, falls through to the
// next method when the TLS requirement cannot be met (SPEC §1), retries
// temporary failures on the queue's schedule, bounces permanent ones with an
// RFC 3464 DSN, and writes an audit record for every decision and outcome.
package courier

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dsn"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
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

	mu    sync.Mutex
	dests map[string]chan struct{}
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

// destination limits parallel sessions per recipient domain.
func (c *Courier) destination(domain string) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dests == nil {
		c.dests = map[string]chan struct{}{}
	}
	ch, ok := c.dests[domain]
	if !ok {
		n := c.PerDestination
		if n < 1 {
			n = 1
		}
		ch = make(chan struct{}, n)
		c.dests[domain] = ch
	}
	return ch
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
	// causes a tight retry loop).
	for _, r := range due {
		r.Attempts++
		r.LastAttempt = now
		r.NextAttempt = now.Add(c.backoff(r.Attempts))
	}
	if err := c.Queue.Save(it); err != nil {
		log.Error("cannot book next attempt; not trying now", "err", err)
		return
	}

	pol := c.Policy.Get()
	msg := c.policyMessage(it)
	var failures []failure
	for _, r := range due {
		if r.Decided {
			continue
		}
		d := pol.Decide(ctx, msg, r.Addr, c.Checker)
		if ctx.Err() != nil {
			return // shutting down: an interrupted decision is not a decision
		}
		if err := msg.BodyErr(); err != nil {
			// A body_regex rule could not be evaluated: deciding now could
			// pick weaker protection than the policy requires.
			log.Error("cannot read message for policy; deferring", "err", err)
			return
		}
		r.Decided, r.Rule, r.Plan, r.Method = true, d.Rule, d.Plan, d.Method
		r.TLSLevel, r.OnUnavailable = d.TLSLevel, d.OnUnavailable
		rec := audit.Record{Event: "decision", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Rule: d.Rule, Method: d.Method, Considered: considered(d.Considered)}
		for _, cm := range d.Considered {
			if cm.Method == d.Method {
				rec.Reason = cm.Reason
			}
		}
		if d.Method == "" {
			rec.Reason = "no method available"
		}
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed; not delivering", "err", err)
			return
		}
		if d.Method != "" {
			c.Metrics.Decisions.WithLabelValues(d.Method).Inc()
		}
		log.Info("decision", "rcpt", r.Addr, "rule", d.Rule, "method", d.Method, "plan", strings.Join(d.Plan, ","))
	}
	if err := c.Queue.Save(it); err != nil {
		log.Error("cannot save decisions", "err", err)
		return
	}

	// Recipients with no method left are deferred or bounced.
	type key struct{ domain, method, level string }
	groups := map[key][]*queue.Recipient{}
	var order []key
	for _, r := range due {
		if r.Method == "" {
			if f, ok := c.unavailable(it, r, "no method in the plan is available", log); ok {
				failures = append(failures, f)
			}
			continue
		}
		k := key{domainOf(r.Addr), r.Method, r.TLSLevel}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}

	for _, k := range order {
		rs := groups[k]
		if k.method != policy.TLS {
			// Encrypting methods are supplied by their own packages; a
			// plan can only name them once they are available, so this
			// is a method that disappeared (e.g. after a reload).
			for _, r := range rs {
				if f, ok := c.fallThrough(ctx, it, r, "method "+k.method+" is not available in this build", log); ok {
					failures = append(failures, f)
				}
			}
			continue
		}
		failures = append(failures, c.deliverTLS(ctx, it, k.domain, k.level, rs, log)...)
	}

	if len(failures) > 0 {
		c.bounce(it, failures, log)
	}
	if err := c.Queue.Save(it); err != nil {
		log.Error("cannot save delivery state", "err", err)
	}
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

// deliverTLS sends the unchanged message (it already carries our Received
// header) to one domain at the required TLS level.
func (c *Courier) deliverTLS(ctx context.Context, it *queue.Item, domain, level string, rs []*queue.Recipient, log *slog.Logger) []failure {
	if level == "" {
		level = deliver.LevelVerify
	}
	req := &deliver.Request{
		QueueID: it.ID,
		From:    it.Envelope.From,
		Params: deliver.MailParams{Size: it.Size, UTF8: it.Envelope.UTF8, RequireTLS: it.Envelope.RequireTLS,
			Ret: it.Envelope.Ret, EnvID: it.Envelope.EnvID},
		Domain:   domain,
		TLSLevel: level,
		Open: func() (io.ReadCloser, error) {
			return c.Queue.OpenBody(it.ID)
		},
	}
	byAddr := map[string]*queue.Recipient{}
	for _, r := range rs {
		req.Rcpts = append(req.Rcpts, deliver.Rcpt{Addr: r.Addr, Notify: r.Notify, ORCPT: r.ORCPT})
		byAddr[r.Addr] = r
	}
	sem := c.destination(domain)
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	start := time.Now()
	results := c.Transport.Deliver(ctx, req)
	<-sem
	c.Metrics.DeliverySeconds.WithLabelValues(policy.TLS).Observe(time.Since(start).Seconds())

	var failures []failure
	for _, res := range results {
		r := byAddr[res.Rcpt]
		if r == nil {
			continue
		}
		r.LastMX, r.Status = res.MX, res.Status
		rec := audit.Record{Event: "delivery", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Method: policy.TLS, MX: res.MX, Response: res.Response}
		if res.TLS != nil {
			rec.TLS = &audit.TLSInfo{Version: res.TLS.Version, Cipher: res.TLS.Cipher, Verified: res.TLS.Verified, Policy: res.TLS.Policy}
		}
		switch res.Outcome {
		case deliver.Delivered:
			r.State, r.LastError = queue.Delivered, ""
			rec.Result = "delivered"
			c.Metrics.Deliveries.WithLabelValues(policy.TLS, "delivered").Inc()
			log.Info("delivered", "rcpt", r.Addr, "mx", res.MX, "response", res.Response)
		case deliver.Permanent:
			r.State, r.LastError = queue.Bounced, res.Response
			rec.Result = "bounced"
			c.Metrics.Deliveries.WithLabelValues(policy.TLS, "bounced").Inc()
			failures = append(failures, failure{r: r, status: res.Status, mx: res.MX, diag: res.Response})
			log.Warn("bounced", "rcpt", r.Addr, "mx", res.MX, "response", res.Response)
		case deliver.Temporary:
			r.LastError = res.Response
			if f, expired := c.expire(it, r, res.Response, res.MX); expired {
				rec.Result = "bounced"
				rec.Reason = "queue.max_age exceeded"
				c.Metrics.Deliveries.WithLabelValues(policy.TLS, "bounced").Inc()
				failures = append(failures, f)
			} else {
				rec.Result = "deferred"
				c.Metrics.Deliveries.WithLabelValues(policy.TLS, "deferred").Inc()
				log.Info("deferred", "rcpt", r.Addr, "mx", res.MX, "response", res.Response, "next_attempt", r.NextAttempt)
			}
		case deliver.TLSUnavailable:
			r.LastError = res.Response
			rec.Result = "deferred"
			rec.Reason = "TLS requirement not met: " + res.Response
			if err := c.appendAudit(rec); err != nil {
				log.Error("audit write failed", "err", err)
			}
			if f, ok := c.fallThrough(ctx, it, r, rec.Reason, log); ok {
				failures = append(failures, f)
			}
			continue
		}
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed", "err", err)
		}
	}
	return failures
}

// expire bounces a recipient whose message has outlived queue.max_age.
func (c *Courier) expire(it *queue.Item, r *queue.Recipient, why, mx string) (failure, bool) {
	if c.MaxAge <= 0 || c.now().Sub(it.Received) < c.MaxAge {
		return failure{}, false
	}
	r.State = queue.Bounced
	return failure{r: r, status: "4.4.7", mx: mx, diag: why}, true
}

// fallThrough moves r to the next method of its plan (SPEC §1). When none
// is left, on_unavailable decides: bounce, or (default) defer and retry.
func (c *Courier) fallThrough(ctx context.Context, it *queue.Item, r *queue.Recipient, reason string, log *slog.Logger) (failure, bool) {
	pol := c.Policy.Get()
	d := policy.Decision{Rcpt: r.Addr, Rule: r.Rule, Plan: r.Plan, Method: r.Method, OnUnavailable: r.OnUnavailable, TLSLevel: r.TLSLevel}
	nd, ok := pol.Next(ctx, d, r.Method, reason, c.Checker)
	if ok {
		rec := audit.Record{Event: "fallback", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Rule: r.Rule, Method: nd.Method, Reason: fmt.Sprintf("%s -> %s: %s", r.Method, nd.Method, reason),
			Considered: considered(nd.Considered)}
		if err := c.appendAudit(rec); err != nil {
			log.Error("audit write failed", "err", err)
			return failure{}, false
		}
		c.Metrics.Fallbacks.WithLabelValues(r.Method, nd.Method).Inc()
		log.Info("fallback", "rcpt", r.Addr, "from", r.Method, "to", nd.Method, "reason", reason)
		r.Method = nd.Method
		r.NextAttempt = c.now() // at once
		return failure{}, false
	}
	return c.unavailable(it, r, reason, log)
}

// unavailable applies on_unavailable when no method is left.
func (c *Courier) unavailable(it *queue.Item, r *queue.Recipient, reason string, log *slog.Logger) (failure, bool) {
	method := r.Method
	if r.OnUnavailable == "bounce" {
		r.State, r.LastError = queue.Bounced, reason
		c.Metrics.Deliveries.WithLabelValues(labelMethod(method), "bounced").Inc()
		_ = c.appendAudit(audit.Record{Event: "delivery", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Method: method, Result: "bounced", Reason: "on_unavailable: bounce: " + reason})
		return failure{r: r, status: "5.7.10", diag: reason}, true
	}
	r.LastError = reason
	if f, expired := c.expire(it, r, reason, ""); expired {
		c.Metrics.Deliveries.WithLabelValues(labelMethod(method), "bounced").Inc()
		_ = c.appendAudit(audit.Record{Event: "delivery", QueueID: it.ID, MessageID: it.MessageID, From: it.Envelope.From,
			Rcpt: r.Addr, Method: method, Result: "bounced", Reason: "queue.max_age exceeded: " + reason})
		return f, true
	}
	c.Metrics.Deliveries.WithLabelValues(labelMethod(method), "deferred").Inc()
	log.Info("deferred: no method available", "rcpt", r.Addr, "reason", reason, "next_attempt", r.NextAttempt)
	return failure{}, false
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
	w, err := c.Queue.NewMessage()
	if err != nil {
		log.Error("cannot queue DSN", "err", err)
		return
	}
	body, err := c.Queue.OpenBody(it.ID)
	if err != nil {
		w.Abort()
		log.Error("cannot read message for DSN", "err", err)
		return
	}
	defer body.Close()
	err = dsn.Build(w, dsn.Params{ReportingMTA: c.Hostname, Sender: it.Envelope.From, EnvelopeID: it.Envelope.EnvID,
		QueueID: it.ID, Arrival: it.Received, Return: it.Envelope.Ret, UTF8: it.Envelope.UTF8, Recipients: rcpts,
		MessageID: w.ID() + "@" + c.Hostname}, body)
	if err != nil {
		w.Abort()
		log.Error("cannot build DSN", "err", err)
		return
	}
	d, err := w.Commit(queue.Envelope{From: "", UTF8: it.Envelope.UTF8}, []*queue.Recipient{{Addr: it.Envelope.From}},
		"<"+w.ID()+"@"+c.Hostname+">", "local")
	if err != nil {
		log.Error("cannot queue DSN", "err", err)
		return
	}
	log.Info("DSN queued", "dsn_queue_id", d.ID, "to", it.Envelope.From, "recipients", len(rcpts))
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
func (c *Courier) policyMessage(it *queue.Item) *policy.Message {
	m := &policy.Message{From: it.Envelope.From, Size: it.Size, Header: textproto.MIMEHeader{},
		Open: func() (io.ReadCloser, error) { return c.Queue.OpenBody(it.ID) }}
	f, err := c.Queue.OpenBody(it.ID)
	if err != nil {
		return m
	}
	defer f.Close()
	h, err := textproto.NewReader(bufio.NewReader(io.LimitReader(f, 1<<20))).ReadMIMEHeader()
	if err == nil || len(h) > 0 {
		m.Header = h
	}
	return m
}
