// Package config loads and validates postern's YAML configuration
// (SPEC.md §3).
//
// The file is decoded through a yaml.Node tree that this package walks
// itself, so that every problem — an unknown key, a value of the wrong type,
// a duplicate key, a missing file — is reported with the line of the key
// that caused it, and all problems are reported at once rather than only the
// first. `postern check` prints them as "file:line: problem".
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is a loaded, defaulted and validated configuration. Every path in it
// is absolute: relative paths in the file are resolved against Dir.
type Config struct {
	File string // absolute path of the loaded file
	Dir  string // its folder; relative paths in the file are resolved against it

	Hostname string // default: os.Hostname(); lowercased, without a trailing dot
	SMTP     SMTP
	Queue    Queue
	Delivery Delivery
	Policy   string // absolute path (resolved); "" = built-in defaults
	Keys     Keys
	Portal   Portal
	Storage  Storage
	Audit    Audit
	Admin    Admin
	Log      Log

	// lines maps a dotted key path ("smtp.listen", "delivery.dkim[0].key",
	// "smtp.allowed_networks[2]") to the line where it appears in the file.
	lines map[string]int
	// name is the file name used in problems (as given to Load or Parse).
	name string
}

// SMTP is the `smtp:` section: the ingress listener.
type SMTP struct {
	Listen          string         // default "0.0.0.0:25"
	TLSCert, TLSKey string         // abs paths or ""
	RequireTLS      bool           // refuse MAIL before STARTTLS
	MaxMessageBytes int64          // default 157286400
	MaxRecipients   int            // default 1000
	AllowedNetworks []netip.Prefix // default [127.0.0.0/8, ::1/128]; a bare IP means /32 or /128
	ClientCA        string         // abs path or ""
	ClientCertNames []string       // lowercased
	AuthUsersFile   string         // abs path or ""
	SenderDomains   []string       // lowercased, without a trailing dot; empty: any

	// Extensions to SPEC §3 (YAML keys under smtp:).
	MaxConnections int           // yaml max_connections, default 500
	MaxLineLength  int           // yaml max_line_length, default 32768
	ReadTimeout    time.Duration // yaml read_timeout, default 5m
	WriteTimeout   time.Duration // yaml write_timeout, default 5m
}

// Queue is the `queue:` section.
type Queue struct {
	Dir            string          // default "var/queue" (resolved)
	Retry          []time.Duration // default [1m,5m,15m,30m,1h,2h,4h]; the last repeats
	MaxAge         time.Duration   // default 120h
	Concurrency    int             // default 64
	PerDestination int             // yaml per_destination (extension), default 4: parallel connections per recipient domain
}

// Delivery is the `delivery:` section.
type Delivery struct {
	Mode     string // mx | relay | dir, default mx
	Relay    string // host:port, required when Mode is relay
	RelayTLS string // none | opportunistic | verify, default verify
	Dir      string // default "var/outbox" (resolved)
	Port     int    // default 25
	DNS      string // "host:port" or "" (system resolver)
	TLSRoots string // abs path or ""
	MTASTS   bool   // yaml mta_sts, default true
	DANE     bool   // default true
	DKIM     []DKIMKey
}

// DKIMKey is one entry of delivery.dkim.
type DKIMKey struct{ Domain, Selector, Key string } // Domain lowercased; Key resolved path

// Keys is the `keys:` section.
type Keys struct {
	PGPDir, SMIMEDir, SMIMERoots string // abs paths or ""
	WKD                          bool   // default true
	Keyserver                    string // default "https://keys.openpgp.org"; "" disables
	LDAP                         LDAP
	CacheTTL                     time.Duration // default 1h
	Signing                      Signing
}

// LDAP is keys.ldap; an empty URL disables LDAP look-ups.
type LDAP struct{ URL, BaseDN, Filter string } // yaml url, base_dn, filter; filter default "(mail=%s)"

