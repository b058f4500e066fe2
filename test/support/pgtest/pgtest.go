// Package pgtest gives tests a PostgreSQL server: POSTERN_TEST_PG_DSN when
// set, else a throwaway cluster in a temp dir on a loopback port (initdb +
// pg_ctl from Debian's postgresql package), run as an unprivileged user
// when the tests run as root (initdb refuses root). Tests skip only when
// no server can be had because the binaries are absent.
package pgtest

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
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers database/sql driver "pgx"
)

// EnvDSN names the environment variable holding the DSN of an external
// server to use instead of a throwaway cluster.
const EnvDSN = "POSTERN_TEST_PG_DSN"

// errNoBinaries means no server can be had because the binaries are
// absent: the PostgreSQL tests skip (CI installs postgresql).
var errNoBinaries = errors.New("PostgreSQL binaries not installed (apt-get install -y postgresql) and " + EnvDSN + " unset")

// Cluster is a PostgreSQL server for tests. The zero value is ready to
// use: it starts on first use (DSN, NewDatabase) and runs until Stop, so
// a package can share one cluster across its tests and stop it from
// TestMain. Start ties a cluster to one test instead.
type Cluster struct {
	once  sync.Once
	err   error
	dsn   string
	admin *sql.DB
	seq   atomic.Int64

	bin, base, data, runAs string
	started                bool
}

// Start starts a cluster now and stops it when tb and its sub-tests end.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	c := &Cluster{}
	tb.Cleanup(c.Stop)
	c.ensure(tb)
	return c
}

// ensure starts the cluster on first use; it skips tb when the binaries
// are absent and fails it when the server cannot be started.
func (c *Cluster) ensure(tb testing.TB) {
	tb.Helper()
	c.once.Do(func() { c.err = c.start() })
	if errors.Is(c.err, errNoBinaries) {
		tb.Skip(c.err)
	}
	if c.err != nil {
		tb.Fatalf("start PostgreSQL: %v", c.err)
	}
}

// DSN is the DSN of the server's "postgres" database, starting the
// cluster if need be.
func (c *Cluster) DSN(tb testing.TB) string {
	tb.Helper()
	c.ensure(tb)
	return c.dsn
}

// NewDatabase creates a fresh, empty database on the server (starting
// the cluster if need be) and returns its DSN. Names are unique across
// processes, so that concurrent test binaries can share an external
// server.
func (c *Cluster) NewDatabase(tb testing.TB) string {
	tb.Helper()
	c.ensure(tb)
	if !strings.Contains(c.dsn, "/postgres?") {
		tb.Fatalf("cannot derive a database DSN from %q: it must name database postgres and carry parameters (…/postgres?…)", c.dsn)
	}
	name := fmt.Sprintf("postern_t%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, c.seq.Add(1))
	if _, err := c.admin.ExecContext(context.Background(), "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database: %v", err)
	}
	return strings.Replace(c.dsn, "/postgres?", "/"+name+"?", 1)
}

// DataDir is the cluster's data directory; "" for an external server or
// a cluster not yet started.
func (c *Cluster) DataDir() string { return c.data }

// DataFiles checkpoints the cluster (heap pages to disk; the WAL is
// written at every commit) and lists every regular file of its data
// directory, for scans of what is at rest. It is nil for an external
// server (POSTERN_TEST_PG_DSN), whose files cannot be read.
func (c *Cluster) DataFiles(tb testing.TB) []string {
	tb.Helper()
	c.ensure(tb)
	if c.data == "" {
		tb.Log("external PostgreSQL (" + EnvDSN + "): data files not inspected")
		return nil
	}
	if _, err := c.admin.ExecContext(context.Background(), "CHECKPOINT"); err != nil {
		tb.Fatalf("checkpoint: %v", err)
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
		tb.Fatalf("list PostgreSQL data files: %v", err)
	}
	return out
}

// Stop closes the admin connection, stops a cluster this package started
// and removes its files. It is safe to call on a cluster never started.
func (c *Cluster) Stop() {
	if c.admin != nil {
		c.admin.Close()
		c.admin = nil
	}
	if c.started {
		_ = c.command("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop").Run()
		c.started = false
	}
	if c.base != "" {
		os.RemoveAll(c.base)
		c.base = ""
	}
}

func (c *Cluster) start() error {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		c.dsn = dsn
		return c.connect()
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		return errNoBinaries
	}
	c.bin = filepath.Dir(bins[len(bins)-1])
	base, err := os.MkdirTemp("", "postern-pg-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
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
			return fmt.Errorf("chmod %s: %w", base, err)
		}
		if err := os.Chown(base, uid, gid); err != nil {
			return fmt.Errorf("chown %s to %s: %w", base, c.runAs, err)
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
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

func (c *Cluster) connect() error {
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

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	if c.runAs == "" {
		return exec.Command(path, args...)
	}
	return exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
}

func (c *Cluster) run(name string, args ...string) error {
	if out, err := c.command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}

// freePort is a loopback TCP port free at the time of the call.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
