package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
	"github.com/postern-mail/postern/test/support/testpki"
)

// world is a loopback Internet: a DNS server, recipient MXes on several
// 127.0.0.x addresses sharing one port, and a postern process.
type world struct {
	t       *testing.T
	dir     string
	dns     *dnstest.Server
	ca      *testpki.CA
	mxPort  int
	smtp    string // postern's SMTP address
	admin   string
	cmd     *exec.Cmd
	logFile string
	extra   string // extra YAML appended to the smtp section
	mode    string // delivery mode lines; default "mode: mx"
	keys    string // keys section lines (indented), "" = none
	policy  string // policy.yaml content, "" = default plan
	portal  string // portal section, "" = none
}

const (
	ipTLS      = "127.0.0.2" // mx.tls.example: STARTTLS with a valid certificate
	ipPlain    = "127.0.0.3" // mx.plain.example: no STARTTLS
	ipSender   = "127.0.0.4" // mx.example.org: the sender domain's MX (receives DSNs)
	ipLater    = "127.0.0.5" // mx.later.example: down at first
	ipOutsider = "127.0.0.9" // a client outside allowed_networks
)

func newWorld(t *testing.T) *world {
	t.Helper()
	if _, err := exec.LookPath("swaks"); err != nil {
		t.Fatal("swaks is required for the end-to-end tests (apt-get install swaks)")
	}
	w := &world{t: t, dir: t.TempDir(), ca: testpki.NewCA(t, "postern test CA")}
	d, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	w.dns = d
	for dom, ip := range map[string]string{"tls.example": ipTLS, "plain.example": ipPlain, "example.org": ipSender, "later.example": ipLater} {
		d.SetMX(dom, dnsr.MX{Host: "mx." + dom, Pref: 10})
		d.SetA("mx."+dom, ip)
	}
	w.mxPort = freePortOn(t, ipTLS, ipPlain, ipSender, ipLater)
	if err := os.WriteFile(filepath.Join(w.dir, "ca.pem"), w.ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) receiver(ip, name string, withTLS bool) *receiver {
	if !withTLS {
		return startReceiver(w.t, fmt.Sprintf("%s:%d", ip, w.mxPort), nil)
	}
	cert := w.ca.Server(w.t, name)
	return startReceiver(w.t, fmt.Sprintf("%s:%d", ip, w.mxPort), &cert)
}

func (w *world) modeLines() string {
	if w.mode == "" {
		return "mode: mx"
	}
	return w.mode
}

func (w *world) keysSection() string {
	// No WKD or keyserver unless a test asks: keys come from local dirs.
	return "keys:\n  wkd: false\n  keyserver: \"\"\n" + w.keys
}

func (w *world) writeConfig() string {
	smtpPort, adminPort := freePort(w.t), freePort(w.t)
	w.smtp = fmt.Sprintf("127.0.0.1:%d", smtpPort)
	w.admin = fmt.Sprintf("127.0.0.1:%d", adminPort)
	cfg := fmt.Sprintf(`hostname: gw.example.org
smtp:
  listen: "%s"
  allowed_networks: [127.0.0.1/32]
  sender_domains: [example.org]
%squeue:
  dir: queue
  retry: [1s, 1s, 2s]
  max_age: 1h
  concurrency: 8
delivery:
  %s
  port: %d
  dns: "%s"
  tls_roots: ca.pem
policy: policy.yaml
%s%saudit:
  path: audit.jsonl
admin:
  listen: "%s"
log:
  level: debug
  format: json
`, w.smtp, w.extra, w.modeLines(), w.mxPort, w.dns.Addr, w.keysSection(), w.portal, w.admin)
	path := filepath.Join(w.dir, "postern.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		w.t.Fatal(err)
	}
	pol := w.policy
	if pol == "" {
		pol = "methods: [smime, pgp, tls, portal]\ntls: {level: verify}\n"
	}
	if err := os.WriteFile(filepath.Join(w.dir, "policy.yaml"), []byte(pol), 0o644); err != nil {
		w.t.Fatal(err)
	}
	return path
}

// start runs postern serve and waits until SMTP answers.
func (w *world) start() {
	w.t.Helper()
	cfg := filepath.Join(w.dir, "postern.yaml")
	if _, err := os.Stat(cfg); err != nil {
		cfg = w.writeConfig()
	}
	w.logFile = filepath.Join(w.dir, fmt.Sprintf("postern-%d.log", time.Now().UnixNano()))
	lf, err := os.Create(w.logFile)
	if err != nil {
		w.t.Fatal(err)
	}
	w.cmd = exec.Command(binary, "serve", "-config", cfg)
	w.cmd.Stdout, w.cmd.Stderr = lf, lf
	if err := w.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	lf.Close()
	w.t.Cleanup(func() {
		if w.cmd != nil && w.cmd.ProcessState == nil {
			w.cmd.Process.Kill()
			w.cmd.Wait()
		}
		if w.t.Failed() {
			b, _ := os.ReadFile(w.logFile)
			w.t.Logf("postern log:\n%s", b)
		}
	})
	waitFor(w.t, 20*time.Second, "postern SMTP listener", func() bool {
		c, err := net.Dial("tcp", w.smtp)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// stop sends SIGTERM and requires exit status 0.
func (w *world) stop() {
	w.t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b, _ := os.ReadFile(w.logFile)
			w.t.Fatalf("postern exited with %v after SIGTERM; log:\n%s", err, b)
		}
	case <-time.After(60 * time.Second):
		w.cmd.Process.Kill()
		w.t.Fatal("postern did not exit within 60s of SIGTERM")
	}
}

// swaks sends one message; it returns swaks' transcript and error.
func (w *world) swaks(args ...string) (string, error) {
	base := []string{"--server", w.smtp, "--ehlo", "client.example.org", "--timeout", "30"}
	out, err := exec.Command("swaks", append(base, args...)...).CombinedOutput()
	return string(out), err
}

// audit returns the audit records written so far.
func (w *world) audit() []map[string]any {
	f, err := os.Open(filepath.Join(w.dir, "audit.jsonl"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (w *world) findAudit(event, rcpt, result string) map[string]any {
	for _, r := range w.audit() {
		if r["event"] == event && r["rcpt"] == rcpt && (result == "" || r["result"] == result) {
			return r
		}
	}
	return nil
}

func (w *world) postern(args ...string) (string, error) {
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

const testBody = "This is the body.\r\nLine with a leading dot follows:\r\n.hidden\r\nUnicode: caf\xc3\xa9"

func TestTLSDeliveryBodyIntact(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipTLS, "mx.tls.example", true)
	w.start()
	data := "From: alice@example.org\r\nTo: bob@tls.example\r\nSubject: hello\r\nMessage-ID: <e2e-1@example.org>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n" + testBody
	out, err := w.swaks("--from", "alice@example.org", "--to", "bob@tls.example", "--data", data, "--tls")
	if err != nil || !strings.Contains(out, "250 2.0.0 OK queued as") {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "delivery to mx.tls.example", func() bool { return len(mx.messages()) == 1 })
	m := mx.messages()[0]
	if !m.TLS {
		t.Fatal("message was delivered without TLS")
	}
	if m.From != "alice@example.org" || len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@tls.example" {
		t.Fatalf("envelope: from %q rcpts %v", m.From, m.Rcpts)
	}
	if !bytes.HasPrefix(m.Data, []byte("Received: from client.example.org ([127.0.0.1])\r\n\tby gw.example.org (postern) with ESMTPS")) {
		t.Fatalf("no Received header of ours first:\n%s", m.Data)
	}
	// swaks ends the data with CRLF "." CRLF; the CRLF belongs to the message.
	if got := string(bodyAfterOurReceived(m.Data)); got != data+"\r\n" {
		t.Fatalf("message changed in transit:\n got %q\nwant %q", got, data)
	}
	waitFor(t, 5*time.Second, "delivery audit record", func() bool { return w.findAudit("delivery", "bob@tls.example", "delivered") != nil })
	rec := w.findAudit("delivery", "bob@tls.example", "delivered")
	tlsInfo, _ := rec["tls"].(map[string]any)
	if rec["method"] != "tls" || rec["mx"] != "mx.tls.example" || tlsInfo["verified"] != true || tlsInfo["policy"] != "pkix" {
		t.Fatalf("delivery record: %v", rec)
	}
	dec := w.findAudit("decision", "bob@tls.example", "")
	if dec == nil || dec["method"] != "tls" || dec["message_id"] != "<e2e-1@example.org>" {
		t.Fatalf("decision record: %v", dec)
	}
	w.stop()
	if out, err := w.postern("audit", "verify", "-config", filepath.Join(w.dir, "postern.yaml")); err != nil {
		t.Fatalf("audit verify: %v\n%s", err, out)
	}
}

func TestRejectedRecipientGetsDSN(t *testing.T) {
	w := newWorld(t)
	w.receiver(ipTLS, "mx.tls.example", true)
	senderMX := w.receiver(ipSender, "mx.example.org", true)
	w.start()
	out, err := w.swaks("--from", "alice@example.org", "--to", "reject@tls.example", "--header", "Subject: will bounce")
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "DSN at the sender domain's MX", func() bool { return len(senderMX.messages()) == 1 })
	d := senderMX.messages()[0]
	if d.From != "" || len(d.Rcpts) != 1 || d.Rcpts[0] != "alice@example.org" {
		t.Fatalf("DSN envelope: from %q to %v", d.From, d.Rcpts)
	}
	body := string(d.Data)
	for _, want := range []string{"multipart/report", "report-type=delivery-status", "Final-Recipient: rfc822; reject@tls.example",
		"Action: failed", "Status: 5.1.1", "no such user here", "Subject: will bounce"} {
		if !strings.Contains(body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, body)
		}
	}
	if w.findAudit("bounce", "reject@tls.example", "") == nil {
		t.Error("no bounce audit record")
	}
}

func TestTemporaryFailureRetried(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipTLS, "mx.tls.example", true)
	w.start()
	if out, err := w.swaks("--from", "alice@example.org", "--to", "tempfail@tls.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "delivery after a 451", func() bool { return len(mx.messages()) == 1 })
	if w.findAudit("delivery", "tempfail@tls.example", "deferred") == nil {
		t.Error("no deferred record for the 451")
	}
	// The record follows the receiver's reply to DATA: wait for it.
	waitFor(t, 10*time.Second, "the delivered record", func() bool {
		return w.findAudit("delivery", "tempfail@tls.example", "delivered") != nil
	})
}

func TestNoPlaintextWhenMXLacksSTARTTLS(t *testing.T) {
	w := newWorld(t)
	plain := w.receiver(ipPlain, "mx.plain.example", false)
	w.start()
	if out, err := w.swaks("--from", "alice@example.org", "--to", "carol@plain.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "a deferred delivery record", func() bool {
		return w.findAudit("delivery", "carol@plain.example", "deferred") != nil
	})
	time.Sleep(2500 * time.Millisecond) // let retries happen too
	if n := len(plain.messages()); n != 0 {
		t.Fatalf("%d message(s) went out in plaintext", n)
	}
	rec := w.findAudit("delivery", "carol@plain.example", "deferred")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "STARTTLS") {
		t.Fatalf("deferred record does not say why: %v", rec)
	}
}

