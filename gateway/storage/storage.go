// Package storage is postern's shared state for the secure web portal
// (SPEC §5, §9): portal messages (sealed by the portal package, never
// plaintext here), recipient accounts, link tokens and session ids (stored
// as hashes only), and login-failure counters. Two implementations share
// one SQL code path: embedded SQLite (modernc.org/sqlite, no cgo) for a
// single node and PostgreSQL (pgx) for several nodes.
package storage

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// Message states.
const (
	StateActive  = "active"
	StateRevoked = "revoked"
	StateExpired = "expired"
)

// Message is a portal message. Content and WrappedKey are opaque to the
// store (sealed by the portal); both are nil once the message is revoked
// or expired.
type Message struct {
	ID         string
	Rcpt       string // the recipient address, lower-cased
	Created    time.Time
	Expires    time.Time
	State      string // StateActive, StateRevoked or StateExpired
	WrappedKey []byte
	Content    []byte
}

// Account is one recipient address's portal account.
type Account struct {
	Addr         string
	PasswordHash string // PHC-style string; "" when no password was set yet
	Updated      time.Time
}

// Token kinds.
const (
	TokenLink  = "link"  // the link in a notice
	TokenReset = "reset" // a "forgot password" link
)

// Token is an emailed link token. Only its hash is stored.
type Token struct {
	Hash      []byte
	Kind      string // TokenLink or TokenReset
	MessageID string
	Addr      string
	Expires   time.Time
}

// Session is a logged-in browser session. Only the hash of its id is
// stored.
type Session struct {
	Hash    []byte
	Addr    string
	Expires time.Time
}

// Attempts is the login-failure state of one key (an address or a source
// IP).
type Attempts struct {
	Failures    int       // consecutive failures since the last success or lock
	LockedUntil time.Time // zero when not locked
}

// Store is the storage the portal needs. Every method is safe for
// concurrent use, also from several processes sharing one database.
type Store interface {
	// CreateMessage inserts m unless a message with m.ID exists; it
	// reports whether it inserted (false: the existing row is unchanged).
	CreateMessage(ctx context.Context, m *Message) (bool, error)
	// Message returns the message with id, including its content.
	Message(ctx context.Context, id string) (*Message, error)
	// RevokeMessage deletes the content of message id and marks it
	// revoked. ErrNotFound when unknown.
	RevokeMessage(ctx context.Context, id string) error
	// ExpireMessages deletes the content of the active messages whose
	// expiry is not after now and returns their ids.
	ExpireMessages(ctx context.Context, now time.Time) ([]string, error)

	// Account returns the account of addr; ErrNotFound when none.
	Account(ctx context.Context, addr string) (*Account, error)
	// SetPassword creates or updates the account of addr.
	SetPassword(ctx context.Context, addr, hash string, now time.Time) error

	CreateToken(ctx context.Context, t *Token) error
	// Token returns the token with this hash (expired or not).
	Token(ctx context.Context, hash []byte) (*Token, error)
	DeleteToken(ctx context.Context, hash []byte) error

	CreateSession(ctx context.Context, s *Session) error
	// Session returns the session with this hash (expired or not).
	Session(ctx context.Context, hash []byte) (*Session, error)
	DeleteSession(ctx context.Context, hash []byte) error
	// DeleteSessions ends every session of addr (after a password reset).
	DeleteSessions(ctx context.Context, addr string) error

	// Attempts returns the failure state of key (zero when none).
	Attempts(ctx context.Context, key string) (Attempts, error)
	// AddFailure atomically counts one more consecutive failure for key
	// and returns the new count.
	AddFailure(ctx context.Context, key string, now time.Time) (int, error)
	// Lock locks key until the given time and resets its count.
	Lock(ctx context.Context, key string, until time.Time) error
	// ClearFailures forgets key's failures (after a success).
	ClearFailures(ctx context.Context, key string) error

	// Purge deletes expired tokens and sessions and stale failure
	// counters.
	Purge(ctx context.Context, now time.Time) error
	// Ping checks that the database answers (for /readyz).
	Ping(ctx context.Context) error
	Close() error
}

// Open opens (creating and migrating as needed) the store for driver
// "sqlite" (dsn: a file path) or "postgres" (dsn: a libpq URL or
// key=value string).
func Open(ctx context.Context, driver, dsn string) (Store, error) {
	switch driver {
	case "sqlite", "":
		return openSQLite(ctx, dsn)
	case "postgres":
		return openPostgres(ctx, dsn)
	}
	return nil, fmt.Errorf("storage: unknown driver %q (want sqlite or postgres)", driver)
}
