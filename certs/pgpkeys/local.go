package pgpkeys

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// keyFileExts are the file name endings read from keys.pgp_dir.
var keyFileExts = []string{".asc", ".gpg", ".pgp", ".pub", ".key"}

// localSet is one loaded state of keys.pgp_dir.
type localSet struct {
	byAddr   map[string][]*parsedKey // lower-cased address → keys, in file order
	problems []string
}

// loadDir reads every key file in dir (not recursing into folders). It
// fails only when dir itself cannot be read.
func loadDir(dir string, log *slog.Logger) (*localSet, error) {
	set := &localSet{byAddr: map[string][]*parsedKey{}}
	if dir == "" {
		return set, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read keys.pgp_dir: %w", err)
	}
	seen := map[string]string{} // fingerprint → first file
	nkeys := 0
	for _, ent := range entries { // os.ReadDir sorts by name
		name := ent.Name()
		if strings.HasPrefix(name, ".") || !hasKeyExt(name) {
			continue
		}
		path := filepath.Join(dir, name)
		keys, err := readKeyFile(path)
		if err != nil {
			log.Warn("OpenPGP key file skipped in part or whole", "file", path, "err", err)
			set.problems = append(set.problems, fmt.Sprintf("%s: %v", path, oneLine(err)))
		}
		for _, pk := range keys {
			if pk.fingerprint != "" {
				if first, dup := seen[pk.fingerprint]; dup {
					log.Info("duplicate OpenPGP key ignored", "fingerprint", pk.fingerprint, "file", path, "first", first)
					continue
				}
				seen[pk.fingerprint] = path
			}
			if pk.entity == nil {
				set.problems = append(set.problems, fmt.Sprintf("%s: key %s: %s", path, orUnknown(pk.fingerprint), pk.err))
			}
			nkeys++
			for _, addr := range keyAddrs(pk) {
				set.byAddr[addr] = append(set.byAddr[addr], pk)
			}
		}
	}
	log.Debug("OpenPGP keys loaded", "dir", dir, "keys", nkeys, "addresses", len(set.byAddr), "problems", len(set.problems))
	return set, nil
}

func hasKeyExt(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range keyFileExts {
		if ext == e {
			return true
		}
	}
	return false
}

// readKeyFile reads one file of keys. Keys read before a problem are
// returned with the error.
func readKeyFile(path string) ([]*parsedKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if st.Size() > maxFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxFileBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxFileBytes)
	}
	return parseKeys(data, path)
}

// keyAddrs lists the distinct addresses in pk's user IDs.
func keyAddrs(pk *parsedKey) []string {
	var out []string
	for _, u := range pk.uids {
		if a := uidAddress(u); a != "" && !containsString(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown fingerprint)"
	}
	return s
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
