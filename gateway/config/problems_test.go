package config

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// want is one expected problem: its line, the start of its message (the key
// it names) and a fragment of the rest.
type want struct {
	line     int
	prefix   string
	contains string
}

// problemCases each hold a config with problems and every problem it must
// produce, in order. Paths are relative to the fixture folder; "$DIR" in
// contains stands for that folder.
var problemCases = []struct {
	name string
	yaml string
	want []want
}{
	// Syntax and document shape.
	{"syntax error", "smtp:\n  listen: [1\n", []want{{2, "YAML syntax:", ""}}},
	{"tab indentation", "smtp:\n\tlisten: x\n", []want{{2, "YAML syntax:", "cannot start any token"}}},
	{"not a mapping", "- a\n- b\n", []want{{1, "the document must be a mapping", "got a list"}}},
	{"scalar document", "hello\n", []want{{1, "the document must be a mapping", `"hello"`}}},
	{"two documents", "log: {level: info}\n---\nlog: {}\n", []want{{2, "more than one YAML document", ""}}},
	{"unknown anchor", "log: {}\nhostname: *nope\n", []want{{2, "YAML syntax:", "unknown anchor"}}},
	{"block list in a mapping", "log: {}\n- x\n", []want{{2, "YAML syntax:", "did not find expected key"}}},
	{"unclosed flow mapping", "log: {}\n\n\nsmtp: {listen\n", []want{{4, "YAML syntax:", "did not find expected ',' or '}'"}}},
	{"unclosed quote", "log: {}\nhostname: \"x\n", []want{{2, "YAML syntax:", "unexpected end of stream"}}},

	// Keys.
	{"unknown root key", "hostnme: gw.example.org\n", []want{{1, `unknown key "hostnme"`, `did you mean "hostname"`}}},
	{"unknown nested key", "smtp:\n  lisen: \":25\"\n", []want{{2, `unknown key "smtp.lisen"`, `did you mean "smtp.listen"`}}},
	{"unknown key, dash for underscore", "queue:\n  max-age: 1h\n", []want{{2, `unknown key "queue.max-age"`, `did you mean "queue.max_age"`}}},
	{"unknown key, no suggestion", "smtp:\n  zzzzzzzz: 1\n", []want{{2, `unknown key "smtp.zzzzzzzz"`, ""}}},
	{"unknown deep key", "keys:\n  ldap:\n    uri: ldap://x\n", []want{{3, `unknown key "keys.ldap.uri"`, `"keys.ldap.url"`}}},
	{"duplicate key", "log:\n  level: info\n  level: debug\n", []want{{3, `duplicate key "log.level"`, "first at line 2"}}},
	{"duplicate section", "smtp: {}\nlog: {}\nsmtp: {}\n", []want{{3, `duplicate key "smtp"`, "first at line 1"}}},
	{"non-string key", "? [a, b]\n: c\n", []want{{1, "document: keys must be strings", "got a list"}}},
	{"null key", "smtp:\n  ~: x\n", []want{{2, "smtp: keys must be strings", "null"}}},

	// Types.
	{"section not a mapping", "smtp: 5\n", []want{{1, "smtp: expected a mapping", "the number 5"}}},
	{"list where a string is expected", "hostname: [a]\n", []want{{1, "hostname: expected a string", "got a list"}}},
	{"string where a list is expected", "smtp:\n  allowed_networks: 10.0.0.0/8\n", []want{{2, "smtp.allowed_networks: expected a list", `"10.0.0.0/8"`}}},
	{"mapping where a list is expected", "queue:\n  retry: {a: 1m}\n", []want{{2, "queue.retry: expected a list", "a mapping"}}},
	{"not a number", "smtp:\n  max_message_bytes: lots\n", []want{{2, "smtp.max_message_bytes: expected a whole number", `"lots"`}}},
	{"fraction", "smtp:\n  max_recipients: 1.5\n", []want{{2, "smtp.max_recipients: expected a whole number", "1.5"}}},
	{"quoted number", "delivery: {port: \"25\"}\n", []want{{1, "delivery.port: expected a whole number", `"25"`}}},
	{"yes is not a boolean", "delivery: {dane: yes}\n", []want{{1, "delivery.dane: expected true or false", `"yes"`}}},
	{"quoted boolean", "smtp:\n  require_tls: \"true\"\n", []want{{2, "smtp.require_tls: expected true or false", ""}}},
	{"list item not a string", "smtp:\n  client_cert_names:\n    - [a]\n", []want{{3, "smtp.client_cert_names: each item must be a string", "a list"}}},
	{"empty list item", "smtp:\n  client_cert_names: [\"\"]\n", []want{{2, "smtp.client_cert_names: each item must be a string", ""}}},

	// Numbers.
	{"max_message_bytes zero", "smtp:\n  max_message_bytes: 0\n", []want{{2, "smtp.max_message_bytes: must be at least 1", "got 0"}}},
	{"max_recipients negative", "smtp:\n  max_recipients: -3\n", []want{{2, "smtp.max_recipients: must be at least 1", "got -3"}}},
	{"max_line_length below RFC 5321", "smtp:\n  max_line_length: 512\n", []want{{2, "smtp.max_line_length: must be at least 1000", ""}}},
	{"max_connections zero", "smtp: {max_connections: 0}\n", []want{{1, "smtp.max_connections: must be at least 1", ""}}},
	{"concurrency zero", "queue:\n  concurrency: 0\n", []want{{2, "queue.concurrency: must be at least 1", "got 0"}}},
	{"per_destination zero", "queue:\n  per_destination: 0\n", []want{{2, "queue.per_destination: must be at least 1", ""}}},
	{"port zero", "delivery:\n  port: 0\n", []want{{2, "delivery.port: must be between 1 and 65535", "got 0"}}},
	{"port too big", "delivery:\n  port: 70000\n", []want{{2, "delivery.port: must be between 1 and 65535", "got 70000"}}},
	{"int overflow", "smtp:\n  max_recipients: 99999999999\n", []want{{2, "smtp.max_recipients: must be at least 1", ""}}},

	// Durations.
	{"duration without unit", "queue:\n  max_age: 120\n", []want{{2, "queue.max_age:", `"120" is not a Go duration`}}},
	{"duration in days", "queue:\n  max_age: 5d\n", []want{{2, "queue.max_age:", "no day unit"}}},
	{"duration words", "portal:\n  message_ttl: 30 days\n", []want{{2, "portal.message_ttl:", "not a Go duration"}}},
	{"duration zero", "keys:\n  cache_ttl: 0s\n", []want{{2, "keys.cache_ttl: must be positive", ""}}},
	{"duration negative", "smtp:\n  read_timeout: -1m\n", []want{{2, "smtp.read_timeout: must be positive", ""}}},
	{"duration list", "smtp:\n  write_timeout: [1m]\n", []want{{2, "smtp.write_timeout: expected a duration", "a list"}}},
	{"retry empty", "queue:\n  retry: []\n", []want{{2, "queue.retry: must list at least one delay", ""}}},
	{"retry not a list", "queue:\n  retry: 1m\n", []want{{2, "queue.retry: expected a list", ""}}},
	{"retry bad item", "queue:\n  retry:\n    - 1m\n    - soon\n    - 0s\n", []want{
		{4, "queue.retry:", `"soon" is not a Go duration`},
		{5, "queue.retry: must be positive", ""},
	}},

	// Enumerations.
	{"delivery mode", "delivery:\n  mode: smtp\n", []want{{2, `delivery.mode: "smtp" is not one of mx, relay, dir`, ""}}},
	{"relay_tls", "delivery:\n  relay_tls: strict\n", []want{{2, `delivery.relay_tls: "strict" is not one of none, opportunistic, verify`, ""}}},
	{"storage driver", "storage:\n  driver: mysql\n", []want{{2, `storage.driver: "mysql" is not one of sqlite, postgres`, ""}}},
	{"log level", "log:\n  level: verbose\n", []want{{2, `log.level: "verbose" is not one of debug, info, warn, error`, ""}}},
	{"log format", "log:\n  format: xml\n", []want{{2, `log.format: "xml" is not one of json, text`, ""}}},

	// Networks and names.
	{"bad CIDR", "smtp:\n  allowed_networks:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n    - nonsense\n", []want{
		{4, `smtp.allowed_networks: "10.0.0.0/33" is not an IP address or CIDR prefix`, ""},
		{5, `smtp.allowed_networks: "nonsense" is not an IP address or CIDR prefix`, ""},
	}},
	{"IPv6 zone", "smtp:\n  allowed_networks: [\"fe80::1%eth0\"]\n", []want{{2, "smtp.allowed_networks:", "zones"}}},
	{"no networks", "smtp:\n  allowed_networks: []\n", []want{{2, "smtp.allowed_networks: is empty", ""}}},
	{"hostname invalid", "hostname: gw_example.org\n", []want{{1, `hostname: "gw_example.org" is not a valid domain name`, ""}}},
	{"hostname empty", "hostname: \"\"\n", []want{{1, "hostname: must not be empty", ""}}},
	{"hostname IP", "hostname: 192.0.2.1\n", []want{{1, "hostname:", "all digits"}}},
	{"hostname non-ASCII", "hostname: bücher.example\n", []want{{1, "hostname:", "A-label"}}},
	{"sender domain invalid", "smtp:\n  sender_domains:\n    - ok.example\n    - -bad.example\n    - \"a..b\"\n", []want{
		{4, `smtp.sender_domains: "-bad.example" is not a valid domain name`, "hyphen"},
		{5, `smtp.sender_domains: "a..b" is not a valid domain name`, "empty label"},
	}},

	// Listen and host:port addresses.
	{"listen without port", "smtp:\n  listen: 0.0.0.0\n", []want{{2, "smtp.listen:", "not host:port"}}},
	{"listen port zero", "smtp:\n  listen: \":0\"\n", []want{{2, "smtp.listen: port", "1 to 65535"}}},
	{"listen named port", "smtp:\n  listen: \":smtp\"\n", []want{{2, "smtp.listen: port", ""}}},
	{"listen empty", "smtp:\n  listen: \"\"\n", []want{{2, "smtp.listen: must be set", ""}}},
	{"listen bad host", "admin:\n  listen: \"bad_host:9090\"\n", []want{{2, "admin.listen: host", ""}}},
	{"portal listen", "portal:\n  listen: \"127.0.0.1:99999\"\n", []want{{2, "portal.listen: port", ""}}},
	{"relay required", "delivery:\n  mode: relay\n", []want{{2, "delivery.relay: required when delivery.mode is relay", ""}}},
	{"relay without port", "delivery:\n  relay: smtp.example.net\n", []want{{2, "delivery.relay:", "not host:port"}}},
	{"relay without host", "delivery:\n  mode: relay\n  relay: \":587\"\n", []want{{3, "delivery.relay:", "no host"}}},
	{"dns without port", "delivery:\n  dns: 127.0.0.1\n", []want{{2, "delivery.dns:", "not host:port"}}},

	// Referenced files.
	{"missing file", "smtp:\n  client_ca: nope.pem\n", []want{{2, "smtp.client_ca: $DIR/nope.pem does not exist", ""}}},
	{"directory for a file", "smtp:\n  auth_users_file: adir\n", []want{{2, "smtp.auth_users_file: $DIR/adir is a directory", ""}}},
	{"device for a file", "policy: /dev/null\n", []want{{1, "policy: /dev/null is not a regular file", ""}}},
	{"policy missing", "policy: configs/policy.yaml\n", []want{{1, "policy: $DIR/configs/policy.yaml does not exist", ""}}},
	{"client_ca not PEM", "smtp:\n  client_ca: junk.txt\n", []want{{2, "smtp.client_ca: $DIR/junk.txt:", "no PEM CERTIFICATE"}}},
	{"client_ca a key", "smtp:\n  client_ca: certs/a-key.pem\n", []want{{2, "smtp.client_ca:", "no PEM CERTIFICATE"}}},
	{"tls_roots not PEM", "delivery:\n  tls_roots: junk.txt\n", []want{{2, "delivery.tls_roots:", "no PEM CERTIFICATE"}}},
	{"smime_roots missing", "keys:\n  smime_roots: certs/roots.pem\n", []want{{2, "keys.smime_roots:", "does not exist"}}},
	{"tls_cert without key", "smtp:\n  tls_cert: certs/a.pem\n", []want{{2, "smtp.tls_cert: set without smtp.tls_key", ""}}},
	{"tls_key without cert", "smtp:\n  require_tls: true\n  tls_key: certs/a-key.pem\n", []want{{3, "smtp.tls_key: set without smtp.tls_cert", ""}}},
	{"tls pair mismatch", "smtp:\n  tls_cert: certs/a.pem\n  tls_key: certs/b-key.pem\n", []want{{2, "smtp.tls_cert, smtp.tls_key: do not load as a certificate and key pair", ""}}},
	{"tls pair both missing", "smtp:\n  tls_cert: x.pem\n  tls_key: y.pem\n", []want{
		{2, "smtp.tls_cert: $DIR/x.pem does not exist", ""},
		{3, "smtp.tls_key: $DIR/y.pem does not exist", ""},
	}},
	{"portal tls mismatch", "portal:\n  tls_key: certs/a-key.pem\n  tls_cert: junk.txt\n", []want{{3, "portal.tls_cert, portal.tls_key: do not load", ""}}},
	{"signing smime half", "keys:\n  signing:\n    smime_key: certs/a-key.pem\n", []want{{3, "keys.signing.smime_key: set without keys.signing.smime_cert", ""}}},
	{"signing pgp missing", "keys:\n  signing: {pgp_key: org.asc}\n", []want{{2, "keys.signing.pgp_key: $DIR/org.asc does not exist", ""}}},
	{"pgp_dir missing", "keys:\n  pgp_dir: certs/nope\n", []want{{2, "keys.pgp_dir: directory $DIR/certs/nope does not exist", ""}}},
	{"smime_dir is a file", "keys:\n  smime_dir: afile\n", []want{{2, "keys.smime_dir: $DIR/afile is not a directory", ""}}},

	// Folders the server creates.
	{"queue dir is a file", "queue:\n  dir: afile\n", []want{{2, "queue.dir: $DIR/afile exists and is not a directory", ""}}},
	{"queue dir under a file", "queue:\n  dir: afile/q\n", []want{{2, "queue.dir: $DIR/afile/q cannot be created: $DIR/afile is not a directory", ""}}},
	{"delivery dir is a file", "delivery:\n  dir: junk.txt\n", []want{{2, "delivery.dir: $DIR/junk.txt exists", ""}}},
	{"delivery dir is the queue", "queue:\n  dir: spool\ndelivery:\n  mode: dir\n  dir: spool\n", []want{{5, "delivery.dir: must differ from queue.dir", ""}}},
	{"audit path is a directory", "audit:\n  path: adir\n", []want{{2, "audit.path: $DIR/adir is a directory", ""}}},
	{"audit folder is a file", "audit:\n  path: afile/audit.jsonl\n", []want{{2, "audit.path: folder $DIR/afile exists and is not a directory", ""}}},
	{"audit path empty", "audit:\n  path: \"\"\n", []want{{2, "audit.path: must not be empty", ""}}},
	{"sqlite dsn is a directory", "storage:\n  dsn: adir\n", []want{{2, "storage.dsn: $DIR/adir is a directory", ""}}},
	{"postgres without dsn", "storage:\n  driver: postgres\n", []want{{2, "storage.dsn: required when storage.driver is postgres", ""}}},

	// DKIM.
	{"dkim item not a mapping", "delivery:\n  dkim:\n    - example.org\n", []want{{3, "delivery.dkim[0]: expected a mapping", ""}}},
	{"dkim missing fields", "delivery:\n  dkim:\n    - {domain: example.org}\n", []want{
		{3, "delivery.dkim[0]: selector is required", ""},
		{3, "delivery.dkim[0]: key is required", ""},
	}},
	{"dkim unknown field", "delivery:\n  dkim:\n    - {domain: example.org, selector: s, key: certs/dkim-ed.pem, algo: rsa}\n", []want{{3, `unknown key "delivery.dkim[0].algo"`, ""}}},
	{"dkim bad domain", "delivery:\n  dkim:\n    - domain: example_org\n      selector: s\n      key: certs/dkim-ed.pem\n", []want{{3, `delivery.dkim[0].domain: "example_org" is not a valid domain name`, ""}}},
	{"dkim bad selector", "delivery:\n  dkim:\n    - domain: example.org\n      selector: \"a b\"\n      key: certs/dkim-ed.pem\n", []want{{4, `delivery.dkim[0].selector: "a b" is not a valid selector`, ""}}},
	{"dkim ECDSA key", "delivery:\n  dkim:\n    - domain: example.org\n      selector: s\n      key: certs/dkim-ec.pem\n", []want{{5, "delivery.dkim[0].key: $DIR/certs/dkim-ec.pem: unsupported key type", ""}}},
	{"dkim key not PEM", "delivery:\n  dkim:\n    - domain: example.org\n      selector: s\n      key: junk.txt\n", []want{{5, "delivery.dkim[0].key:", "no PEM block"}}},
	{"dkim key a certificate", "delivery:\n  dkim:\n    - domain: example.org\n      selector: s\n      key: certs/a.pem\n", []want{{5, "delivery.dkim[0].key:", "not a private key"}}},
	{"dkim key missing", "delivery:\n  dkim:\n    - {domain: example.org, selector: s, key: k.pem}\n", []want{{3, "delivery.dkim[0].key: $DIR/k.pem does not exist", ""}}},
	{"dkim duplicate", "delivery:\n  dkim:\n    - {domain: example.org, selector: s, key: certs/dkim-ed.pem}\n    - {domain: EXAMPLE.org, selector: s, key: certs/dkim-rsa.pem}\n", []want{{4, "delivery.dkim[1]: selector s for example.org is already listed at line 3", ""}}},

	// URLs.
	{"keyserver plain http", "keys:\n  keyserver: http://keys.example.org\n", []want{{2, "keys.keyserver:", "must use https"}}},
	{"base_url http", "portal:\n  notify_from: secure@example.org\n  base_url: http://secure.example.org\n  master_key_file: certs/master.key\n", []want{{3, "portal.base_url:", "must use https"}}},
	{"base_url relative", "portal:\n  notify_from: secure@example.org\n  base_url: /secure\n  master_key_file: certs/master.key\n", []want{{3, "portal.base_url:", "not an absolute URL"}}},
	{"base_url ftp", "portal:\n  notify_from: secure@example.org\n  base_url: ftp://secure.example.org\n  master_key_file: certs/master.key\n", []want{{3, "portal.base_url:", "must be an https URL"}}},
	{"base_url query", "portal:\n  notify_from: secure@example.org\n  base_url: https://secure.example.org/?a=b\n  master_key_file: certs/master.key\n", []want{{3, "portal.base_url:", "query"}}},
	{"base_url user", "portal:\n  notify_from: secure@example.org\n  base_url: https://u:p@secure.example.org\n  master_key_file: certs/master.key\n", []want{{3, "portal.base_url:", "user name"}}},
	{"base_url without master key", "portal:\n  notify_from: secure@example.org\n  base_url: https://secure.example.org\n", []want{{3, "portal.master_key_file: required when portal.base_url is set", ""}}},
	{"base_url without notify_from", "portal:\n  base_url: https://secure.example.org\n  master_key_file: certs/master.key\n", []want{{2, "portal.notify_from: required when portal.base_url is set", ""}}},
	{"base_url without listen", "portal:\n  notify_from: secure@example.org\n  base_url: https://secure.example.org\n  master_key_file: certs/master.key\n  listen: \"\"\n", []want{{5, "portal.listen: required when portal.base_url is set", ""}}},
	{"master key short", "portal:\n  master_key_file: certs/short.key\n", []want{{2, "portal.master_key_file: master key is 16 bytes, want 32", ""}}},
	{"master key not base64", "portal:\n  master_key_file: certs/a.pem\n", []want{{2, "portal.master_key_file: master key is not base64", ""}}},
	{"notify_from", "portal:\n  notify_from: not an address\n", []want{{2, `portal.notify_from: "not an address" is not a mail address`, ""}}},

	// LDAP.
	{"ldap scheme", "keys:\n  ldap: {url: \"https://dir.example.org\", base_dn: \"dc=example\"}\n", []want{{2, "keys.ldap.url:", "ldap or ldaps"}}},
	{"ldap without base_dn", "keys:\n  ldap:\n    url: ldaps://dir.example.org\n", []want{{3, "keys.ldap.base_dn: required", ""}}},
	{"ldap filter without %s", "keys:\n  ldap:\n    url: ldap://dir.example.org\n    base_dn: dc=example,dc=org\n    filter: (mail=x)\n", []want{{5, "keys.ldap.filter:", "exactly once"}}},
	{"ldap filter parentheses", "keys:\n  ldap:\n    url: ldap://dir.example.org\n    base_dn: dc=example,dc=org\n    filter: mail=%s\n", []want{{5, "keys.ldap.filter:", "parentheses"}}},

	// A rejected value does not also count as missing.
	{"relay of the wrong type", "delivery:\n  mode: relay\n  relay: [a]\n", []want{{3, "delivery.relay: expected a string", ""}}},
	{"tls_key of the wrong type", "smtp:\n  tls_cert: certs/a.pem\n  tls_key: {a: b}\n", []want{{3, "smtp.tls_key: expected a string", ""}}},
	{"dkim key of the wrong type", "delivery:\n  dkim:\n    - {domain: example.org, selector: s, key: [k]}\n", []want{{3, "delivery.dkim[0].key: expected a string", ""}}},

	// Anchors and merge keys.
	{"merge of a scalar", "hostname: &h gw.example.org\nsmtp:\n  <<: *h\n", []want{{1, "smtp: a merge key (<<) takes a mapping", ""}}},
	{"merged unknown key", "delivery:\n  dkim:\n    - &k {domain: example.org, selector: a, key: certs/dkim-ed.pem}\n    - {<<: *k, selector: b, colour: red}\n", []want{{4, `unknown key "delivery.dkim[1].colour"`, ""}}},
}