func TestOutsiderCannotRelay(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipTLS, "mx.tls.example", true)
	w.start()
	out, err := w.swaks("--from", "alice@example.org", "--to", "bob@tls.example", "--local-interface", ipOutsider)
	if err == nil {
		t.Fatalf("relay from %s was accepted:\n%s", ipOutsider, out)
	}
	if !strings.Contains(out, "554 5.7.1") {
		t.Fatalf("want 554 5.7.1 at RCPT:\n%s", out)
	}
	// A sender outside sender_domains is refused too, even from inside.
	out, err = w.swaks("--from", "mallory@evil.example", "--to", "bob@tls.example")
	if err == nil || !strings.Contains(out, "553 5.7.1") {
		t.Fatalf("foreign sender domain accepted: %v\n%s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	if len(mx.messages()) != 0 {
		t.Fatal("something was relayed")
	}
}

func TestRestartDeliversPendingOnce(t *testing.T) {
	w := newWorld(t)
	w.start()
	if out, err := w.swaks("--from", "alice@example.org", "--to", "dave@later.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "a deferred attempt", func() bool {
		return w.findAudit("delivery", "dave@later.example", "deferred") != nil
	})
	w.stop()
	mx := w.receiver(ipLater, "mx.later.example", true)
	w.start()
	waitFor(t, 30*time.Second, "delivery after restart", func() bool { return len(mx.messages()) >= 1 })
	time.Sleep(3 * time.Second)
	if n := len(mx.messages()); n != 1 {
		t.Fatalf("delivered %d times, want once", n)
	}
	w.stop()
	out, err := w.postern("audit", "verify", "-config", filepath.Join(w.dir, "postern.yaml"))
	if err != nil {
		t.Fatalf("audit verify after restart: %v\n%s", err, out)
	}
}

