package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pgServer is a throwaway PostgreSQL cluster started by the tests.
type pgServer struct {
	bin, dir, runAs string
	port            int
}

// startPostgres returns the DSN of a PostgreSQL server for tests:
// POSTERN_TEST_PG_DSN when set, else a throwaway cluster in a temp dir on a
// loopback port (initdb + pg_ctl from Debian's postgresql package), run as
// an unprivileged user when the test runs as root (initdb refuses root).
// It skips only when no server can be had because the binaries are absent.
func startPostgres(t *testing.T) string {
	t.Helper()
	if dsn := os.Getenv("POSTERN_TEST_PG_DSN"); dsn != "" {
		return dsn
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		t.Skip("PostgreSQL binaries not installed (apt-get install -y postgresql) and POSTERN_TEST_PG_DSN unset")
	}
	srv := &pgServer{bin: filepath.Dir(bins[len(bins)-1])}
	base, err := os.MkdirTemp("", "postern-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	srv.dir = filepath.Join(base, "data")
	if os.Geteuid() == 0 {
		srv.runAs = "postgres"
		u, err := user.Lookup(srv.runAs)
		if err != nil {
			srv.runAs = "nobody"
			if u, err = user.Lookup(srv.runAs); err != nil {
				t.Fatalf("running as root and neither user postgres nor nobody exists: %v", err)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	srv.port = freePort(t)
	srv.run(t, "initdb", "-D", srv.dir, "-A", "trust", "-U", "postern", "--no-sync", "-E", "UTF8")
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off", srv.port, base)
	srv.run(t, "pg_ctl", "-D", srv.dir, "-o", opts, "-l", filepath.Join(base, "log"), "-w", "-t", "60", "start")
	t.Cleanup(func() { srv.runQuiet("pg_ctl", "-D", srv.dir, "-m", "immediate", "-w", "stop") })
	return fmt.Sprintf("postgres://postern@127.0.0.1:%d/postgres?sslmode=disable", srv.port)
}

func (s *pgServer) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, name)
	if s.runAs == "" {
		return exec.Command(path, args...)
	}
	return exec.Command("runuser", append([]string{"-u", s.runAs, "--", path}, args...)...)
}

func (s *pgServer) run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := s.command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}

func (s *pgServer) runQuiet(name string, args ...string) { _ = s.command(name, args...).Run() }

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var pgDBSeq atomic.Int64

// TestPostgresConformance runs the shared suite against a real server,
// each sub-test in a database of its own.
func TestPostgresConformance(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	admin, err := Open(ctx, "postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	db := admin.(*sqlStore).db
	testConformance(t, func(t *testing.T) Store {
		name := fmt.Sprintf("postern_t%d_%d", time.Now().UnixNano()%1e6, pgDBSeq.Add(1))
		if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
			t.Fatal(err)
		}
		s, err := Open(ctx, "postgres", strings.Replace(dsn, "/postgres?", "/"+name+"?", 1))
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
