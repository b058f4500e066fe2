package tlsrpt

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"time"
)

const (
	// DefaultMaxDelay: reports go out at a random moment in the first
	// hour after the UTC day ends (RFC 8460 §4.1: a report covers a full
	// UTC day), so that not every sender posts at 00:00.
	DefaultMaxDelay = time.Hour
	// retryInterval: a day that could not be fully sent is tried again
	// this much later.
	retryInterval = time.Hour
	// giveUpAfter: a day's remaining reports are dropped this long after
	// the day ended (RFC 8460 §5.5 leaves the retry schedule to the
	// reporter).
	giveUpAfter = 48 * time.Hour
	// saveEvery: SendDay records its progress after this many domains.
	saveEvery = 20
)

// delay is the send delay of a day: fixed per process and day, below
// DefaultMaxDelay.
func (c *Collector) delay(key string) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(key))
	return time.Duration((h.Sum64() ^ c.seed) % uint64(DefaultMaxDelay))
}

// Run flushes the counters every Tick and, once a day has ended (plus a
// random delay of up to an hour), sends that day's reports with s; a day
// that fails is retried hourly for up to two days. It returns when ctx is
// done, after a final flush.
func (c *Collector) Run(ctx context.Context, s *Sender) {
	tick := c.Tick
	if tick <= 0 {
		tick = time.Minute
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		c.step(ctx, s)
		select {
		case <-ctx.Done():
			if err := c.Flush(); err != nil {
				c.log().Error("tlsrpt: flush", "err", err)
			}
			return
		case <-t.C:
		}
	}
}

func (c *Collector) step(ctx context.Context, s *Sender) {
	if err := c.Flush(); err != nil {
		c.log().Error("tlsrpt: flush", "err", err)
	}
	now := c.now()
	for _, key := range c.pendingDays(now) {
		if ctx.Err() != nil {
			return
		}
		start, err := time.Parse(time.DateOnly, key)
		if err != nil {
			continue
		}
		end := start.Add(24 * time.Hour)
		if now.Before(end.Add(c.delay(key))) {
			continue
		}
		c.mu.Lock()
		last := c.attempts[key]
		c.mu.Unlock()
		if !last.IsZero() && now.Sub(last) < retryInterval {
			continue
		}
		c.mu.Lock()
		c.attempts[key] = now
		c.mu.Unlock()
		err = c.SendDay(ctx, s, start)
		switch {
		case err == nil:
			c.mu.Lock()
			delete(c.attempts, key)
			c.mu.Unlock()
		case now.Sub(end) > giveUpAfter:
			c.log().Warn("tlsrpt: giving up on the remaining reports of a day", "day", key, "err", err)
			if err := c.abandon(key); err != nil {
				c.log().Error("tlsrpt: drop day", "day", key, "err", err)
			}
		default:
			c.log().Warn("tlsrpt: some reports not sent; retrying later", "day", key, "err", err)
		}
	}
}

// SendDay sends the reports of the UTC day holding day to every domain
// that publishes a TLSRPT record, then drops the day's data and marks the
// day sent. A day is sent once: calling SendDay again for it does
// nothing. On an error (DNS trouble, every destination of some domain
// failing) the domains that succeeded stay done and the others are kept
// for the next call. The current day cannot be sent.
func (c *Collector) SendDay(ctx context.Context, s *Sender, day time.Time) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	key := dayKey(day)
	if key >= dayKey(c.now()) {
		return fmt.Errorf("tlsrpt: day %s is not over", key)
	}
	c.mu.Lock()
	st := c.days[key]
	if st == nil || st.Sent {
		c.mu.Unlock()
		return nil
	}
	var domains []string
	for d := range st.Domains {
		if !st.Done[d] {
			domains = append(domains, d)
		}
	}
	c.mu.Unlock()
	sort.Strings(domains)

	var errs []error
	for i, d := range domains {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		err := s.SendReport(ctx, day, d, c.Aggregate(day, d))
		switch {
		case err == nil, errors.Is(err, ErrNoRecord):
			c.mu.Lock()
			st.Done[d] = true
			st.dirty = true
			if (i+1)%saveEvery == 0 {
				if err := c.saveLocked(st); err != nil {
					c.log().Error("tlsrpt: save progress", "day", key, "err", err)
				}
			}
			c.mu.Unlock()
		default:
			errs = append(errs, fmt.Errorf("%s: %w", d, err))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(errs) == 0 {
		st.Sent, st.Domains, st.Done = true, map[string]*DomainAggregate{}, map[string]bool{}
	}
	if err := c.saveLocked(st); err != nil {
		errs = append(errs, err)
	}
	c.pruneLocked(c.now())
	return errors.Join(errs...)
}

// abandon drops an unsent day's remaining data and marks it sent.
func (c *Collector) abandon(key string) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.days[key]
	if st == nil {
		return nil
	}
	st.Sent, st.Domains, st.Done = true, map[string]*DomainAggregate{}, map[string]bool{}
	return c.saveLocked(st)
}