func TestAuditVerifyDetectsTampering(t *testing.T) {
	w := newWorld(t)
	w.receiver(ipTLS, "mx.tls.example", true)
	w.start()
	for i := 0; i < 3; i++ {
		if out, err := w.swaks("--from", "alice@example.org", "--to", fmt.Sprintf("u%d@tls.example", i)); err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
	}
	waitFor(t, 20*time.Second, "three deliveries", func() bool {
		n := 0
		for _, r := range w.audit() {
			if r["event"] == "delivery" && r["result"] == "delivered" {
				n++
			}
		}
		return n == 3
	})
	w.stop()
	cfg := filepath.Join(w.dir, "postern.yaml")
	out, err := w.postern("audit", "verify", "-config", cfg)
	if err != nil || !strings.Contains(out, "6 records") {
		t.Fatalf("audit verify on a good log: %v\n%s", err, out)
	}
	path := filepath.Join(w.dir, "audit.jsonl")
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(orig), "\n")
	// Edit one field of the third record.
	edited := append([]string(nil), lines...)
	edited[2] = strings.Replace(edited[2], "tls.example", "tls.exampl3", 1)
	os.WriteFile(path, []byte(strings.Join(edited, "")), 0o600)
	out, err = w.postern("audit", "verify", "-config", cfg)
	if err == nil || !strings.Contains(out, "audit.jsonl:3:") {
		t.Fatalf("edit not detected at line 3: %v\n%s", err, out)
	}
	// Delete the second record.
	deleted := append(append([]string(nil), lines[:1]...), lines[2:]...)
	os.WriteFile(path, []byte(strings.Join(deleted, "")), 0o600)
	out, err = w.postern("audit", "verify", "-config", cfg)
	if err == nil || !strings.Contains(out, "audit.jsonl:2:") {
		t.Fatalf("deletion not detected at line 2: %v\n%s", err, out)
	}
	// Search still reads the good log as JSON and CSV.
	os.WriteFile(path, orig, 0o600)
	out, err = w.postern("audit", "search", "-config", cfg, "-rcpt", "u1@tls.example", "-format", "csv")
	if err != nil || strings.Count(out, "u1@tls.example") != 2 {
		t.Fatalf("audit search csv: %v\n%s", err, out)
	}
}

