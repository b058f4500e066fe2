package config

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, src, dir string) *Config {
	t.Helper()
	c, err := Parse([]byte(src), "c.yaml", dir)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return c
}

func prefixes(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func TestDefaults(t *testing.T) {
	dir := t.TempDir()
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no system hostname: %v", err)
	}
	want := &Config{
		File:     "c.yaml",
		Dir:      dir,
		Hostname: strings.TrimSuffix(strings.ToLower(host), "."),
		SMTP: SMTP{
			Listen:          "0.0.0.0:25",
			MaxMessageBytes: 157286400,
			MaxRecipients:   1000,
			AllowedNetworks: prefixes(t, "127.0.0.0/8", "::1/128"),
			MaxConnections:  500,
			MaxLineLength:   32768,
			ReadTimeout:     5 * time.Minute,
			WriteTimeout:    5 * time.Minute,
		},
		Queue: Queue{
			Dir:            filepath.Join(dir, "var/queue"),
			Retry:          []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour},
			MaxAge:         120 * time.Hour,
			Concurrency:    64,
			PerDestination: 4,
		},
		Delivery: Delivery{
			Mode: "mx", RelayTLS: "verify", Dir: filepath.Join(dir, "var/outbox"), Port: 25,
			MTASTS: true, DANE: true,
		},
		Keys: Keys{
			WKD: true, Keyserver: "https://keys.openpgp.org",
			LDAP: LDAP{Filter: "(mail=%s)"}, CacheTTL: time.Hour,
		},
		Portal:  Portal{Listen: "127.0.0.1:8443", MessageTTL: 720 * time.Hour},
		Storage: Storage{Driver: "sqlite", DSN: filepath.Join(dir, "var/postern.db")},
		Audit:   Audit{Path: filepath.Join(dir, "var/audit.jsonl")},
		Admin:   Admin{Listen: "127.0.0.1:9090"},
		Log:     Log{Level: "info", Format: "json"},
	}
	for _, src := range []string{"", "# only a comment\n", "---\n", "~\n", "smtp:\nqueue: ~\nlog: {}\n"} {
		c := mustParse(t, src, dir)
		c.lines, c.name = nil, ""
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Parse(%q) =\n%+v\nwant\n%+v", src, c, want)
		}
	}
}

