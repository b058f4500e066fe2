package config

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks the yaml.Node tree of a config file into a Config, recording
// the line of every key and collecting every problem instead of stopping at
// the first.
//
// A key given without a value (YAML null) keeps its default. Anchors and
// aliases are followed; merge keys ("<<") are supported, explicit keys
// winning over merged ones as in YAML's merge-key convention. The walk is
// driven by the fixed schema below, so cyclic or exponentially aliased
// documents cannot make it loop or blow up.
type decoder struct {
	file     string
	cfg      *Config
	problems []Problem
	// failed holds the paths of keys whose value was rejected, so that
	// checks depending on them ("required when …") do not pile on.
	failed map[string]bool
}

// setter decodes the value v of the key k found at the dotted path.
type setter func(path string, k, v *yaml.Node)

// field is one known key of a mapping.
type field struct {
	name string
	set  setter
}

func (d *decoder) addf(line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// badf reports a problem with the value of the key at path.
func (d *decoder) badf(path string, line int, format string, args ...any) {
	if d.failed == nil {
		d.failed = map[string]bool{}
	}
	d.failed[path] = true
	d.addf(line, format, args...)
}

// err returns the problems as an *Error, ordered by line.
func (d *decoder) err() error {
	sort.SliceStable(d.problems, func(i, j int) bool { return d.problems[i].Line < d.problems[j].Line })
	return &Error{Problems: d.problems}
}

// line returns the line of the key at path, 0 if it is not in the file.
func (d *decoder) line(path string) int { return d.cfg.lines[path] }

// firstLine returns the line of the first of paths present in the file.
func (d *decoder) firstLine(paths ...string) int {
	for _, p := range paths {
		if l := d.cfg.lines[p]; l > 0 {
			return l
		}
	}
	return 0
}

func (d *decoder) present(path string) bool { _, ok := d.cfg.lines[path]; return ok }

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 8; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names the kind of a node for messages ("got a list").
func describe(n *yaml.Node) string {
	n = resolve(n)
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!bool":
			return fmt.Sprintf("the boolean %s", n.Value)
		case "!!int", "!!float":
			return fmt.Sprintf("the number %s", n.Value)
		default:
			return fmt.Sprintf("the string %q", truncate(n.Value))
		}
	case yaml.AliasNode:
		return "an unresolvable alias"
	}
	return "an unexpected YAML node"
}

// truncate shortens a value quoted in a message.
func truncate(s string) string {
	const max = 60
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// root walks the document node.
func (d *decoder) root(doc *yaml.Node) {
	n := doc
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	n = resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.addf(n.Line, "the document must be a mapping of keys (hostname:, smtp:, …), got %s", describe(n))
		return
	}
	d.mapping("", nil, n, d.rootFields())
}

// mapping decodes a mapping node against its known fields. k is the key
// whose value is n (nil for the document root).
func (d *decoder) mapping(path string, k, n *yaml.Node, fields []field) {
	n = resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.badf(path, keyLine(k, n), "%s: expected a mapping, got %s", path, describe(n))
		return
	}
	seen := map[string]int{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Kind == yaml.ScalarNode && key.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		name, ok := d.keyName(path, key)
		if !ok {
			continue
		}
		if first, dup := seen[name]; dup {
			d.addf(key.Line, "duplicate key %q (first at line %d)", join(path, name), first)
			continue
		}
		seen[name] = key.Line
		d.field(path, name, key, val, fields)
	}
	if len(merges) == 0 {
		return
	}
	// YAML merge keys (https://yaml.org/type/merge.html): keys of the merged
	// mappings apply unless given explicitly; among merged mappings the
	// first wins. Each mapping node is expanded at most once.
	visited := map[*yaml.Node]bool{n: true}
	var pending []*yaml.Node
	for _, m := range merges {
		pending = append(pending, mergeSources(m)...)
	}
	for len(pending) > 0 {
		m := resolve(pending[0])
		pending = pending[1:]
		if m == nil || visited[m] {
			continue
		}
		visited[m] = true
		if m.Kind != yaml.MappingNode {
			d.addf(m.Line, "%s: a merge key (<<) takes a mapping or a list of mappings, got %s", displayPath(path), describe(m))
			continue
		}
		var nested []*yaml.Node
		for i := 0; i+1 < len(m.Content); i += 2 {
			key, val := m.Content[i], m.Content[i+1]
			if key.Kind == yaml.ScalarNode && key.ShortTag() == "!!merge" {
				nested = append(nested, mergeSources(val)...)
				continue
			}
			name, ok := d.keyName(path, key)
			if !ok {
				continue
			}
			if _, done := seen[name]; done {
				continue
			}
			seen[name] = key.Line
			d.field(path, name, key, val, fields)
		}
		pending = append(pending, nested...)
	}
}

