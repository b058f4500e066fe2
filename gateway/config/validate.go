package config

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// finish applies the defaults that depend on the environment, resolves
// relative paths against the config folder (SPEC §3) and validates every
// value and the files it names.
func (d *decoder) finish() {
	c := d.cfg
	d.hostname()
	d.resolvePaths()

	// SMTP ingress.
	d.hostPort("smtp.listen", c.SMTP.Listen, false)
	d.tlsPair("smtp.tls_cert", c.SMTP.TLSCert, "smtp.tls_key", c.SMTP.TLSKey)
	d.certBundle("smtp.client_ca", c.SMTP.ClientCA)
	d.readableFile("smtp.auth_users_file", c.SMTP.AuthUsersFile)

	// Queue and delivery.
	d.creatableDir("queue.dir", c.Queue.Dir)
	switch c.Delivery.Mode {
	case "relay":
		if c.Delivery.Relay == "" && !d.failed["delivery.relay"] {
			d.addf(d.firstLine("delivery.relay", "delivery.mode", "delivery"),
				`delivery.relay: required when delivery.mode is relay (host:port, e.g. "smtp.example.net:587")`)
		}
	case "dir":
		if c.Delivery.Dir == c.Queue.Dir {
			d.addf(d.firstLine("delivery.dir", "queue.dir", "delivery.mode"), "delivery.dir: must differ from queue.dir (%s)", c.Queue.Dir)
		}
	}
	if c.Delivery.Relay != "" {
		d.hostPort("delivery.relay", c.Delivery.Relay, true)
	}
	d.creatableDir("delivery.dir", c.Delivery.Dir)
	if c.Delivery.DNS != "" {
		d.hostPort("delivery.dns", c.Delivery.DNS, true)
	}
	d.certBundle("delivery.tls_roots", c.Delivery.TLSRoots)
	d.dkimKeys()

	// Policy file: existence here; its content is the policy package's.
	d.readableFile("policy", c.Policy)

	// Keys.
	d.existingDir("keys.pgp_dir", c.Keys.PGPDir)
	d.existingDir("keys.smime_dir", c.Keys.SMIMEDir)
	d.certBundle("keys.smime_roots", c.Keys.SMIMERoots)
	if c.Keys.Keyserver != "" {
		c.Keys.Keyserver = d.webURL("keys.keyserver", c.Keys.Keyserver)
	}
	d.ldap()
	d.tlsPair("keys.signing.smime_cert", c.Keys.Signing.SMIMECert, "keys.signing.smime_key", c.Keys.Signing.SMIMEKey)
	d.readableFile("keys.signing.pgp_key", c.Keys.Signing.PGPKey)

	// Portal.
	d.portal()

	// Storage, audit, admin.
	switch c.Storage.Driver {
	case "postgres":
		if (!d.present("storage.dsn") || c.Storage.DSN == "") && !d.failed["storage.dsn"] {
			d.addf(d.firstLine("storage.dsn", "storage.driver"), "storage.dsn: required when storage.driver is postgres")
		}
	case "sqlite":
		if c.Storage.DSN == "" {
			d.addf(d.firstLine("storage.dsn", "storage"), "storage.dsn: must not be empty")
		} else if strings.HasPrefix(c.Storage.DSN, "file:") || strings.Contains(c.Storage.DSN, "?") || c.Storage.DSN == ":memory:" {
			// The store sets its own pragmas (WAL, synchronous=FULL,
			// secure_delete): a plain path only.
			d.addf(d.firstLine("storage.dsn", "storage"), "storage.dsn: for sqlite, a plain file path (no file: URI, query or :memory:), got %q", truncate(c.Storage.DSN))
		} else {
			d.creatableFile("storage.dsn", c.Storage.DSN)
		}
	}
	if c.Audit.Path == "" {
		d.addf(d.firstLine("audit.path", "audit"), "audit.path: must not be empty")
	} else {
		d.creatableFile("audit.path", c.Audit.Path)
	}
	if c.Admin.Listen != "" {
		d.hostPort("admin.listen", c.Admin.Listen, false)
	}
}