func TestProblems(t *testing.T) {
	dir := fixture(t)
	for _, tc := range problemCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml), "c.yaml", dir)
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Parse: got (%v, %v), want *Error", c, err)
			}
			if c != nil {
				t.Errorf("Parse returned a config with an error")
			}
			got := cerr.Problems
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				p := got[i]
				prefix := "c.yaml: "
				if w.line > 0 {
					prefix = "c.yaml:" + strconv.Itoa(w.line) + ": "
				}
				prefix += strings.ReplaceAll(w.prefix, "$DIR", dir)
				if s := p.String(); !strings.HasPrefix(s, prefix) {
					t.Errorf("problem %d = %q, want prefix %q", i, s, prefix)
				}
				if p.File != "c.yaml" || p.Line != w.line {
					t.Errorf("problem %d at %s:%d, want c.yaml:%d", i, p.File, p.Line, w.line)
				}
				if c := strings.ReplaceAll(w.contains, "$DIR", dir); !strings.Contains(p.Msg, c) {
					t.Errorf("problem %d = %q, want it to contain %q", i, p.Msg, c)
				}
			}
		})
	}
}

// TestAllProblemsReported checks that problems anywhere in the file are all
// reported at once, ordered by line.
func TestAllProblemsReported(t *testing.T) {
	dir := fixture(t)
	src := `hostname: gw.example.org
smtp:
  lisen: ":25"
  max_recipients: 0
  allowed_networks: [10.0.0.0/8, 300.1.1.1]
queue:
  retry: [1m, never]
delivery:
  mode: relay
  port: 0
log:
  level: loud
  level: info
`
	_, err := Parse([]byte(src), "p.yaml", dir)
	if err == nil {
		t.Fatal("no error")
	}
	wantLines := []string{
		`p.yaml:3: unknown key "smtp.lisen" (did you mean "smtp.listen"?)`,
		"p.yaml:4: smtp.max_recipients: must be at least 1, got 0",
		`p.yaml:5: smtp.allowed_networks: "300.1.1.1" is not an IP address or CIDR prefix`,
		`p.yaml:7: queue.retry: "never" is not a Go duration`,
		"p.yaml:9: delivery.relay: required when delivery.mode is relay",
		"p.yaml:10: delivery.port: must be between 1 and 65535, got 0",
		`p.yaml:12: log.level: "loud" is not one of debug, info, warn, error`,
		`p.yaml:13: duplicate key "log.level" (first at line 12)`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(wantLines) {
		t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(wantLines), err)
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	dir := fixture(t)
	if err := os.Chmod(dir+"/policy.yaml", 0); err != nil {
		t.Fatal(err)
	}
	_, err := Parse([]byte("log: {}\npolicy: policy.yaml\n"), "c.yaml", dir)
	if err == nil || !strings.HasPrefix(err.Error(), "c.yaml:2: policy: "+dir+"/policy.yaml is not readable") {
		t.Fatalf("got %v", err)
	}
}

func TestProblemString(t *testing.T) {
	for _, tc := range []struct {
		p    Problem
		want string
	}{
		{Problem{File: "a.yaml", Line: 3, Msg: "bad"}, "a.yaml:3: bad"},
		{Problem{File: "a.yaml", Line: 0, Msg: "bad"}, "a.yaml: bad"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.p, got, tc.want)
		}
	}
	e := &Error{Problems: []Problem{{"a", 1, "x"}, {"a", 0, "y"}}}
	if got, want := e.Error(), "a:1: x\na: y"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