// mergeSources returns the mappings a merge value names: itself, or the
// items of a list.
func mergeSources(v *yaml.Node) []*yaml.Node {
	v = resolve(v)
	if v != nil && v.Kind == yaml.SequenceNode {
		return v.Content
	}
	return []*yaml.Node{v}
}

func displayPath(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

// keyLine is the line to report for a problem with value v of key k.
func keyLine(k, v *yaml.Node) int {
	if k != nil {
		return k.Line
	}
	if v != nil {
		return v.Line
	}
	return 0
}

// keyName returns the key's text; keys must be plain scalars.
func (d *decoder) keyName(path string, key *yaml.Node) (string, bool) {
	key = resolve(key)
	if key == nil || key.Kind != yaml.ScalarNode || isNull(key) {
		line := 0
		if key != nil {
			line = key.Line
		}
		d.addf(line, "%s: keys must be strings, got %s", displayPath(path), describe(key))
		return "", false
	}
	return key.Value, true
}

// field dispatches one key to its setter, or reports it as unknown.
func (d *decoder) field(path, name string, k, v *yaml.Node, fields []field) {
	full := join(path, name)
	for _, f := range fields {
		if f.name == name {
			d.cfg.lines[full] = k.Line
			f.set(full, k, v)
			return
		}
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	if s := suggest(name, names); s != "" {
		d.addf(k.Line, "unknown key %q (did you mean %q?)", full, join(path, s))
		return
	}
	d.addf(k.Line, "unknown key %q", full)
}

// scalar returns the scalar value of v; ok is false when v is null (keep the
// default) or not a scalar (reported).
func (d *decoder) scalar(path string, k, v *yaml.Node, want string) (*yaml.Node, bool) {
	v = resolve(v)
	if isNull(v) {
		return nil, false
	}
	if v.Kind != yaml.ScalarNode {
		d.badf(path, keyLine(k, v), "%s: expected %s, got %s", path, want, describe(v))
		return nil, false
	}
	return v, true
}

func (d *decoder) str(dst *string) setter {
	return func(path string, k, v *yaml.Node) {
		if s, ok := d.scalar(path, k, v, "a string"); ok {
			*dst = s.Value
		}
	}
}

// nonEmptyStr is str for a key that, when given, must not be "".
func (d *decoder) nonEmptyStr(dst *string) setter {
	return func(path string, k, v *yaml.Node) {
		s, ok := d.scalar(path, k, v, "a string")
		if !ok {
			return
		}
		if strings.TrimSpace(s.Value) == "" {
			d.badf(path, keyLine(k, s), "%s: must not be empty", path)
			return
		}
		*dst = s.Value
	}
}

// enum decodes a string that must be one of allowed (case-insensitive;
// stored lowercased).
func (d *decoder) enum(dst *string, allowed ...string) setter {
	return func(path string, k, v *yaml.Node) {
		s, ok := d.scalar(path, k, v, "one of "+strings.Join(allowed, ", "))
		if !ok {
			return
		}
		val := strings.ToLower(strings.TrimSpace(s.Value))
		for _, a := range allowed {
			if val == a {
				*dst = val
				return
			}
		}
		d.badf(path, keyLine(k, s), "%s: %q is not one of %s", path, truncate(s.Value), strings.Join(allowed, ", "))
	}
}

func (d *decoder) boolean(dst *bool) setter {
	return func(path string, k, v *yaml.Node) {
		s, ok := d.scalar(path, k, v, "true or false")
		if !ok {
			return
		}
		var b bool
		if s.ShortTag() != "!!bool" || s.Decode(&b) != nil {
			d.badf(path, keyLine(k, s), "%s: expected true or false, got %s", path, describe(s))
			return
		}
		*dst = b
	}
}

// integer decodes a whole number in [min, max].
func (d *decoder) integer(path string, k, v *yaml.Node, min, max int64) (int64, bool) {
	s, ok := d.scalar(path, k, v, "a whole number")
	if !ok {
		return 0, false
	}
	var i int64
	if s.ShortTag() != "!!int" || s.Decode(&i) != nil {
		d.badf(path, keyLine(k, s), "%s: expected a whole number, got %s", path, describe(s))
		return 0, false
	}
	if i < min || i > max {
		if max == math.MaxInt32 || max == math.MaxInt64 {
			d.badf(path, keyLine(k, s), "%s: must be at least %d, got %d", path, min, i)
		} else {
			d.badf(path, keyLine(k, s), "%s: must be between %d and %d, got %d", path, min, max, i)
		}
		return 0, false
	}
	return i, true
}

func (d *decoder) int64v(dst *int64, min int64) setter {
	return func(path string, k, v *yaml.Node) {
		if i, ok := d.integer(path, k, v, min, math.MaxInt64); ok {
			*dst = i
		}
	}
}

func (d *decoder) intv(dst *int, min, max int64) setter {
	return func(path string, k, v *yaml.Node) {
		if i, ok := d.integer(path, k, v, min, max); ok {
			*dst = int(i)
		}
	}
}

// parseDuration parses a Go duration that must be positive.
func parseDuration(s string) (time.Duration, error) {
	dur, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		hint := `a Go duration such as "90s", "15m" or "4h"`
		if strings.HasSuffix(strings.TrimSpace(s), "d") {
			hint += "; there is no day unit, use hours (120h)"
		}
		return 0, fmt.Errorf("%q is not %s", truncate(s), hint)
	}
	if dur <= 0 {
		return 0, fmt.Errorf("must be positive, got %q", truncate(s))
	}
	return dur, nil
}

func (d *decoder) duration(dst *time.Duration) setter {
	return func(path string, k, v *yaml.Node) {
		s, ok := d.scalar(path, k, v, "a duration")
		if !ok {
			return
		}
		dur, err := parseDuration(s.Value)
		if err != nil {
			d.badf(path, keyLine(k, s), "%s: %v", path, err)
			return
		}
		*dst = dur
	}
}

// list calls each for every item of a sequence value, with the item's path
// ("smtp.allowed_networks[2]"). It returns false when v is null (keep the
// default) or not a list (reported).
func (d *decoder) list(path string, k, v *yaml.Node, each func(itemPath string, item *yaml.Node)) bool {
	v = resolve(v)
	if isNull(v) {
		return false
	}
	if v.Kind != yaml.SequenceNode {
		d.badf(path, keyLine(k, v), "%s: expected a list, got %s", path, describe(v))
		return false
	}
	for i, item := range v.Content {
		ip := fmt.Sprintf("%s[%d]", path, i)
		r := resolve(item)
		if r != nil {
			d.cfg.lines[ip] = item.Line
		}
		each(ip, r)
	}
	return true
}

// listScalar returns a list item's text, reporting items that are not
// non-empty scalars.
func (d *decoder) listScalar(listPath string, item *yaml.Node, want string) (string, bool) {
	if item == nil || item.Kind != yaml.ScalarNode || isNull(item) || strings.TrimSpace(item.Value) == "" {
		line := 0
		if item != nil {
			line = item.Line
		}
		d.addf(line, "%s: each item must be %s, got %s", listPath, want, describe(item))
		return "", false
	}
	return strings.TrimSpace(item.Value), true
}

func (d *decoder) strList(dst *[]string, lower bool) setter {
	return func(path string, k, v *yaml.Node) {
		var out []string
		if !d.list(path, k, v, func(_ string, item *yaml.Node) {
			if s, ok := d.listScalar(path, item, "a string"); ok {
				if lower {
					s = strings.ToLower(s)
				}
				out = append(out, s)
			}
		}) {
			return
		}
		if out == nil {
			out = []string{}
		}
		*dst = out
	}
}

// domainList decodes a list of domain names, lowercased and without a
// trailing dot.
func (d *decoder) domainList(dst *[]string) setter {
	return func(path string, k, v *yaml.Node) {
		out := []string{}
		if !d.list(path, k, v, func(_ string, item *yaml.Node) {
			s, ok := d.listScalar(path, item, "a domain name")
			if !ok {
				return
			}
			name := normalizeDomain(s)
			if err := checkDomain(name); err != nil {
				d.addf(item.Line, "%s: %q is not a valid domain name: %v", path, truncate(s), err)
				return
			}
			out = append(out, name)
		}) {
			return
		}
		*dst = out
	}
}

func (d *decoder) durationList(dst *[]time.Duration) setter {
	return func(path string, k, v *yaml.Node) {
		out := []time.Duration{}
		bad := false
		if !d.list(path, k, v, func(_ string, item *yaml.Node) {
			s, ok := d.listScalar(path, item, "a duration")
			if !ok {
				bad = true
				return
			}
			dur, err := parseDuration(s)
			if err != nil {
				bad = true
				d.addf(item.Line, "%s: %v", path, err)
				return
			}
			out = append(out, dur)
		}) {
			return
		}
		if len(out) == 0 && !bad {
			d.badf(path, keyLine(k, v), "%s: must list at least one delay", path)
			return
		}
		*dst = out
	}
}

// parseNetwork parses an allowed_networks entry: a CIDR prefix, or a bare
// address meaning /32 (IPv4) or /128 (IPv6). Host bits are masked off.
func parseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("IPv6 zones are not allowed")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, netipReason(err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, netipReason(err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// netipReason drops the `netip.ParseX("input"): ` prefix of a netip error.
func netipReason(err error) error {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, "): "); ok {
		return fmt.Errorf("%s", after)
	}
	return err
}

func (d *decoder) networks(dst *[]netip.Prefix) setter {
	return func(path string, k, v *yaml.Node) {
		out := []netip.Prefix{}
		bad := false
		if !d.list(path, k, v, func(_ string, item *yaml.Node) {
			s, ok := d.listScalar(path, item, "an IP address or CIDR prefix")
			if !ok {
				bad = true
				return
			}
			p, err := parseNetwork(s)
			if err != nil {
				bad = true
				d.addf(item.Line, "%s: %q is not an IP address or CIDR prefix: %v", path, truncate(s), err)
				return
			}
			out = append(out, p)
		}) {
			return
		}
		if len(out) == 0 && !bad {
			// SPEC §8: nothing is relayed for clients outside
			// allowed_networks, so an empty list would refuse everyone.
			d.badf(path, keyLine(k, v), "%s: is empty, so no client could relay; list the networks of your mail system (0.0.0.0/0 and ::/0 with client_ca or auth_users_file to accept any address)", path)
			return
		}
		*dst = out
	}
}

func (d *decoder) section(fields func() []field) setter {
	return func(path string, k, v *yaml.Node) { d.mapping(path, k, v, fields()) }
}

func (d *decoder) rootFields() []field {
	c := d.cfg
	return []field{
		{"hostname", d.nonEmptyStr(&c.Hostname)},
		{"smtp", d.section(d.smtpFields)},
		{"queue", d.section(d.queueFields)},
		{"delivery", d.section(d.deliveryFields)},
		{"policy", d.str(&c.Policy)},
		{"keys", d.section(d.keysFields)},
		{"portal", d.section(d.portalFields)},
		{"storage", d.section(d.storageFields)},
		{"audit", d.section(func() []field { return []field{{"path", d.str(&c.Audit.Path)}} })},
		{"admin", d.section(func() []field { return []field{{"listen", d.str(&c.Admin.Listen)}} })},
		{"log", d.section(func() []field {
			return []field{
				{"level", d.enum(&c.Log.Level, "debug", "info", "warn", "error")},
				{"format", d.enum(&c.Log.Format, "json", "text")},
			}
		})},
	}
}

func (d *decoder) smtpFields() []field {
	s := &d.cfg.SMTP
	return []field{
		{"listen", d.str(&s.Listen)},
		{"tls_cert", d.str(&s.TLSCert)},
		{"tls_key", d.str(&s.TLSKey)},
		{"require_tls", d.boolean(&s.RequireTLS)},
		{"max_message_bytes", d.int64v(&s.MaxMessageBytes, 1)},
		{"max_recipients", d.intv(&s.MaxRecipients, 1, math.MaxInt32)},
		{"allowed_networks", d.networks(&s.AllowedNetworks)},
		{"client_ca", d.str(&s.ClientCA)},
		{"client_cert_names", d.strList(&s.ClientCertNames, true)},
		{"auth_users_file", d.str(&s.AuthUsersFile)},
		{"sender_domains", d.domainList(&s.SenderDomains)},
		{"max_connections", d.intv(&s.MaxConnections, 1, math.MaxInt32)},
		{"max_line_length", d.intv(&s.MaxLineLength, minLineLength, math.MaxInt32)},
		{"read_timeout", d.duration(&s.ReadTimeout)},
		{"write_timeout", d.duration(&s.WriteTimeout)},
	}
}

func (d *decoder) queueFields() []field {
	q := &d.cfg.Queue
	return []field{
		{"dir", d.str(&q.Dir)},
		{"retry", d.durationList(&q.Retry)},
		{"max_age", d.duration(&q.MaxAge)},
		{"concurrency", d.intv(&q.Concurrency, 1, math.MaxInt32)},
		{"per_destination", d.intv(&q.PerDestination, 1, math.MaxInt32)},
	}
}

func (d *decoder) deliveryFields() []field {
	dl := &d.cfg.Delivery
	return []field{
		{"mode", d.enum(&dl.Mode, "mx", "relay", "dir")},
		{"relay", d.str(&dl.Relay)},
		{"relay_tls", d.enum(&dl.RelayTLS, "none", "opportunistic", "verify")},
		{"dir", d.str(&dl.Dir)},
		{"port", d.intv(&dl.Port, 1, 65535)},
		{"dns", d.str(&dl.DNS)},
		{"tls_roots", d.str(&dl.TLSRoots)},
		{"mta_sts", d.boolean(&dl.MTASTS)},
		{"dane", d.boolean(&dl.DANE)},
		{"dkim", d.dkim},
	}
}

// dkim decodes delivery.dkim: a list of {domain, selector, key}.
func (d *decoder) dkim(path string, k, v *yaml.Node) {
	out := []DKIMKey{}
	if !d.list(path, k, v, func(itemPath string, item *yaml.Node) {
		if item == nil || item.Kind != yaml.MappingNode {
			line := 0
			if item != nil {
				line = item.Line
			}
			d.addf(line, "%s: expected a mapping {domain, selector, key}, got %s", itemPath, describe(item))
			return
		}
		var dk DKIMKey
		d.mapping(itemPath, nil, item, []field{
			{"domain", d.str(&dk.Domain)},
			{"selector", d.str(&dk.Selector)},
			{"key", d.str(&dk.Key)},
		})
		out = append(out, dk)
	}) {
		return
	}
	d.cfg.Delivery.DKIM = out
}

func (d *decoder) keysFields() []field {
	ks := &d.cfg.Keys
	return []field{
		{"pgp_dir", d.str(&ks.PGPDir)},
		{"smime_dir", d.str(&ks.SMIMEDir)},
		{"smime_roots", d.str(&ks.SMIMERoots)},
		{"wkd", d.boolean(&ks.WKD)},
		{"keyserver", d.str(&ks.Keyserver)},
		{"ldap", d.section(func() []field {
			return []field{
				{"url", d.str(&ks.LDAP.URL)},
				{"base_dn", d.str(&ks.LDAP.BaseDN)},
				{"filter", d.str(&ks.LDAP.Filter)},
			}
		})},
		{"cache_ttl", d.duration(&ks.CacheTTL)},
		{"signing", d.section(func() []field {
			return []field{
				{"smime_cert", d.str(&ks.Signing.SMIMECert)},
				{"smime_key", d.str(&ks.Signing.SMIMEKey)},
				{"pgp_key", d.str(&ks.Signing.PGPKey)},
			}
		})},
	}
}

func (d *decoder) portalFields() []field {
	p := &d.cfg.Portal
	return []field{
		{"listen", d.str(&p.Listen)},
		{"base_url", d.str(&p.BaseURL)},
		{"tls_cert", d.str(&p.TLSCert)},
		{"tls_key", d.str(&p.TLSKey)},
		{"master_key_file", d.str(&p.MasterKeyFile)},
		{"message_ttl", d.duration(&p.MessageTTL)},
		{"notify_from", d.str(&p.NotifyFrom)},
		{"trusted_proxies", d.networks(&p.TrustedProxies)},
	}
}

func (d *decoder) storageFields() []field {
	s := &d.cfg.Storage
	return []field{
		{"driver", d.enum(&s.Driver, "sqlite", "postgres")},
		{"dsn", d.str(&s.DSN)},
	}
}