// TestAllKeys sets every key of SPEC §3 and every extension to a value other
// than its default and checks each arrives in its field.
func TestAllKeys(t *testing.T) {
	dir := fixture(t)
	src := `hostname: GW.Example.ORG.
smtp:
  listen: "[::1]:2525"
  tls_cert: certs/a.pem
  tls_key: certs/a-key.pem
  require_tls: true
  max_message_bytes: 1_000_000
  max_recipients: 50
  allowed_networks: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32", "2001:db8::1", 172.16.5.4/12]
  client_ca: certs/ca.pem
  client_cert_names: [Mail.Protection.Outlook.com]
  auth_users_file: users
  sender_domains: [Example.ORG, example.net.]
  max_connections: 20
  max_line_length: 1000
  read_timeout: 90s
  write_timeout: 2m
queue:
  dir: /var/spool/postern-test
  retry: [30s, 10m]
  max_age: 48h
  concurrency: 8
  per_destination: 2
delivery:
  mode: relay
  relay: "smtp.example.net:587"
  relay_tls: opportunistic
  dir: out
  port: 2525
  dns: "127.0.0.1:5353"
  tls_roots: certs/ca.pem
  mta_sts: false
  dane: false
  dkim:
    - {domain: Example.org, selector: postern, key: certs/dkim-rsa.pem}
    - domain: example.org
      selector: ed
      key: certs/dkim-ed.pem
policy: policy.yaml
keys:
  pgp_dir: certs/pgp
  smime_dir: certs/smime
  smime_roots: certs/ca.pem
  wkd: false
  keyserver: http://127.0.0.1:8080/
  ldap: {url: "ldaps://dir.example.org", base_dn: "dc=example,dc=org", filter: "(&(mail=%s)(objectClass=person))"}
  cache_ttl: 10m
  signing: {smime_cert: certs/a.pem, smime_key: certs/a-key.pem, pgp_key: policy.yaml}
portal:
  listen: "127.0.0.1:8444"
  base_url: "https://secure.example.org/portal/"
  tls_cert: certs/a.pem
  tls_key: certs/a-key.pem
  master_key_file: certs/master.key
  message_ttl: 240h
  notify_from: "Secure Mail <secure-mail@example.org>"
storage:
  driver: postgres
  dsn: "postgres://postern@db/postern?sslmode=verify-full"
audit:
  path: logs/audit.jsonl
admin:
  listen: ""
log:
  level: DEBUG
  format: text
`
	c := mustParse(t, src, dir)
	j := func(p string) string { return filepath.Join(dir, p) }
	want := &Config{
		File:     "c.yaml",
		Dir:      dir,
		Hostname: "gw.example.org",
		SMTP: SMTP{
			Listen:          "[::1]:2525",
			TLSCert:         j("certs/a.pem"),
			TLSKey:          j("certs/a-key.pem"),
			RequireTLS:      true,
			MaxMessageBytes: 1000000,
			MaxRecipients:   50,
			AllowedNetworks: prefixes(t, "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "2001:db8::1/128", "172.16.0.0/12"),
			ClientCA:        j("certs/ca.pem"),
			ClientCertNames: []string{"mail.protection.outlook.com"},
			AuthUsersFile:   j("users"),
			SenderDomains:   []string{"example.org", "example.net"},
			MaxConnections:  20,
			MaxLineLength:   1000,
			ReadTimeout:     90 * time.Second,
			WriteTimeout:    2 * time.Minute,
		},
		Queue: Queue{
			Dir:            "/var/spool/postern-test",
			Retry:          []time.Duration{30 * time.Second, 10 * time.Minute},
			MaxAge:         48 * time.Hour,
			Concurrency:    8,
			PerDestination: 2,
		},
		Delivery: Delivery{
			Mode: "relay", Relay: "smtp.example.net:587", RelayTLS: "opportunistic",
			Dir: j("out"), Port: 2525, DNS: "127.0.0.1:5353", TLSRoots: j("certs/ca.pem"),
			DKIM: []DKIMKey{
				{Domain: "example.org", Selector: "postern", Key: j("certs/dkim-rsa.pem")},
				{Domain: "example.org", Selector: "ed", Key: j("certs/dkim-ed.pem")},
			},
		},
		Policy: j("policy.yaml"),
		Keys: Keys{
			PGPDir: j("certs/pgp"), SMIMEDir: j("certs/smime"), SMIMERoots: j("certs/ca.pem"),
			Keyserver: "http://127.0.0.1:8080",
			LDAP:      LDAP{URL: "ldaps://dir.example.org", BaseDN: "dc=example,dc=org", Filter: "(&(mail=%s)(objectClass=person))"},
			CacheTTL:  10 * time.Minute,
			Signing:   Signing{SMIMECert: j("certs/a.pem"), SMIMEKey: j("certs/a-key.pem"), PGPKey: j("policy.yaml")},
		},
		Portal: Portal{
			Listen: "127.0.0.1:8444", BaseURL: "https://secure.example.org/portal",
			TLSCert: j("certs/a.pem"), TLSKey: j("certs/a-key.pem"), MasterKeyFile: j("certs/master.key"),
			MessageTTL: 240 * time.Hour, NotifyFrom: "Secure Mail <secure-mail@example.org>",
		},
		Storage: Storage{Driver: "postgres", DSN: "postgres://postern@db/postern?sslmode=verify-full"},
		Audit:   Audit{Path: j("logs/audit.jsonl")},
		Admin:   Admin{Listen: ""},
		Log:     Log{Level: "debug", Format: "text"},
	}
	got := *c
	got.lines, got.name = nil, ""
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", &got, want)
	}
	if !c.ClientCertRequired() {
		t.Error("ClientCertRequired() = false with client_ca set")
	}
	if !c.Portal.Enabled() {
		t.Error("Portal.Enabled() = false with base_url set")
	}
	if got := c.Log.SlogLevel(); got != slog.LevelDebug {
		t.Errorf("SlogLevel() = %v", got)
	}
	for key, line := range map[string]int{
		"hostname": 1, "smtp": 2, "smtp.listen": 3, "smtp.allowed_networks[3]": 9,
		"delivery.dkim[1]": 36, "delivery.dkim[1].key": 38, "policy": 39, "log.format": 66,
		"nope": 0,
	} {
		if got := c.Line(key); got != line {
			t.Errorf("Line(%q) = %d, want %d", key, got, line)
		}
	}
	if p := c.Problem("policy", "bad rule %d", 3); p.String() != "c.yaml:39: policy: bad rule 3" {
		t.Errorf("Problem() = %q", p)
	}
}