// hostname defaults hostname to os.Hostname() and checks it is a domain
// name: it is the EHLO name (RFC 5321 §4.1.1.1) and the domain of
// Message-IDs.
func (d *decoder) hostname() {
	c := d.cfg
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			d.addf(0, "hostname: not set, and the system hostname is unknown (%v); set hostname", err)
			return
		}
		name := normalizeDomain(h)
		if err := checkDomain(name); err != nil {
			d.addf(0, "hostname: not set, and the system hostname %q is not a valid domain name (%v); set hostname", truncate(h), err)
			return
		}
		c.Hostname = name
		return
	}
	name := normalizeDomain(c.Hostname)
	if err := checkDomain(name); err != nil {
		d.addf(d.line("hostname"), "hostname: %q is not a valid domain name: %v", truncate(c.Hostname), err)
		return
	}
	c.Hostname = name
}

// resolvePaths makes every path in the config absolute, relative ones
// against the config file's folder (SPEC §3).
func (d *decoder) resolvePaths() {
	c := d.cfg
	for _, p := range []*string{
		&c.SMTP.TLSCert, &c.SMTP.TLSKey, &c.SMTP.ClientCA, &c.SMTP.AuthUsersFile,
		&c.Queue.Dir,
		&c.Delivery.Dir, &c.Delivery.TLSRoots,
		&c.Policy,
		&c.Keys.PGPDir, &c.Keys.SMIMEDir, &c.Keys.SMIMERoots,
		&c.Keys.Signing.SMIMECert, &c.Keys.Signing.SMIMEKey, &c.Keys.Signing.PGPKey,
		&c.Portal.TLSCert, &c.Portal.TLSKey, &c.Portal.MasterKeyFile,
		&c.Audit.Path,
	} {
		*p = c.resolve(*p)
	}
	for i := range c.Delivery.DKIM {
		c.Delivery.DKIM[i].Key = c.resolve(c.Delivery.DKIM[i].Key)
	}
	if c.Storage.Driver == "sqlite" {
		c.Storage.DSN = c.resolveSQLite(c.Storage.DSN)
	}
}

// resolve returns p made absolute against c.Dir; "" stays "".
func (c *Config) resolve(p string) string {
	if p == "" {
		return ""
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(c.Dir, p)
}

// resolveSQLite resolves the path in a SQLite DSN: a plain path, or a
// "file:" URI whose path part is relative. ":memory:" stays.
func (c *Config) resolveSQLite(dsn string) string {
	if dsn == "" || strings.HasPrefix(dsn, "file:") || strings.Contains(dsn, "?") || dsn == ":memory:" {
		return dsn // refused by validation: a plain path only
	}
	return c.resolve(dsn)
}

// hostPort checks a "host:port" address. An empty host (":25", all
// interfaces) is allowed unless needHost.
func (d *decoder) hostPort(key, addr string, needHost bool) {
	if err := checkHostPort(addr, needHost); err != nil {
		d.addf(d.line(key), "%s: %v", key, err)
	}
}

func checkHostPort(addr string, needHost bool) error {
	if addr == "" {
		return errors.New(`must be set, as host:port`)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (IPv6 as [::1]:25)", truncate(addr))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q of %q must be a number from 1 to 65535", truncate(port), truncate(addr))
	}
	if host == "" {
		if needHost {
			return fmt.Errorf("%q has no host", truncate(addr))
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		if strings.Contains(host, "%") {
			return fmt.Errorf("%q: IPv6 zones are not supported", truncate(addr))
		}
		return nil
	}
	if err := checkDomain(normalizeDomain(host)); err != nil {
		return fmt.Errorf("host %q of %q is neither an IP address nor a valid host name: %v", truncate(host), truncate(addr), err)
	}
	return nil
}

// fileProblem describes why path cannot be used as a readable regular file,
// or returns "" when it can.
func fileProblem(path string) string {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("%s does not exist", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Sprintf("%s is not accessible (permission denied)", path)
	case err != nil:
		return fmt.Sprintf("%s: %v", path, err)
	case st.IsDir():
		return fmt.Sprintf("%s is a directory, not a file", path)
	case !st.Mode().IsRegular():
		return fmt.Sprintf("%s is not a regular file", path)
	}
	// Stat first: opening a FIFO or device could block or read forever.
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Sprintf("%s is not readable (permission denied)", path)
		}
		return fmt.Sprintf("%s cannot be read: %v", path, err)
	}
	f.Close()
	return ""
}

