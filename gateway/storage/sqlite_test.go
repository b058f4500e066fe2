package storage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openSQLiteTest(t *testing.T) Store {
	t.Helper()
	s, err := Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "sub", "postern.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLiteConformance(t *testing.T) { testConformance(t, openSQLiteTest) }

func TestSQLiteReopenKeepsDataAndSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "p.db")
	s, err := Open(ctx, "sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword(ctx, "a@x", "h", fromTS(1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want 0600", fi.Mode().Perm())
	}
	s, err = Open(ctx, "sqlite", path) // migrations must not run twice
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a, err := s.Account(ctx, "a@x"); err != nil || a.PasswordHash != "h" {
		t.Fatalf("after reopen: %+v, %v", a, err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, "mysql", "x"); err == nil {
		t.Error("unknown driver accepted")
	}
	if _, err := Open(ctx, "sqlite", ""); err == nil {
		t.Error("empty sqlite dsn accepted")
	}
	if _, err := Open(ctx, "postgres", "postgres://u:secretpw@[bad"); err == nil {
		t.Error("bad postgres dsn accepted")
	} else if strings.Contains(err.Error(), "secretpw") {
		t.Errorf("error leaks the dsn password: %v", err)
	}
}
