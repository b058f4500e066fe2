package portal

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/postern-mail/postern/gateway/storage"
	"github.com/postern-mail/postern/test/support/pgtest"
)

// The portal's handler tests run against both stores (SPEC §9): embedded
// SQLite and a real PostgreSQL. The PostgreSQL cluster is started once
// for the package, on the first test that needs it, and stopped by
// TestMain; every test gets a database of its own.

// backend names a storage driver the tests run against.
type backend string

const (
	sqliteBackend   backend = "sqlite"
	postgresBackend backend = "postgres"
)

var backends = []backend{sqliteBackend, postgresBackend}

// eachStore runs test once per backend, as sub-tests named after it.
func eachStore(t *testing.T, test func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) { test(t, b) })
	}
}

// testStore is a fresh, empty store and the files that hold its data at
// rest (nil when they cannot be read, e.g. an external PostgreSQL).
type testStore struct {
	storage.Store
	atRest func(t *testing.T) []string
}

func openStore(t *testing.T, b backend) testStore {
	t.Helper()
	ctx := context.Background()
	switch b {
	case sqliteBackend:
		path := filepath.Join(t.TempDir(), "postern.db")
		st, err := storage.Open(ctx, "sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return testStore{Store: st, atRest: func(*testing.T) []string { return []string{path, path + "-wal"} }}
	case postgresBackend:
		dsn := testPG.NewDatabase(t)
		st, err := storage.Open(ctx, "postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return testStore{Store: st, atRest: func(t *testing.T) []string { return testPG.DataFiles(t) }}
	}
	t.Fatalf("unknown backend %q", b)
	return testStore{}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testPG.Stop()
	os.Exit(code)
}

// testPG is the package's PostgreSQL server (see internal/pgtest),
// started on first use.
var testPG pgtest.Cluster
