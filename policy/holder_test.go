package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replace writes data to a temporary file and renames it over path, as
// editors and deployment tools do.
func replace(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestHolderReload(t *testing.T) {
	var zero Holder
	if zero.Get() != nil {
		t.Error("zero Holder holds a policy")
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "methods: [pgp, portal]\n")
	h := NewHolder(Default())
	if err := h.Reload(path); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	good := h.Get()
	if good.File != path || good.Methods[0] != PGP {
		t.Fatalf("after reload: %+v", good)
	}

	writeFile(t, path, "methods: [pgp, portal]\nrules:\n  - name: x\n    methods: [carrier-pigeon]\n")
	err := h.Reload(path)
	if err == nil {
		t.Fatal("bad reload succeeded")
	}
	if want := path + `:4: rule "x": methods: unknown method "carrier-pigeon"`; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
	if h.Get() != good {
		t.Error("a bad reload replaced the running policy")
	}
	if err := h.Reload(filepath.Join(t.TempDir(), "gone.yaml")); err == nil || h.Get() != good {
		t.Errorf("reload of a missing file: %v; policy kept: %v", err, h.Get() == good)
	}
	if err := h.Reload(""); err != nil || h.Get().File != "" {
		t.Errorf("Reload(\"\") = %v, %+v", err, h.Get())
	}
}

func TestHolderConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "methods: [tls]\n")
	h := NewHolder(nil)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				if p := h.Get(); p != nil {
					p.Decide(context.Background(), nil, "a@x.example", avail(TLS))
				}
			}
		}()
	}
	for j := 0; j < 20; j++ {
		if err := h.Reload(path); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
}

// watchFired waits for a signal on ch within d.
func watchFired(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func startWatch(t *testing.T, paths []string) (<-chan struct{}, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan struct{}, 16)
	if err := Watch(ctx, paths, 50*time.Millisecond, func() { ch <- struct{}{} }); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	return ch, cancel
}

func TestWatchRenameReplace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, "methods: [tls]\n")
	ch, cancel := startWatch(t, []string{path})

	// An unrelated file in the same directory is not a change.
	writeFile(t, filepath.Join(dir, "notes.txt"), "hello")
	if watchFired(ch, 400*time.Millisecond) {
		t.Error("fired for an unrelated file")
	}

	replace(t, path, "methods: [pgp, tls]\n")
	if !watchFired(ch, 5*time.Second) {
		t.Fatal("no call after a rename-replace")
	}
	// Debounced: one burst, one call.
	if watchFired(ch, 300*time.Millisecond) {
		t.Error("a second call for one replacement")
	}

	// A burst of writes gives one call.
	for i := 0; i < 5; i++ {
		writeFile(t, path, strings.Repeat("#", i)+"\nmethods: [tls]\n")
		time.Sleep(10 * time.Millisecond)
	}
	if !watchFired(ch, 5*time.Second) {
		t.Fatal("no call after writes")
	}
	if watchFired(ch, 300*time.Millisecond) {
		t.Error("more than one call for a burst")
	}

	cancel()
	time.Sleep(100 * time.Millisecond)
	replace(t, path, "methods: [portal]\n")
	if watchFired(ch, 400*time.Millisecond) {
		t.Error("fired after ctx was done")
	}
}

func TestWatchSymlinkSwap(t *testing.T) {
	// A Kubernetes ConfigMap volume: policy.yaml -> ..data/policy.yaml,
	// ..data -> ..v1; an update swaps ..data to ..v2 by rename.
	dir := t.TempDir()
	for _, v := range []string{"..v1", "..v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "..v1", "policy.yaml"), "methods: [tls]\n")
	writeFile(t, filepath.Join(dir, "..v2", "policy.yaml"), "methods: [pgp]\n")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("..v1", filepath.Join(dir, "..data")))
	must(os.Symlink(filepath.Join("..data", "policy.yaml"), filepath.Join(dir, "policy.yaml")))
	ch, _ := startWatch(t, []string{filepath.Join(dir, "policy.yaml")})

	must(os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	if !watchFired(ch, 5*time.Second) {
		t.Fatal("no call after the ..data swap")
	}
}

func TestWatchDirectoryAndMissingFile(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "pgp")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(dir, "later.yaml")
	ch, _ := startWatch(t, []string{keys, later})

	writeFile(t, filepath.Join(keys, "bob.asc"), "key")
	if !watchFired(ch, 5*time.Second) {
		t.Fatal("no call after a file appeared in a watched directory")
	}
	writeFile(t, later, "methods: [tls]\n")
	if !watchFired(ch, 5*time.Second) {
		t.Fatal("no call after a missing file was created")
	}

	if err := Watch(context.Background(), []string{filepath.Join(dir, "no", "such", "dir", "p.yaml")}, time.Second, func() {}); err == nil {
		t.Error("Watch of a path in a missing directory succeeded")
	}
}