// Signing is keys.signing; all paths are absolute or "".
type Signing struct{ SMIMECert, SMIMEKey, PGPKey string } // yaml smime_cert, smime_key, pgp_key

// Portal is the `portal:` section. The portal is enabled when BaseURL is set
// (see Enabled).
type Portal struct {
	Listen, BaseURL, TLSCert, TLSKey, MasterKeyFile string        // listen default "127.0.0.1:8443"; BaseURL without a trailing "/"
	MessageTTL                                      time.Duration // default 720h
	NotifyFrom                                      string
	// TrustedProxies (extension, yaml trusted_proxies): reverse proxies
	// whose X-Forwarded-For names the client for the portal's per-IP
	// limits. Empty: the connecting address is the client.
	TrustedProxies []netip.Prefix
}

// Storage is the `storage:` section.
type Storage struct{ Driver, DSN string } // driver sqlite|postgres default sqlite; dsn default "var/postern.db", resolved for sqlite only

// Audit is the `audit:` section.
type Audit struct{ Path string } // default "var/audit.jsonl" (resolved)

// Admin is the `admin:` section.
type Admin struct{ Listen string } // default "127.0.0.1:9090"; "" disables

// Log is the `log:` section.
type Log struct{ Level, Format string } // level debug|info|warn|error default info; format json|text default json

// Defaults of SPEC §3 and of the extensions.
const (
	DefaultSMTPListen      = "0.0.0.0:25"
	DefaultMaxMessageBytes = 157286400 // 150 MiB, Exchange Online's ceiling
	DefaultMaxRecipients   = 1000
	DefaultMaxConnections  = 500
	DefaultMaxLineLength   = 32768
	DefaultSMTPTimeout     = 5 * time.Minute
	DefaultQueueDir        = "var/queue"
	DefaultMaxAge          = 120 * time.Hour
	DefaultConcurrency     = 64
	DefaultPerDestination  = 4
	DefaultDeliveryDir     = "var/outbox"
	DefaultDeliveryPort    = 25
	DefaultKeyserver       = "https://keys.openpgp.org"
	DefaultLDAPFilter      = "(mail=%s)"
	DefaultCacheTTL        = time.Hour
	DefaultPortalListen    = "127.0.0.1:8443"
	DefaultMessageTTL      = 720 * time.Hour
	DefaultSQLiteDSN       = "var/postern.db"
	DefaultAuditPath       = "var/audit.jsonl"
	DefaultAdminListen     = "127.0.0.1:9090"

	// minLineLength is the smallest smtp.max_line_length accepted: RFC 5321
	// §4.5.3.1.6 requires text lines of 1000 octets including CRLF.
	minLineLength = 1000
	// maxFileBytes bounds what the validator reads of a referenced file.
	maxFileBytes = 16 << 20
)

// DefaultRetry returns the default queue.retry schedule.
func DefaultRetry() []time.Duration {
	return []time.Duration{
		time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 4 * time.Hour,
	}
}

