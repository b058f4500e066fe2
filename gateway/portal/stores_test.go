package portal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers database/sql driver "pgx"

	"github.com/postern-mail/postern/gateway/storage"
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
		dsn := testPG.newDatabase(t)
		st, err := storage.Open(ctx, "postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return testStore{Store: st, atRest: testPG.files}
	}
	t.Fatalf("unknown backend %q", b)
	return testStore{}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testPG.stop()
	os.Exit(code)
}

// testPG is the package's PostgreSQL server, started on first use.
var testPG pgCluster

// errNoPostgres means no server can be had because the binaries are
// absent: the PostgreSQL tests skip (CI installs postgresql).
var errNoPostgres = errors.New("PostgreSQL binaries not installed (apt-get install -y postgresql) and POSTERN_TEST_PG_DSN unset")

// pgCluster is POSTERN_TEST_PG_DSN when set, else a throwaway cluster in
// a temp dir on a loopback port (initdb + pg_ctl from Debian's postgresql
// package), run as an unprivileged user when the tests run as root
// (initdb refuses root). Same logic as gateway/storage/postgres_test.go.
type pgCluster struct {
	once  sync.Once
	err   error
	dsn   string
	admin *sql.DB
	seq   atomic.Int64

	bin, base, data, runAs string
	started                bool
}

func (c *pgCluster) newDatabase(t *testing.T) string {
	t.Helper()
	c.once.Do(func() { c.err = c.start() })
	if errors.Is(c.err, errNoPostgres) {
		t.Skip(c.err)
	}
	if c.err != nil {
		t.Fatalf("start PostgreSQL: %v", c.err)
	}
	name := fmt.Sprintf("portal_t%d_%d", os.Getpid(), c.seq.Add(1))
	if _, err := c.admin.ExecContext(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return strings.Replace(c.dsn, "/postgres?", "/"+name+"?", 1)
}

func (c *pgCluster) start() error {
	if dsn := os.Getenv("POSTERN_TEST_PG_DSN"); dsn != "" {
		c.dsn = dsn
		return c.connect()
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		return errNoPostgres
	}
	c.bin = filepath.Dir(bins[len(bins)-1])
	base, err := os.MkdirTemp("", "postern-portal-pg-")
	if err != nil {
		return err
	}
	c.base, c.data = base, filepath.Join(base, "data")
	if os.Geteuid() == 0 {
		c.runAs = "postgres"
		u, err := user.Lookup(c.runAs)
		if err != nil {
			c.runAs = "nobody"
			if u, err = user.Lookup(c.runAs); err != nil {
				return fmt.Errorf("running as root and neither user postgres nor nobody exists: %w", err)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o755); err != nil {
			return err
		}
		if err := os.Chown(base, uid, gid); err != nil {
			return err
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := c.run("initdb", "-D", c.data, "-A", "trust", "-U", "postern", "--no-sync", "-E", "UTF8"); err != nil {
		return err
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off", port, base)
	if err := c.run("pg_ctl", "-D", c.data, "-o", opts, "-l", filepath.Join(base, "log"), "-w", "-t", "60", "start"); err != nil {
		return err
	}
	c.started = true
	c.dsn = fmt.Sprintf("postgres://postern@127.0.0.1:%d/postgres?sslmode=disable", port)
	return c.connect()
}

func (c *pgCluster) connect() error {
	db, err := sql.Open("pgx", c.dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := db.PingContext(context.Background()); err != nil {
		db.Close()
		return fmt.Errorf("connect: %w", err)
	}
	c.admin = db
	return nil
}

// files checkpoints the cluster (heap pages to disk; the WAL is written
// at every commit) and lists every file of its data directory.
func (c *pgCluster) files(t *testing.T) []string {
	t.Helper()
	if c.data == "" {
		t.Log("external PostgreSQL (POSTERN_TEST_PG_DSN): data files not inspected")
		return nil
	}
	if _, err := c.admin.ExecContext(context.Background(), "CHECKPOINT"); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	var out []string
	err := filepath.WalkDir(c.data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list PostgreSQL data files: %v", err)
	}
	return out
}

func (c *pgCluster) stop() {
	if c.admin != nil {
		c.admin.Close()
	}
	if c.started {
		_ = c.command("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop").Run()
	}
	if c.base != "" {
		os.RemoveAll(c.base)
	}
}

func (c *pgCluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	if c.runAs == "" {
		return exec.Command(path, args...)
	}
	return exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
}

func (c *pgCluster) run(name string, args ...string) error {
	if out, err := c.command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}
