package smimecerts

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// oidEmailAddress is PKCS #9 emailAddress (RFC 2985 §5.2.1), the legacy
// place for an address in the subject DN. Certificates are indexed by it too
// so that `postern keys lookup` can show them with their reason ("no
// rfc822Name for …"), though only a subjectAltName rfc822Name makes one
// usable.
var oidEmailAddress = []int{1, 2, 840, 113549, 1, 9, 1}

// certExts are the file name extensions read from keys.smime_dir.
var certExts = []string{".pem", ".crt", ".cer", ".der", ".p7b", ".p7c"}

type localCert struct {
	cert   *x509.Certificate
	origin string // file path
}

// localState is one immutable load of keys.smime_roots and keys.smime_dir.
type localState struct {
	byAddr   map[string][]localCert // lower-case address → end-entity certificates
	trust    trust
	nRoots   int
	problems []string
}

// loadLocal reads the trust anchors and the certificate directory. A missing
// or unreadable roots file or directory is an error; a bad file inside the
// directory is a problem, not an error.
func loadLocal(dir, rootsFile string) (*localState, error) {
	st := &localState{
		byAddr: map[string][]localCert{},
		trust:  trust{intermediates: x509.NewCertPool()},
	}
	if rootsFile != "" {
		data, err := readBounded(rootsFile)
		if err != nil {
			return nil, fmt.Errorf("keys.smime_roots: %w", err)
		}
		certs, perr := ParseCertificates(data)
		if len(certs) == 0 {
			return nil, fmt.Errorf("keys.smime_roots %s: %w", rootsFile, perr)
		}
		if perr != nil {
			st.problems = append(st.problems, fmt.Sprintf("%s: %v", rootsFile, perr))
		}
		st.trust.roots = x509.NewCertPool()
		for _, c := range certs {
			st.trust.roots.AddCert(c)
			st.nRoots++
		}
	}
	if dir == "" {
		return st, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("keys.smime_dir: %w", err)
	}
	seen := map[string]map[string]bool{} // addr → fingerprints already indexed
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(certExts, strings.ToLower(filepath.Ext(name))) {
			continue
		}
		path := filepath.Join(dir, name)
		if e.IsDir() {
			continue
		}
		data, err := readBounded(path)
		if err != nil {
			st.problems = append(st.problems, err.Error())
			continue
		}
		certs, perr := ParseCertificates(data)
		if perr != nil {
			st.problems = append(st.problems, fmt.Sprintf("%s: %v", path, perr))
		}
		for _, c := range certs {
			if c.BasicConstraintsValid && c.IsCA {
				// A CA certificate next to the recipients' is an
				// intermediate for them, never a recipient itself.
				st.trust.intermediates.AddCert(c)
				continue
			}
			addrs := certAddresses(c)
			if len(addrs) == 0 {
				st.problems = append(st.problems, fmt.Sprintf("%s: certificate %q names no e-mail address", path, c.Subject.String()))
				continue
			}
			fp := Fingerprint(c)
			for _, a := range addrs {
				if seen[a] == nil {
					seen[a] = map[string]bool{}
				}
				if seen[a][fp] {
					continue
				}
				seen[a][fp] = true
				st.byAddr[a] = append(st.byAddr[a], localCert{cert: c, origin: path})
			}
		}
	}
	return st, nil
}

// certAddresses returns the lower-case addresses c names: subjectAltName
// rfc822Names and PKCS #9 emailAddress attributes of the subject.
func certAddresses(c *x509.Certificate) []string {
	var out []string
	add := func(a string) {
		a = strings.ToLower(strings.TrimSpace(a))
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, e := range c.EmailAddresses {
		add(e)
	}
	for _, n := range c.Subject.Names {
		if n.Type.Equal(oidEmailAddress) {
			if s, ok := n.Value.(string); ok {
				add(s)
			}
		}
	}
	return out
}

// readBounded reads a file of at most MaxCertFileSize bytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError names the file
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxCertFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxCertFileSize {
		return nil, fmt.Errorf("%s: %w", path, errTooLarge)
	}
	return data, nil
}

var errTooLarge = errors.New("larger than 1 MiB, not a certificate file")