func TestRelativePaths(t *testing.T) {
	dir := fixture(t)
	abs := filepath.Join(dir, "certs", "a.pem")
	c := mustParse(t, "smtp:\n  tls_cert: "+abs+"\n  tls_key: ./certs/../certs/a-key.pem\nqueue:\n  dir: /srv/q/../queue\naudit:\n  path: audit.log\n", dir)
	if c.SMTP.TLSCert != abs {
		t.Errorf("absolute path changed: %q", c.SMTP.TLSCert)
	}
	if want := filepath.Join(dir, "certs/a-key.pem"); c.SMTP.TLSKey != want {
		t.Errorf("TLSKey = %q, want %q", c.SMTP.TLSKey, want)
	}
	if c.Queue.Dir != "/srv/queue" {
		t.Errorf("Queue.Dir = %q", c.Queue.Dir)
	}
	if want := filepath.Join(dir, "audit.log"); c.Audit.Path != want {
		t.Errorf("Audit.Path = %q, want %q", c.Audit.Path, want)
	}

	// A relative dir argument is made absolute.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c = mustParse(t, "", "testdata")
	if want := filepath.Join(wd, "testdata"); c.Dir != want || c.Audit.Path != filepath.Join(want, "var/audit.jsonl") {
		t.Errorf("Dir = %q, Audit.Path = %q; want under %q", c.Dir, c.Audit.Path, want)
	}

	// SQLite DSNs are plain paths, resolved against the config's folder
	// (the store sets its own pragmas); postgres DSNs are left alone.
	for dsn, want := range map[string]string{
		"db/p.db":    filepath.Join(dir, "db/p.db"),
		"/data/p.db": "/data/p.db",
	} {
		c := mustParse(t, "storage:\n  dsn: \""+dsn+"\"\n", dir)
		if c.Storage.DSN != want {
			t.Errorf("dsn %q resolved to %q, want %q", dsn, c.Storage.DSN, want)
		}
	}
	for _, dsn := range []string{"file:rel.db", "file:/data/p.db?mode=ro", ":memory:", "p.db?cache=shared"} {
		if _, err := Parse([]byte("storage:\n  dsn: \""+dsn+"\"\n"), "c.yaml", dir); err == nil || !strings.Contains(err.Error(), "plain file path") {
			t.Errorf("sqlite dsn %q: want a 'plain file path' problem, got %v", dsn, err)
		}
	}
	c = mustParse(t, "storage: {driver: postgres, dsn: \"host=db dbname=postern\"}\n", dir)
	if c.Storage.DSN != "host=db dbname=postern" {
		t.Errorf("postgres DSN changed: %q", c.Storage.DSN)
	}
}