// DefaultAllowedNetworks returns the default smtp.allowed_networks: loopback.
func DefaultAllowedNetworks() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// defaults returns a Config with every default of SPEC §3 set and paths not
// yet resolved.
func defaults() *Config {
	return &Config{
		SMTP: SMTP{
			Listen:          DefaultSMTPListen,
			MaxMessageBytes: DefaultMaxMessageBytes,
			MaxRecipients:   DefaultMaxRecipients,
			AllowedNetworks: DefaultAllowedNetworks(),
			MaxConnections:  DefaultMaxConnections,
			MaxLineLength:   DefaultMaxLineLength,
			ReadTimeout:     DefaultSMTPTimeout,
			WriteTimeout:    DefaultSMTPTimeout,
		},
		Queue: Queue{
			Dir:            DefaultQueueDir,
			Retry:          DefaultRetry(),
			MaxAge:         DefaultMaxAge,
			Concurrency:    DefaultConcurrency,
			PerDestination: DefaultPerDestination,
		},
		Delivery: Delivery{
			Mode:     "mx",
			RelayTLS: "verify",
			Dir:      DefaultDeliveryDir,
			Port:     DefaultDeliveryPort,
			MTASTS:   true,
			DANE:     true,
		},
		Keys: Keys{
			WKD:       true,
			Keyserver: DefaultKeyserver,
			LDAP:      LDAP{Filter: DefaultLDAPFilter},
			CacheTTL:  DefaultCacheTTL,
		},
		Portal: Portal{
			Listen:     DefaultPortalListen,
			MessageTTL: DefaultMessageTTL,
		},
		Storage: Storage{Driver: "sqlite", DSN: DefaultSQLiteDSN},
		Audit:   Audit{Path: DefaultAuditPath},
		Admin:   Admin{Listen: DefaultAdminListen},
		Log:     Log{Level: "info", Format: "json"},
		lines:   map[string]int{},
	}
}

// Problem is one thing wrong with a configuration file.
type Problem struct {
	File string
	Line int // 1-based; 0 when the problem has no single line
	Msg  string
}

// String formats the problem as "file:line: msg", or "file: msg" when Line
// is 0.
func (p Problem) String() string {
	if p.Line <= 0 {
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
}

// Error lists every problem found in a configuration file.
type Error struct {
	Problems []Problem
}

// Error joins the problems, one per line.
func (e *Error) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// Load reads the file at path, parses it strictly, applies defaults,
// resolves relative paths against the file's folder and validates the
// result. On any problem it returns (nil, *Error) listing all problems
// found, each with its line. Problems name the file as path was given;
// Config.File is its absolute form.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: fmt.Sprintf("resolve path: %v", err)}}}
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: fmt.Sprintf("read config: %v", err)}}}
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: fmt.Sprintf("read config: %v", err)}}}
	} else if !st.Mode().IsRegular() {
		return nil, &Error{Problems: []Problem{{File: path, Msg: "read config: not a regular file"}}}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: fmt.Sprintf("read config: %v", err)}}}
	}
	if len(data) > maxFileBytes {
		return nil, &Error{Problems: []Problem{{File: path, Msg: fmt.Sprintf("read config: larger than %d bytes", maxFileBytes)}}}
	}
	c, err := Parse(data, path, filepath.Dir(abs))
	if err != nil {
		return nil, err
	}
	c.File = abs
	return c, nil
}

// Parse is Load on bytes: file is the name used in problems and stored in
// Config.File, dir the folder relative paths are resolved against (made
// absolute if it is not). Referenced files are checked on disk as Load does.
func Parse(data []byte, file, dir string) (*Config, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: file, Msg: fmt.Sprintf("resolve folder %q: %v", dir, err)}}}
	}
	c := defaults()
	c.File = file
	c.name = file
	c.Dir = absDir
	d := &decoder{file: file, cfg: c}

	root, perr := parseYAML(data)
	if perr != nil {
		d.problems = append(d.problems, Problem{File: file, Line: perr.line, Msg: perr.msg})
		return nil, d.err()
	}
	if root != nil {
		d.root(root)
	}
	d.finish()
	if len(d.problems) > 0 {
		return nil, d.err()
	}
	return c, nil
}

// yamlError is a syntax error from the YAML parser, with its line if the
// parser gave one.
type yamlError struct {
	line int
	msg  string
}

// parseYAML parses exactly one YAML document. It returns a nil node for an
// empty stream (a file that is empty or holds only comments).
func parseYAML(data []byte) (*yaml.Node, *yamlError) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, syntaxError(err, data)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(err, data)
	default:
		return nil, &yamlError{line: next.Line, msg: "more than one YAML document; a config file holds one"}
	}
	return &doc, nil
}

