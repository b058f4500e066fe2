package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// dialect holds what differs between SQLite and PostgreSQL.
type dialect struct {
	name     string
	blob     string // column type for byte strings
	dollarNo bool   // placeholders are $1, $2… instead of ?
}

var (
	sqliteDialect   = dialect{name: "sqlite", blob: "BLOB"}
	postgresDialect = dialect{name: "postgres", blob: "BYTEA", dollarNo: true}
)

// sqlStore implements Store over database/sql. Times are stored as Unix
// microseconds (BIGINT) so both databases compare them the same way.
type sqlStore struct {
	db *sql.DB
	d  dialect
}

// q rewrites ? placeholders for the dialect. Queries here never contain a
// literal "?".
func (s *sqlStore) q(query string) string {
	if !s.d.dollarNo {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromTS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

// migrations are applied in order, each once; a migration's index+1 is its
// version in schema_version. Never edit an applied migration: append.
func migrations(d dialect) []string {
	return []string{
		`CREATE TABLE portal_messages (
			id TEXT PRIMARY KEY,
			rcpt TEXT NOT NULL,
			created BIGINT NOT NULL,
			expires BIGINT NOT NULL,
			state TEXT NOT NULL,
			wrapped_key ` + d.blob + `,
			content ` + d.blob + `
		);
		CREATE INDEX portal_messages_expiry ON portal_messages (state, expires);
		CREATE TABLE portal_accounts (
			addr TEXT PRIMARY KEY,
			password_hash TEXT NOT NULL,
			updated BIGINT NOT NULL
		);
		CREATE TABLE portal_tokens (
			hash ` + d.blob + ` PRIMARY KEY,
			kind TEXT NOT NULL,
			message_id TEXT NOT NULL,
			addr TEXT NOT NULL,
			expires BIGINT NOT NULL
		);
		CREATE TABLE portal_sessions (
			hash ` + d.blob + ` PRIMARY KEY,
			addr TEXT NOT NULL,
			expires BIGINT NOT NULL
		);
		CREATE INDEX portal_sessions_addr ON portal_sessions (addr);
		CREATE TABLE portal_attempts (
			key TEXT PRIMARY KEY,
			failures INTEGER NOT NULL,
			locked_until BIGINT NOT NULL,
			updated BIGINT NOT NULL
		)`,
	}
}

// migrate brings the schema up to date. lock, when not nil, runs first
// inside the transaction (PostgreSQL: an advisory lock so that several
// nodes starting at once migrate one after the other).
func (s *sqlStore) migrate(ctx context.Context, lock string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("storage: migrate: %w", err)
	}
	defer tx.Rollback()
	if lock != "" {
		if _, err := tx.ExecContext(ctx, lock); err != nil {
			return fmt.Errorf("storage: migrate lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("storage: migrate: %w", err)
	}
	var version int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return fmt.Errorf("storage: migrate: %w", err)
		}
	case err != nil:
		return fmt.Errorf("storage: read schema version: %w", err)
	}
	ms := migrations(s.d)
	if version > len(ms) {
		return fmt.Errorf("storage: database schema version %d is newer than this postern (%d)", version, len(ms))
	}
	for i := version; i < len(ms); i++ {
		for _, stmt := range strings.Split(ms[i], ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("storage: migration %d: %w", i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE schema_version SET version = ?`), i+1); err != nil {
			return fmt.Errorf("storage: migration %d: %w", i+1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("storage: migrate commit: %w", err)
	}
	return nil
}

func (s *sqlStore) CreateMessage(ctx context.Context, m *Message) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.q(`INSERT INTO portal_messages (id, rcpt, created, expires, state, wrapped_key, content)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`),
		m.ID, m.Rcpt, ts(m.Created), ts(m.Expires), m.State, m.WrappedKey, m.Content)
	if err != nil {
		return false, fmt.Errorf("storage: create message: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("storage: create message: %w", err)
	}
	return n == 1, nil
}

func (s *sqlStore) Message(ctx context.Context, id string) (*Message, error) {
	var m Message
	var created, expires int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id, rcpt, created, expires, state, wrapped_key, content
		FROM portal_messages WHERE id = ?`), id).Scan(&m.ID, &m.Rcpt, &created, &expires, &m.State, &m.WrappedKey, &m.Content)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: read message: %w", err)
	}
	m.Created, m.Expires = fromTS(created), fromTS(expires)
	return &m, nil
}

func (s *sqlStore) RevokeMessage(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE portal_messages SET state = ?, wrapped_key = NULL, content = NULL WHERE id = ?`),
		StateRevoked, id)
	if err != nil {
		return fmt.Errorf("storage: revoke message: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("storage: revoke message: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *sqlStore) ExpireMessages(ctx context.Context, now time.Time) ([]string, error) {
	// RETURNING exists in both PostgreSQL and SQLite ≥ 3.35.
	rows, err := s.db.QueryContext(ctx, s.q(`UPDATE portal_messages SET state = ?, wrapped_key = NULL, content = NULL
		WHERE state = ? AND expires <= ? RETURNING id`), StateExpired, StateActive, ts(now))
	if err != nil {
		return nil, fmt.Errorf("storage: expire messages: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("storage: expire messages: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: expire messages: %w", err)
	}
	return ids, nil
}

func (s *sqlStore) Account(ctx context.Context, addr string) (*Account, error) {
	a := Account{Addr: addr}
	var updated int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT password_hash, updated FROM portal_accounts WHERE addr = ?`), addr).Scan(&a.PasswordHash, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: read account: %w", err)
	}
	a.Updated = fromTS(updated)
	return &a, nil
}

