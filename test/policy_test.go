package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPolicyReload: an invalid policy is refused on SIGHUP and on file
// change (counted as an error, the running policy stays); a valid one is
// taken (SPEC §2).
func TestPolicyReload(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipTLS, "mx.tls.example", true)
	w.start()
	metrics := func() string { return httpGet(t, "http://"+w.admin+"/metrics") }
	polPath := filepath.Join(w.dir, "policy.yaml")

	// A broken policy: unknown method. Written in place, then SIGHUP.
	if err := os.WriteFile(polPath, []byte("methods: [tls, carrier-pigeon]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "a counted reload error", func() bool {
		return !strings.Contains(metrics(), `postern_policy_reloads_total{result="error"} 0`)
	})
	// The running policy still works.
	if out, err := w.swaks("--from", "alice@example.org", "--to", "bob@tls.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "delivery under the old policy", func() bool { return len(mx.messages()) == 1 })
	b, _ := os.ReadFile(w.logFile)
	if !strings.Contains(string(b), "policy.yaml:1:") {
		t.Errorf("the refused reload was not logged with file:line")
	}

	// A valid policy replacing the file by rename (as editors do) is picked
	// up without a signal: tls.example now requires a rule's plan [pgp],
	// which is not available, so the next message is deferred, not sent.
	tmp := polPath + ".new"
	os.WriteFile(tmp, []byte("methods: [tls]\nrules:\n  - name: pgp-only\n    when: {recipient_domain: [tls.example]}\n    methods: [pgp]\n"), 0o644)
	if err := os.Rename(tmp, polPath); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a successful reload", func() bool {
		return strings.Contains(metrics(), `postern_policy_reloads_total{result="ok"} 1`)
	})
	if out, err := w.swaks("--from", "alice@example.org", "--to", "carl@tls.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "the decision under the new policy", func() bool {
		d := w.findAudit("decision", "carl@tls.example", "")
		return d != nil && d["rule"] == "pgp-only"
	})
	time.Sleep(time.Second)
	if len(mx.messages()) != 1 {
		t.Fatal("a recipient whose plan is [pgp] without a key was sent over TLS")
	}
}

func TestCheckAndExplain(t *testing.T) {
	w := newWorld(t)
	cfg := w.writeConfig()
	polPath := filepath.Join(w.dir, "policy.yaml")
	os.WriteFile(polPath, []byte("methods: [tls]\nrules:\n  - name: x\n    when: {subject_regex: ['(']}\n    methods: [tls]\n"), 0o644)
	out, err := w.postern("check", "-config", cfg)
	if err == nil || !strings.Contains(out, "policy.yaml:4:") {
		t.Fatalf("check on a bad regex: want exit 1 and policy.yaml:4:, got %v\n%s", err, out)
	}
	os.WriteFile(cfg+".bad", []byte("smtp:\n  lisen: x\n"), 0o644)
	out, err = w.postern("check", "-config", cfg+".bad")
	if err == nil || !strings.Contains(out, "postern.yaml.bad:2:") {
		t.Fatalf("check on an unknown key: %v\n%s", err, out)
	}

	os.WriteFile(polPath, []byte(`methods: [smime, pgp, tls, portal]
rules:
  - name: confidential
    when: {subject_contains: ["[secure]"]}
    methods: [smime, pgp, portal]
`), 0o644)
	if out, err := w.postern("check", "-config", cfg); err != nil {
		t.Fatalf("check on a good config: %v\n%s", err, out)
	}
	out, err = w.postern("explain", "-config", cfg, "-from", "a@example.org", "-to", "b@tls.example", "-to", "c@tls.example",
		"-subject", "[secure] results", "-json")
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	var ds []struct {
		Rcpt, Rule, Method string
		Plan               []string
		Considered         []struct {
			Method string
			OK     bool
			Reason string
		}
	}
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("explain -json is not the SPEC shape: %v\n%s", err, out)
	}
	if len(ds) != 2 || ds[0].Rule != "confidential" || ds[0].Method != "" || strings.Join(ds[0].Plan, ",") != "smime,pgp,portal" ||
		len(ds[0].Considered) != 3 || ds[0].Considered[0].Reason == "" {
		t.Fatalf("explain: %+v", ds)
	}
	out, err = w.postern("explain", "-config", cfg, "-from", "a@example.org", "-to", "b@tls.example")
	if err != nil || !strings.Contains(out, "default") || !strings.Contains(out, "tls") {
		t.Fatalf("explain (text): %v\n%s", err, out)
	}
}
