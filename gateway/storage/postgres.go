package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// migrateLockID is the pg_advisory_xact_lock key serialising migrations
// across nodes ("postern" in ASCII).
const migrateLockID = 0x706f737465726e

// openPostgres connects with pgx (through its database/sql adapter) and
// migrates the schema.
func openPostgres(ctx context.Context, dsn string) (Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The error may quote the DSN and with it a password: keep it out.
		return nil, fmt.Errorf("storage: postgres: cannot parse dsn")
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(16)
	s := &sqlStore{db: db, d: postgresDialect}
	if err := s.Ping(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.migrate(ctx, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", migrateLockID)); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}
