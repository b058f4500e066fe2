package test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPortalFallbackThroughBinary: a [secure] message to a recipient with
// no key goes to the portal: the recipient's MX gets only a notice naming
// the sender, the link opens the portal, nothing readable is in the
// database, and `postern portal revoke` (while serve runs) makes it 410.
func TestPortalFallbackThroughBinary(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipPlain, "mx.plain.example", false)
	key := make([]byte, 32)
	rand.Read(key)
	os.WriteFile(filepath.Join(w.dir, "master.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
	portalPort := freePort(t)
	w.keys = "" // keys section default (no WKD/VKS)
	w.policy = "methods: [smime, pgp, tls, portal]\nrules:\n  - name: confidential\n    when: {subject_contains: [\"[secure]\"]}\n    methods: [smime, pgp, portal]\n    strip_subject_tag: true\n"
	w.portal = "portal:\n  listen: \"127.0.0.1:" + itoa(portalPort) + "\"\n  base_url: \"http://127.0.0.1:" + itoa(portalPort) + "\"\n  master_key_file: master.key\n  notify_from: secure-mail@example.org\n"
	w.start()
	const marker = "PORTAL-BODY-MARKER-7731"
	if out, err := w.swaks("--from", "doctor@example.org", "--to", "dave@plain.example", "--header", "Subject: [secure] biopsy SUBJECT-MARKER", "--body", marker); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the portal notice", func() bool { return len(mx.messages()) == 1 })
	notice := mx.messages()[0].Data
	if bytes.Contains(notice, []byte(marker)) || bytes.Contains(notice, []byte("SUBJECT-MARKER")) {
		t.Fatalf("the notice leaks the body or subject:\n%s", notice)
	}
	if !bytes.Contains(notice, []byte("doctor@example.org")) {
		t.Fatalf("the notice does not name the sender:\n%s", notice)
	}
	link := regexp.MustCompile(`http://127\.0\.0\.1:\d+/m/[A-Za-z0-9_-]+`).Find(notice)
	if link == nil {
		t.Fatalf("no portal link in the notice:\n%s", notice)
	}
	resp, err := http.Get(string(link))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("portal link: %s", resp.Status)
	}
	dec := w.findAudit("decision", "dave@plain.example", "")
	id, _ := dec["portal_id"].(string)
	if dec["method"] != "portal" || id == "" {
		t.Fatalf("decision record lacks the portal method/id: %v", dec)
	}
	// Nothing readable at rest.
	db, _ := os.ReadFile(filepath.Join(w.dir, "var", "postern.db"))
	wal, _ := os.ReadFile(filepath.Join(w.dir, "var", "postern.db-wal"))
	if len(db)+len(wal) == 0 {
		t.Fatal("no portal database found")
	}
	if bytes.Contains(db, []byte(marker)) || bytes.Contains(wal, []byte(marker)) || bytes.Contains(wal, []byte("SUBJECT-MARKER")) {
		t.Fatal("the portal database holds the message in plaintext")
	}
	out, err := w.postern("portal", "revoke", "-config", filepath.Join(w.dir, "postern.yaml"), id)
	if err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("portal revoke: %v\n%s", err, out)
	}
	resp, err = http.Get(string(link))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("after revoke: %s, want 410", resp.Status)
	}
	waitFor(t, 5*time.Second, "the revoke audit record", func() bool {
		for _, r := range w.audit() {
			if r["event"] == "portal" && r["portal_id"] == id && strings.HasPrefix(r["reason"].(string), "revoked") {
				return true
			}
		}
		return false
	})
	if !strings.Contains(httpGet(t, "http://"+w.admin+"/metrics"), `postern_portal_events_total{event="revoked"} 1`) {
		t.Error("revocation not counted in postern_portal_events_total")
	}
}