func (s *sqlStore) SetPassword(ctx context.Context, addr, hash string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO portal_accounts (addr, password_hash, updated) VALUES (?, ?, ?)
		ON CONFLICT (addr) DO UPDATE SET password_hash = excluded.password_hash, updated = excluded.updated`),
		addr, hash, ts(now))
	if err != nil {
		return fmt.Errorf("storage: set password: %w", err)
	}
	return nil
}

func (s *sqlStore) CreateToken(ctx context.Context, t *Token) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO portal_tokens (hash, kind, message_id, addr, expires) VALUES (?, ?, ?, ?, ?)`),
		t.Hash, t.Kind, t.MessageID, t.Addr, ts(t.Expires))
	if err != nil {
		return fmt.Errorf("storage: create token: %w", err)
	}
	return nil
}

func (s *sqlStore) Token(ctx context.Context, hash []byte) (*Token, error) {
	t := Token{Hash: hash}
	var expires int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT kind, message_id, addr, expires FROM portal_tokens WHERE hash = ?`), hash).
		Scan(&t.Kind, &t.MessageID, &t.Addr, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: read token: %w", err)
	}
	t.Expires = fromTS(expires)
	return &t, nil
}

func (s *sqlStore) DeleteToken(ctx context.Context, hash []byte) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM portal_tokens WHERE hash = ?`), hash); err != nil {
		return fmt.Errorf("storage: delete token: %w", err)
	}
	return nil
}

func (s *sqlStore) CreateSession(ctx context.Context, se *Session) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO portal_sessions (hash, addr, expires) VALUES (?, ?, ?)`),
		se.Hash, se.Addr, ts(se.Expires))
	if err != nil {
		return fmt.Errorf("storage: create session: %w", err)
	}
	return nil
}

func (s *sqlStore) Session(ctx context.Context, hash []byte) (*Session, error) {
	se := Session{Hash: hash}
	var expires int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT addr, expires FROM portal_sessions WHERE hash = ?`), hash).Scan(&se.Addr, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: read session: %w", err)
	}
	se.Expires = fromTS(expires)
	return &se, nil
}

func (s *sqlStore) DeleteSession(ctx context.Context, hash []byte) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM portal_sessions WHERE hash = ?`), hash); err != nil {
		return fmt.Errorf("storage: delete session: %w", err)
	}
	return nil
}

func (s *sqlStore) DeleteSessions(ctx context.Context, addr string) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM portal_sessions WHERE addr = ?`), addr); err != nil {
		return fmt.Errorf("storage: delete sessions: %w", err)
	}
	return nil
}

func (s *sqlStore) Attempts(ctx context.Context, key string) (Attempts, error) {
	var a Attempts
	var until int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT failures, locked_until FROM portal_attempts WHERE key = ?`), key).Scan(&a.Failures, &until)
	if errors.Is(err, sql.ErrNoRows) {
		return Attempts{}, nil
	}
	if err != nil {
		return Attempts{}, fmt.Errorf("storage: read attempts: %w", err)
	}
	a.LockedUntil = fromTS(until)
	return a, nil
}

func (s *sqlStore) AddFailure(ctx context.Context, key string, now time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO portal_attempts (key, failures, locked_until, updated) VALUES (?, 1, 0, ?)
		ON CONFLICT (key) DO UPDATE SET failures = portal_attempts.failures + 1, updated = excluded.updated
		RETURNING failures`), key, ts(now)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("storage: count failure: %w", err)
	}
	return n, nil
}

func (s *sqlStore) Lock(ctx context.Context, key string, until time.Time) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO portal_attempts (key, failures, locked_until, updated) VALUES (?, 0, ?, ?)
		ON CONFLICT (key) DO UPDATE SET failures = 0, locked_until = excluded.locked_until, updated = excluded.updated`),
		key, ts(until), ts(until))
	if err != nil {
		return fmt.Errorf("storage: lock: %w", err)
	}
	return nil
}

func (s *sqlStore) ClearFailures(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM portal_attempts WHERE key = ?`), key); err != nil {
		return fmt.Errorf("storage: clear failures: %w", err)
	}
	return nil
}

// staleAttempts is how long an unlocked failure counter is kept after its
// last change.
const staleAttempts = 24 * time.Hour

func (s *sqlStore) Purge(ctx context.Context, now time.Time) error {
	n := ts(now)
	for _, st := range []struct {
		query string
		args  []any
	}{
		{`DELETE FROM portal_tokens WHERE expires <= ?`, []any{n}},
		{`DELETE FROM portal_sessions WHERE expires <= ?`, []any{n}},
		{`DELETE FROM portal_attempts WHERE locked_until <= ? AND updated <= ?`, []any{n, ts(now.Add(-staleAttempts))}},
	} {
		if _, err := s.db.ExecContext(ctx, s.q(st.query), st.args...); err != nil {
			return fmt.Errorf("storage: purge: %w", err)
		}
	}
	return nil
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("storage: %s: %w", s.d.name, err)
	}
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("storage: %s: %w", s.d.name, err)
	}
	return nil
}

func (s *sqlStore) Close() error { return s.db.Close() }
