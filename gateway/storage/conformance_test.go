package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"
)

// testConformance is the one suite every Store implementation must pass.
func testConformance(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	now := time.Date(2026, 12, 3, 10, 0, 0, 123456000, time.UTC)

	t.Run("messages", func(t *testing.T) {
		s := open(t)
		m := &Message{ID: "m1", Rcpt: "b@x.example", Created: now, Expires: now.Add(time.Hour),
			State: StateActive, WrappedKey: []byte{1, 2, 3}, Content: []byte("sealed")}
		created, err := s.CreateMessage(ctx, m)
		if err != nil || !created {
			t.Fatalf("CreateMessage = %v, %v; want true, nil", created, err)
		}
		dup := *m
		dup.Content = []byte("other")
		created, err = s.CreateMessage(ctx, &dup)
		if err != nil || created {
			t.Fatalf("second CreateMessage = %v, %v; want false, nil", created, err)
		}
		got, err := s.Message(ctx, "m1")
		if err != nil {
			t.Fatal(err)
		}
		if got.Rcpt != m.Rcpt || !got.Created.Equal(now) || !got.Expires.Equal(m.Expires) || got.State != StateActive ||
			!bytes.Equal(got.WrappedKey, m.WrappedKey) || !bytes.Equal(got.Content, m.Content) {
			t.Fatalf("Message = %+v, want %+v", got, m)
		}
		if _, err := s.Message(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown message: err = %v, want ErrNotFound", err)
		}
		if err := s.RevokeMessage(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoke unknown: err = %v, want ErrNotFound", err)
		}
		if err := s.RevokeMessage(ctx, "m1"); err != nil {
			t.Fatal(err)
		}
		got, err = s.Message(ctx, "m1")
		if err != nil {
			t.Fatal(err)
		}
		if got.State != StateRevoked || got.Content != nil || got.WrappedKey != nil {
			t.Fatalf("after revoke: %+v", got)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		s := open(t)
		for i, exp := range []time.Duration{-time.Minute, 0, time.Minute} {
			m := &Message{ID: fmt.Sprint("e", i), Rcpt: "b@x.example", Created: now.Add(-time.Hour), Expires: now.Add(exp),
				State: StateActive, WrappedKey: []byte("k"), Content: []byte("c")}
			if _, err := s.CreateMessage(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.RevokeMessage(ctx, "e0"); err != nil {
			t.Fatal(err)
		}
		ids, err := s.ExpireMessages(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(ids)
		if fmt.Sprint(ids) != "[e1]" {
			t.Fatalf("expired %v, want [e1] (e0 was revoked, e2 is not due)", ids)
		}
		if m, _ := s.Message(ctx, "e1"); m.State != StateExpired || m.Content != nil || m.WrappedKey != nil {
			t.Fatalf("e1 after expiry: %+v", m)
		}
		if m, _ := s.Message(ctx, "e2"); m.State != StateActive || string(m.Content) != "c" {
			t.Fatalf("e2 touched: %+v", m)
		}
		if ids, err := s.ExpireMessages(ctx, now); err != nil || len(ids) != 0 {
			t.Fatalf("second expiry = %v, %v; want none", ids, err)
		}
	})

	t.Run("accounts", func(t *testing.T) {
		s := open(t)
		if _, err := s.Account(ctx, "a@x.example"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
		if err := s.SetPassword(ctx, "a@x.example", "h1", now); err != nil {
			t.Fatal(err)
		}
		if err := s.SetPassword(ctx, "a@x.example", "h2", now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		a, err := s.Account(ctx, "a@x.example")
		if err != nil || a.PasswordHash != "h2" || !a.Updated.Equal(now.Add(time.Second)) {
			t.Fatalf("Account = %+v, %v", a, err)
		}
	})

	t.Run("tokens and sessions", func(t *testing.T) {
		s := open(t)
		tk := &Token{Hash: []byte{0, 1, 2, 0xff}, Kind: TokenLink, MessageID: "m1", Addr: "a@x.example", Expires: now.Add(time.Hour)}
		if err := s.CreateToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateToken(ctx, tk); err == nil {
			t.Fatal("duplicate token hash accepted")
		}
		got, err := s.Token(ctx, tk.Hash)
		if err != nil || got.Kind != TokenLink || got.MessageID != "m1" || got.Addr != tk.Addr || !got.Expires.Equal(tk.Expires) {
			t.Fatalf("Token = %+v, %v", got, err)
		}
		if _, err := s.Token(ctx, []byte{0, 1, 2}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("prefix hash found: %v", err)
		}
		old := &Token{Hash: []byte("old"), Kind: TokenReset, MessageID: "m1", Addr: "a@x.example", Expires: now}
		if err := s.CreateToken(ctx, old); err != nil {
			t.Fatal(err)
		}
		se := &Session{Hash: []byte("s1"), Addr: "a@x.example", Expires: now.Add(time.Hour)}
		se2 := &Session{Hash: []byte("s2"), Addr: "a@x.example", Expires: now}
		se3 := &Session{Hash: []byte("s3"), Addr: "c@x.example", Expires: now.Add(time.Hour)}
		for _, x := range []*Session{se, se2, se3} {
			if err := s.CreateSession(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.Session(ctx, []byte("s1")); err != nil || got.Addr != "a@x.example" || !got.Expires.Equal(se.Expires) {
			t.Fatalf("Session = %+v, %v", got, err)
		}
		if err := s.Purge(ctx, now); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Token(ctx, old.Hash); !errors.Is(err, ErrNotFound) {
			t.Fatalf("expired token kept: %v", err)
		}
		if _, err := s.Session(ctx, []byte("s2")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("expired session kept: %v", err)
		}
		if _, err := s.Token(ctx, tk.Hash); err != nil {
			t.Fatalf("live token purged: %v", err)
		}
		if err := s.DeleteToken(ctx, tk.Hash); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Token(ctx, tk.Hash); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted token found: %v", err)
		}
		if err := s.DeleteSessions(ctx, "a@x.example"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Session(ctx, []byte("s1")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("session of addr kept: %v", err)
		}
		if _, err := s.Session(ctx, []byte("s3")); err != nil {
			t.Fatalf("other address's session deleted: %v", err)
		}
		if err := s.DeleteSession(ctx, []byte("s3")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Session(ctx, []byte("s3")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted session found: %v", err)
		}
	})

	t.Run("attempts", func(t *testing.T) {
		s := open(t)
		if a, err := s.Attempts(ctx, "addr:a@x"); err != nil || a.Failures != 0 || !a.LockedUntil.IsZero() {
			t.Fatalf("fresh Attempts = %+v, %v", a, err)
		}
		// Concurrent failures must all be counted (atomic increment).
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.AddFailure(ctx, "addr:a@x", now); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if a, _ := s.Attempts(ctx, "addr:a@x"); a.Failures != 8 {
			t.Fatalf("failures = %d, want 8", a.Failures)
		}
		until := now.Add(15 * time.Minute)
		if err := s.Lock(ctx, "addr:a@x", until); err != nil {
			t.Fatal(err)
		}
		if a, _ := s.Attempts(ctx, "addr:a@x"); a.Failures != 0 || !a.LockedUntil.Equal(until) {
			t.Fatalf("after lock: %+v", a)
		}
		if n, err := s.AddFailure(ctx, "addr:a@x", now); err != nil || n != 1 {
			t.Fatalf("AddFailure after lock = %d, %v", n, err)
		}
		if err := s.Purge(ctx, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if a, _ := s.Attempts(ctx, "addr:a@x"); !a.LockedUntil.Equal(until) {
			t.Fatalf("purge dropped a live lock: %+v", a)
		}
		if err := s.ClearFailures(ctx, "addr:a@x"); err != nil {
			t.Fatal(err)
		}
		if a, _ := s.Attempts(ctx, "addr:a@x"); a.Failures != 0 || !a.LockedUntil.IsZero() {
			t.Fatalf("after clear: %+v", a)
		}
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