// isParserProblem reports whether msg is one of yaml.v3's parser (as
// opposed to scanner) error messages. For those yaml.v3 reports the 0-based
// line of the mark, so the 1-based line is one more; scanner errors already
// carry the 1-based line.
func isParserProblem(msg string) bool {
	switch msg {
	case "did not find expected ',' or ']'",
		"did not find expected ',' or '}'",
		"did not find expected '-' indicator",
		"did not find expected <document start>",
		"did not find expected <stream-start>",
		"did not find expected key",
		"did not find expected node content",
		"found duplicate %TAG directive",
		"found duplicate %YAML directive",
		"found incompatible YAML document",
		"found undefined tag handle":
		return true
	}
	return false
}

// syntaxError turns a yaml.v3 error ("yaml: line 3: did not find …") into a
// line and a message.
func syntaxError(err error, data []byte) *yamlError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if v, convErr := strconv.Atoi(n); convErr == nil && v > 0 {
				line, msg = v, after
			}
		}
	}
	switch {
	case isParserProblem(msg):
		// No line at all means both marks were on the first line.
		line++
	case line == 0 && strings.HasPrefix(msg, "unknown anchor '"):
		// yaml.v3 gives no line here; find the first use of the alias.
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 && name != "" {
			line = bytes.Count(data[:i], []byte("\n")) + 1
		}
	}
	return &yamlError{line: line, msg: "YAML syntax: " + msg}
}

// Line returns the line of a key in the file, by its dotted path
// ("smtp.listen", "policy", "delivery.dkim[0].key",
// "smtp.allowed_networks[1]"), or 0 when the key is not in the file. Callers
// that validate further (the policy file a config names, say) use it to
// report "file:line:" like Load does.
func (c *Config) Line(key string) int {
	return c.lines[key]
}

// Problem returns a Problem for the key at the dotted path, with its line
// when the key is in the file.
func (c *Config) Problem(key, format string, args ...any) Problem {
	return Problem{File: c.name, Line: c.Line(key), Msg: key + ": " + fmt.Sprintf(format, args...)}
}

// ClientCertRequired reports whether SMTP clients must present a verified
// certificate to relay: when smtp.client_ca is set, or when
// smtp.client_cert_names restricts relaying to named certificates (which
// then verify against the system roots if client_ca is unset).
func (c *Config) ClientCertRequired() bool {
	return c.SMTP.ClientCA != "" || len(c.SMTP.ClientCertNames) > 0
}

// Allowed reports whether a client at addr may relay by network: it lies in
// one of AllowedNetworks. IPv4-mapped IPv6 addresses are compared as IPv4.
func (s SMTP) Allowed(addr netip.Addr) bool {
	addr = addr.Unmap().WithZone("")
	for _, p := range s.AllowedNetworks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// SenderDomainAllowed reports whether MAIL FROM may use domain: any domain
// when SenderDomains is empty, else one of them (case-insensitive, trailing
// dot ignored).
func (s SMTP) SenderDomainAllowed(domain string) bool {
	if len(s.SenderDomains) == 0 {
		return true
	}
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	for _, d := range s.SenderDomains {
		if d == domain {
			return true
		}
	}
	return false
}

// RetryDelay returns how long to wait before attempt n+1 after n failed
// attempts (n ≥ 1): Retry[n-1], and the last entry once the list is used up
// ("then every 4h"). n < 1 is treated as 1.
func (q Queue) RetryDelay(n int) time.Duration {
	if len(q.Retry) == 0 {
		return DefaultRetry()[0]
	}
	if n < 1 {
		n = 1
	}
	if n > len(q.Retry) {
		return q.Retry[len(q.Retry)-1]
	}
	return q.Retry[n-1]
}

// Enabled reports whether the portal is configured (portal.base_url set),
// which makes the portal method available (SPEC §4).
func (p Portal) Enabled() bool { return p.BaseURL != "" }

// SlogLevel returns Log.Level as a slog level.
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}