// readableFile checks that a path, when set, is a readable regular file.
func (d *decoder) readableFile(key, path string) bool {
	if path == "" {
		return false
	}
	if msg := fileProblem(path); msg != "" {
		d.addf(d.line(key), "%s: %s", key, msg)
		return false
	}
	return true
}

// readFile reads a file already checked by readableFile, bounded in size.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileBytes)
	}
	return data, nil
}

// tlsPair checks a certificate and key that must be set together and load
// as a pair (tls.X509KeyPair, as tls.LoadX509KeyPair does).
func (d *decoder) tlsPair(certKey, cert, keyKey, key string) {
	switch {
	case cert == "" && key == "", d.failed[certKey], d.failed[keyKey]:
		return
	case cert == "":
		d.addf(d.line(keyKey), "%s: set without %s; set both or neither", keyKey, certKey)
		d.readableFile(keyKey, key)
		return
	case key == "":
		d.addf(d.line(certKey), "%s: set without %s; set both or neither", certKey, keyKey)
		d.readableFile(certKey, cert)
		return
	}
	okCert := d.readableFile(certKey, cert)
	okKey := d.readableFile(keyKey, key)
	if !okCert || !okKey {
		return
	}
	certPEM, err := readFile(cert)
	if err != nil {
		d.addf(d.line(certKey), "%s: %v", certKey, err)
		return
	}
	keyPEM, err := readFile(key)
	if err != nil {
		d.addf(d.line(keyKey), "%s: %v", keyKey, err)
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		d.addf(d.line(certKey), "%s, %s: do not load as a certificate and key pair: %v", certKey, keyKey, err)
	}
}

// parseCertBundle parses every CERTIFICATE block of a PEM bundle; it
// requires at least one.
func parseCertBundle(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// certBundle checks that a path, when set, is a PEM file of certificates.
func (d *decoder) certBundle(key, path string) {
	if !d.readableFile(key, path) {
		return
	}
	data, err := readFile(path)
	if err == nil {
		_, err = parseCertBundle(data)
	}
	if err != nil {
		d.addf(d.line(key), "%s: %s: %v", key, path, err)
	}
}

// existingDir checks that a path, when set, is an existing directory.
func (d *decoder) existingDir(key, path string) {
	if path == "" {
		return
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.addf(d.line(key), "%s: directory %s does not exist", key, path)
	case err != nil:
		d.addf(d.line(key), "%s: %v", key, err)
	case !st.IsDir():
		d.addf(d.line(key), "%s: %s is not a directory", key, path)
	}
}

// creatableDir checks a directory the server creates when missing: it may
// be absent, but an existing path, or an existing ancestor, must be a
// directory.
func (d *decoder) creatableDir(key, path string) {
	if path == "" {
		d.addf(d.line(key), "%s: must not be empty", key)
		return
	}
	if msg := dirProblem(path); msg != "" {
		d.addf(d.line(key), "%s: %s", key, msg)
	}
}

// creatableFile checks a file the server creates when missing (audit log,
// SQLite database): if it exists it must be a regular file, and its folder
// must be a directory or creatable as one.
func (d *decoder) creatableFile(key, path string) {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		d.addf(d.line(key), "%s: %s is a directory, not a file", key, path)
		return
	case err == nil && !st.Mode().IsRegular():
		d.addf(d.line(key), "%s: %s is not a regular file", key, path)
		return
	case err == nil:
		return
	}
	if msg := dirProblem(filepath.Dir(path)); msg != "" {
		d.addf(d.line(key), "%s: folder %s", key, msg)
	}
}

// dirProblem describes why os.MkdirAll(path) cannot succeed because of what
// is already on disk, or returns "".
func dirProblem(path string) string {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err == nil {
			if !st.IsDir() {
				if p == filepath.Clean(path) {
					return fmt.Sprintf("%s exists and is not a directory", p)
				}
				return fmt.Sprintf("%s cannot be created: %s is not a directory", path, p)
			}
			return ""
		}
		// ENOTDIR: an ancestor is a file; the loop finds and names it.
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Sprintf("%s: %v", path, err)
		}
		if parent := filepath.Dir(p); parent == p {
			return ""
		}
	}
}