// TestSpecExample loads the YAML block of SPEC §3 verbatim. Where it lies,
// none of the files it names exist, and exactly those are reported.
func TestSpecExample(t *testing.T) {
	_, err := Load("testdata/spec.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load: %v, want *Error", err)
	}
	abs, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"testdata/spec.yaml:4: smtp.tls_cert: " + abs + "/certs/gw.pem does not exist",
		"testdata/spec.yaml:5: smtp.tls_key: " + abs + "/certs/gw-key.pem does not exist",
		"testdata/spec.yaml:10: smtp.client_ca: " + abs + "/certs/clients-ca.pem does not exist",
		"testdata/spec.yaml:30: delivery.dkim[0].key: " + abs + "/certs/dkim-example.org.pem does not exist",
		"testdata/spec.yaml:31: policy: " + abs + "/configs/policy.yaml does not exist",
		"testdata/spec.yaml:33: keys.pgp_dir: directory " + abs + "/certs/pgp does not exist",
		"testdata/spec.yaml:34: keys.smime_dir: directory " + abs + "/certs/smime does not exist",
		"testdata/spec.yaml:35: keys.smime_roots: " + abs + "/certs/smime-roots.pem does not exist",
		"testdata/spec.yaml:46: portal.master_key_file: " + abs + "/certs/portal-master.key does not exist",
	}
	var got []string
	for _, p := range cerr.Problems {
		got = append(got, p.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSpecExampleLoads loads the SPEC §3 example with the files it names in
// place and checks the values.
func TestSpecExampleLoads(t *testing.T) {
	src, err := os.ReadFile("testdata/spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := fixture(t)
	for from, to := range map[string]string{
		"certs/a.pem":        "certs/gw.pem",
		"certs/a-key.pem":    "certs/gw-key.pem",
		"certs/ca.pem":       "certs/clients-ca.pem",
		"certs/dkim-rsa.pem": "certs/dkim-example.org.pem",
		"policy.yaml":        "configs/policy.yaml",
		"junk.txt":           "certs/smime-roots.pem",
		"certs/master.key":   "certs/portal-master.key",
	} {
		data, err := os.ReadFile(filepath.Join(dir, from))
		if err != nil {
			t.Fatal(err)
		}
		if to == "certs/smime-roots.pem" {
			data, err = os.ReadFile(filepath.Join(dir, "certs/ca.pem"))
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, to)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "postern.yaml")
	if err := os.WriteFile(path, src, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load:\n%v", err)
	}
	if c.File != path || c.Dir != dir {
		t.Errorf("File, Dir = %q, %q", c.File, c.Dir)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"hostname", c.Hostname, "gw.example.org"},
		{"require_tls", c.SMTP.RequireTLS, true},
		{"allowed_networks", c.SMTP.AllowedNetworks, prefixes(t, "127.0.0.0/8")},
		{"client_cert_names", c.SMTP.ClientCertNames, []string{}},
		{"auth_users_file", c.SMTP.AuthUsersFile, ""},
		{"sender_domains", c.SMTP.SenderDomains, []string{"example.org"}},
		{"retry", len(c.Queue.Retry), 7},
		{"relay", c.Delivery.Relay, "smtp.example.net:587"},
		{"dkim", c.Delivery.DKIM, []DKIMKey{{"example.org", "postern", filepath.Join(dir, "certs/dkim-example.org.pem")}}},
		{"policy", c.Policy, filepath.Join(dir, "configs/policy.yaml")},
		{"ldap", c.Keys.LDAP, LDAP{Filter: "(mail=%s)"}},
		{"signing", c.Keys.Signing, Signing{}},
		{"base_url", c.Portal.BaseURL, "https://secure.example.org"},
		{"notify_from", c.Portal.NotifyFrom, "secure-mail@example.org"},
		{"dsn", c.Storage.DSN, filepath.Join(dir, "var/postern.db")},
		{"audit", c.Audit.Path, filepath.Join(dir, "var/audit.jsonl")},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing.yaml"), filepath.Join(dir, "missing.yaml") + ": read config: "},
		{dir, dir + ": read config: not a regular file"},
	} {
		_, err := Load(tc.path)
		var cerr *Error
		if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Line != 0 {
			t.Fatalf("Load(%q) = %v, want one *Error problem without a line", tc.path, err)
		}
		if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %q, want prefix %q", tc.path, err, tc.want)
		}
	}
}

func TestAnchorsAndMerge(t *testing.T) {
	dir := fixture(t)
	src := `smtp:
  read_timeout: &t 2m
  write_timeout: *t
delivery:
  dkim:
    - &k {domain: example.org, selector: s1, key: certs/dkim-ed.pem}
    - <<: *k
      selector: s2
    - {<<: [*k], domain: example.net}
    - &self {domain: example.com, selector: s3, key: certs/dkim-ed.pem, <<: *self}
`
	c := mustParse(t, src, dir)
	if c.SMTP.WriteTimeout != 2*time.Minute {
		t.Errorf("alias: WriteTimeout = %v", c.SMTP.WriteTimeout)
	}
	key := filepath.Join(dir, "certs/dkim-ed.pem")
	want := []DKIMKey{
		{"example.org", "s1", key},
		{"example.org", "s2", key},
		{"example.net", "s1", key},
		{"example.com", "s3", key},
	}
	if !reflect.DeepEqual(c.Delivery.DKIM, want) {
		t.Errorf("DKIM = %+v, want %+v", c.Delivery.DKIM, want)
	}
}

func TestHelpers(t *testing.T) {
	s := SMTP{AllowedNetworks: prefixes(t, "10.0.0.0/8", "2001:db8::/32"), SenderDomains: []string{"example.org"}}
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:10.1.2.3": true, "11.0.0.1": false,
		"2001:db8::5": true, "fe80::1%eth0": false, "2001:db9::1": false,
	} {
		if got := s.Allowed(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Allowed(%s) = %v, want %v", addr, got, want)
		}
	}
	for d, want := range map[string]bool{"example.org": true, "EXAMPLE.org.": true, "example.net": false, "sub.example.org": false} {
		if got := s.SenderDomainAllowed(d); got != want {
			t.Errorf("SenderDomainAllowed(%q) = %v, want %v", d, got, want)
		}
	}
	if !(SMTP{}).SenderDomainAllowed("any.example") {
		t.Error("empty SenderDomains must allow any domain")
	}

	q := Queue{Retry: []time.Duration{time.Minute, time.Hour}}
	for n, want := range map[int]time.Duration{-1: time.Minute, 0: time.Minute, 1: time.Minute, 2: time.Hour, 3: time.Hour, 100: time.Hour} {
		if got := q.RetryDelay(n); got != want {
			t.Errorf("RetryDelay(%d) = %v, want %v", n, got, want)
		}
	}
	if got := (Queue{}).RetryDelay(5); got != time.Minute {
		t.Errorf("RetryDelay with no schedule = %v", got)
	}

	for _, tc := range []struct {
		c    Config
		want bool
	}{
		{Config{}, false},
		{Config{SMTP: SMTP{ClientCA: "/ca.pem"}}, true},
		{Config{SMTP: SMTP{ClientCertNames: []string{"mail.protection.outlook.com"}}}, true},
	} {
		if got := tc.c.ClientCertRequired(); got != tc.want {
			t.Errorf("ClientCertRequired(%+v) = %v", tc.c.SMTP, got)
		}
	}
	for lvl, want := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got := (Log{Level: lvl}).SlogLevel(); got != want {
			t.Errorf("SlogLevel(%s) = %v", lvl, got)
		}
	}
}

