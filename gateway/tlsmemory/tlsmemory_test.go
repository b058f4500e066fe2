package tlsmemory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestObserve(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "tls.json")
	m, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if note, err := m.Observe("Dest.Test.", Of(true, true, "pkix"), "pkix", now); note != "" || err != nil {
		t.Fatalf("first: %q %v", note, err)
	}
	note, err := m.Observe("dest.test", Of(true, false, "none"), "none", now)
	if err != nil || !strings.Contains(note, "previously did verified TLS (pkix)") || !strings.Contains(note, "now encrypt only") {
		t.Errorf("downgrade note %q, %v", note, err)
	}
	if note, _ := m.Observe("dest.test", Of(false, false, ""), "none", now); !strings.Contains(note, "now none only") {
		t.Errorf("plaintext note %q", note)
	}
	if note, _ := m.Observe("dest.test", Of(true, true, "dane"), "dane", now); note != "" {
		t.Errorf("upgrade noted as downgrade: %q", note)
	}
	m2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := m2.Best("dest.test"); !ok || l != Policy {
		t.Errorf("reloaded best %v %v, want Policy", l, ok)
	}
	if note, _ := m2.Observe("dest.test", PKIX, "pkix", now); !strings.Contains(note, "dane") {
		t.Errorf("after reload: %q", note)
	}
	if err := os.WriteFile(path, []byte("{bad"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil {
		t.Error("corrupt file accepted")
	}
}