// dkimKeys checks delivery.dkim entries: a domain, a selector, and a
// readable PEM private key (RSA or Ed25519, RFC 6376 §3.3 and RFC 8463).
func (d *decoder) dkimKeys() {
	seen := map[string]int{}
	for i := range d.cfg.Delivery.DKIM {
		dk := &d.cfg.Delivery.DKIM[i]
		item := fmt.Sprintf("delivery.dkim[%d]", i)
		itemLine := d.line(item)
		dk.Domain = normalizeDomain(dk.Domain)
		if dk.Domain == "" && !d.failed[item+".domain"] {
			d.addf(itemLine, "%s: domain is required", item)
		} else if err := checkDomain(dk.Domain); err != nil {
			d.addf(d.firstLine(item+".domain", item), "%s.domain: %q is not a valid domain name: %v", item, truncate(dk.Domain), err)
		}
		dk.Selector = strings.TrimSpace(dk.Selector)
		if dk.Selector == "" && !d.failed[item+".selector"] {
			d.addf(itemLine, "%s: selector is required", item)
		} else if err := checkDomain(strings.ToLower(dk.Selector)); err != nil {
			// RFC 6376 §3.1: a selector is one or more DNS labels.
			d.addf(d.firstLine(item+".selector", item), "%s.selector: %q is not a valid selector: %v", item, truncate(dk.Selector), err)
		}
		if dk.Domain != "" && dk.Selector != "" {
			id := strings.ToLower(dk.Selector) + "._domainkey." + dk.Domain
			if first, dup := seen[id]; dup {
				d.addf(itemLine, "%s: selector %s for %s is already listed at line %d", item, dk.Selector, dk.Domain, first)
			} else {
				seen[id] = itemLine
			}
		}
		keyPath := item + ".key"
		if dk.Key == "" {
			if d.failed[keyPath] {
				continue
			}
			d.addf(itemLine, "%s: key is required (a PEM private key file)", item)
			continue
		}
		if !d.readableFile(keyPath, dk.Key) {
			continue
		}
		data, err := readFile(dk.Key)
		if err == nil {
			err = checkDKIMKey(data)
		}
		if err != nil {
			d.addf(d.line(keyPath), "%s: %s: %v", keyPath, dk.Key, err)
		}
	}
}

// checkDKIMKey checks that data holds a PEM RSA or Ed25519 private key.
func checkDKIMKey(data []byte) error {
	b, _ := pem.Decode(data)
	if b == nil {
		return errors.New("no PEM block found")
	}
	switch b.Type {
	case "RSA PRIVATE KEY":
		if _, err := x509.ParsePKCS1PrivateKey(b.Bytes); err != nil {
			return fmt.Errorf("parse RSA private key: %w", err)
		}
		return nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return fmt.Errorf("parse PKCS #8 private key: %w", err)
		}
		switch k.(type) {
		case *rsa.PrivateKey, ed25519.PrivateKey:
			return nil
		}
		return fmt.Errorf("unsupported key type %T: DKIM signs with RSA or Ed25519", k)
	}
	return fmt.Errorf("PEM block %q is not a private key (want RSA PRIVATE KEY or PRIVATE KEY)", b.Type)
}

// webURL checks an HTTP(S) base URL: absolute https, or http for a loopback
// host only. It returns the URL without a trailing "/".
func (d *decoder) webURL(key, raw string) string {
	if err := checkWebURL(raw); err != nil {
		d.addf(d.line(key), "%s: %v", key, err)
		return raw
	}
	return strings.TrimRight(raw, "/")
}

func checkWebURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", truncate(raw))
	}
	if !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%q is not an absolute URL (https://host/…)", truncate(raw))
	}
	if u.User != nil {
		return fmt.Errorf("%q must not contain a user name or password", truncate(raw))
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%q must not have a query or fragment", truncate(raw))
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%q has no host", truncate(raw))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q has an invalid port", truncate(raw))
		}
	}
	if _, err := netip.ParseAddr(host); err != nil {
		if err := checkDomain(normalizeDomain(host)); err != nil {
			return fmt.Errorf("host %q of %q is not valid: %v", truncate(host), truncate(raw), err)
		}
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(host) {
			return nil
		}
		return fmt.Errorf("%q must use https (http only for a loopback host)", truncate(raw))
	}
	return fmt.Errorf("%q must be an https URL", truncate(raw))
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true // RFC 6761 §6.3
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// ldap checks keys.ldap when url is set.
func (d *decoder) ldap() {
	l := &d.cfg.Keys.LDAP
	if l.URL == "" {
		return
	}
	u, err := url.Parse(l.URL)
	switch {
	case err != nil || u.Host == "":
		d.addf(d.line("keys.ldap.url"), "keys.ldap.url: %q is not an LDAP URL (ldap://host or ldaps://host)", truncate(l.URL))
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		d.addf(d.line("keys.ldap.url"), "keys.ldap.url: %q must use the ldap or ldaps scheme", truncate(l.URL))
	}
	if strings.TrimSpace(l.BaseDN) == "" && !d.failed["keys.ldap.base_dn"] {
		d.addf(d.firstLine("keys.ldap.base_dn", "keys.ldap.url"), "keys.ldap.base_dn: required when keys.ldap.url is set")
	}
	if strings.Count(l.Filter, "%s") != 1 {
		d.addf(d.firstLine("keys.ldap.filter", "keys.ldap.url"), `keys.ldap.filter: %q must contain %%s exactly once, where the address goes (e.g. "(mail=%%s)")`, truncate(l.Filter))
	} else if !strings.HasPrefix(l.Filter, "(") || !strings.HasSuffix(l.Filter, ")") {
		// RFC 4515 §3: a filter is enclosed in parentheses.
		d.addf(d.firstLine("keys.ldap.filter", "keys.ldap.url"), "keys.ldap.filter: %q must be enclosed in parentheses (RFC 4515)", truncate(l.Filter))
	}
}

// portal checks the portal section. The portal is enabled by base_url.
func (d *decoder) portal() {
	p := &d.cfg.Portal
	if p.Listen != "" {
		d.hostPort("portal.listen", p.Listen, false)
	}
	d.tlsPair("portal.tls_cert", p.TLSCert, "portal.tls_key", p.TLSKey)
	if p.NotifyFrom != "" {
		if _, err := mail.ParseAddress(p.NotifyFrom); err != nil {
			d.addf(d.line("portal.notify_from"), "portal.notify_from: %q is not a mail address: %v", truncate(p.NotifyFrom), err)
		}
	}
	if p.MasterKeyFile != "" && d.readableFile("portal.master_key_file", p.MasterKeyFile) {
		if _, err := ReadMasterKey(p.MasterKeyFile); err != nil {
			d.addf(d.line("portal.master_key_file"), "portal.master_key_file: %v", err)
		}
	}
	if p.BaseURL == "" {
		return
	}
	p.BaseURL = d.webURL("portal.base_url", p.BaseURL)
	if p.Listen == "" && !d.failed["portal.listen"] {
		d.addf(d.firstLine("portal.listen", "portal.base_url"), "portal.listen: required when portal.base_url is set")
	}
	if p.MasterKeyFile == "" && !d.failed["portal.master_key_file"] {
		d.addf(d.firstLine("portal.master_key_file", "portal.base_url"), "portal.master_key_file: required when portal.base_url is set: portal messages are encrypted at rest")
	}
	if p.NotifyFrom == "" && !d.failed["portal.notify_from"] {
		d.addf(d.firstLine("portal.notify_from", "portal.base_url"), "portal.notify_from: required when portal.base_url is set: the sender of portal notices")
	}
}

// MasterKeySize is the size of the portal master key (SPEC §3: 32 random
// bytes, base64).
const MasterKeySize = 32

// ReadMasterKey reads a portal master key file: 32 bytes in standard or
// URL-safe base64, padded or not, surrounding white space ignored.
func ReadMasterKey(path string) ([]byte, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	return parseMasterKey(data)
}

func parseMasterKey(data []byte) ([]byte, error) {
	s := strings.TrimSpace(string(data))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != MasterKeySize {
				return nil, fmt.Errorf("master key is %d bytes, want %d (create one with: head -c 32 /dev/urandom | base64)", len(key), MasterKeySize)
			}
			return key, nil
		}
	}
	return nil, errors.New("master key is not base64 (create one with: head -c 32 /dev/urandom | base64)")
}