func TestMasterKey(t *testing.T) {
	dir := fixture(t)
	k, err := ReadMasterKey(filepath.Join(dir, "certs/master.key"))
	if err != nil || len(k) != MasterKeySize {
		t.Fatalf("ReadMasterKey = %d bytes, %v", len(k), err)
	}
	for in, ok := range map[string]bool{
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=":     true,  // std, padded
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8":      true,  // std, raw
		"  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n": true,  // white space
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==":     false, // 31 bytes
		"not base64!": false,
		"":            false,
	} {
		if _, err := parseMasterKey([]byte(in)); (err == nil) != ok {
			t.Errorf("parseMasterKey(%q) err = %v, want ok %v", in, err, ok)
		}
	}
	if _, err := ReadMasterKey(filepath.Join(dir, "nope")); err == nil {
		t.Error("ReadMasterKey of a missing file succeeded")
	}
}

func TestCheckDomain(t *testing.T) {
	for name, ok := range map[string]bool{
		"example.org": true, "localhost": true, "a-b.example": true, "3com.example": true,
		"xn--bcher-kva.example": true, strings.Repeat("a", 63) + ".example": true,
		"": false, "-a.example": false, "a-.example": false, "a..b": false, "a_b.example": false,
		strings.Repeat("a", 64) + ".example": false, strings.Repeat("abcdefghi.", 26) + "org": false,
		"bücher.example": false, "192.0.2.1": false, "a b": false,
	} {
		if err := checkDomain(name); (err == nil) != ok {
			t.Errorf("checkDomain(%q) = %v, want ok %v", name, err, ok)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"listen", "tls_cert", "tls_key", "max_age", "allowed_networks"}
	for in, want := range map[string]string{
		"lisen": "listen", "LISTEN": "listen", "tls-key": "tls_key", "max-age": "max_age",
		"allowed_network": "allowed_networks", "zzz": "", "tls": "", strings.Repeat("x", 5000): "",
	} {
		if got := suggest(in, keys); got != want {
			t.Errorf("suggest(%q) = %q, want %q", truncate(in), got, want)
		}
	}
}
