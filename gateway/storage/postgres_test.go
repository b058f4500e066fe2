package storage

import (
	"context"
	"testing"

	"github.com/postern-mail/postern/test/support/pgtest"
)

// TestPostgresConformance runs the shared suite against a real server
// (see internal/pgtest), each sub-test in a database of its own.
func TestPostgresConformance(t *testing.T) {
	pg := pgtest.Start(t)
	dsn := pg.DSN(t)
	ctx := context.Background()
	admin, err := Open(ctx, "postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	testConformance(t, func(t *testing.T) Store {
		s, err := Open(ctx, "postgres", pg.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
	// Opening again (another node starting) must not re-run migrations.
	again, err := Open(ctx, "postgres", dsn)
	if err != nil {
		t.Fatalf("second open: %v", err)
	}
	again.Close()
}