func TestRelayModeProbesRecipientTLS(t *testing.T) {
	w := newWorld(t)
	const ipRelay = "127.0.0.6"
	relayPort := freePortOn(t, ipRelay)
	// The relay offers STARTTLS: with relay_tls none a copy whose plan
	// needs TLS still crosses this hop encrypted (never plaintext).
	relayCert := w.ca.Server(t, "relay.example.org")
	relay := startReceiver(t, fmt.Sprintf("%s:%d", ipRelay, relayPort), &relayCert)
	w.receiver(ipTLS, "mx.tls.example", true) // probed, never sent to
	w.receiver(ipPlain, "mx.plain.example", false)
	w.mode = fmt.Sprintf("mode: relay\n  relay: \"%s:%d\"\n  relay_tls: none", ipRelay, relayPort)
	w.start()
	if out, err := w.swaks("--from", "alice@example.org", "--to", "bob@tls.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if out, err := w.swaks("--from", "alice@example.org", "--to", "carol@plain.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "relay delivery of the verified-TLS recipient", func() bool { return len(relay.messages()) == 1 })
	waitFor(t, 20*time.Second, "deferral of the recipient whose MX lacks STARTTLS", func() bool {
		return w.findAudit("delivery", "carol@plain.example", "deferred") != nil
	})
	time.Sleep(2 * time.Second)
	msgs := relay.messages()
	if len(msgs) != 1 || msgs[0].Rcpts[0] != "bob@tls.example" {
		t.Fatalf("relay got %d messages (%v); only bob@tls.example may be handed over", len(msgs), msgs)
	}
	if !msgs[0].TLS {
		t.Fatal("a copy whose plan requires TLS crossed the relay hop in plaintext")
	}
	rec := w.findAudit("delivery", "carol@plain.example", "deferred")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "STARTTLS") {
		t.Fatalf("deferral reason: %v", rec)
	}
}
