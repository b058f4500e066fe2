package smimecerts_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"go.mozilla.org/pkcs7"

	"github.com/postern-mail/postern/certs/smimecerts"
	"github.com/postern-mail/postern/certs/smimecerts/smimetest"
)

const slapdPath = "/usr/sbin/slapd"

// slapd is a real OpenLDAP server on loopback with a temporary database.
type slapd struct {
	t    *testing.T
	dir  string
	conf string
	url  string
	cmd  *exec.Cmd
	done chan error
}

const slapdSuffix = "dc=example,dc=org"

func startSlapd(t *testing.T) *slapd {
	t.Helper()
	if _, err := os.Stat(slapdPath); err != nil {
		t.Skipf("SKIP: %s not installed (apt-get install -y slapd ldap-utils); LDAP certificate look-up not tested against a real server", slapdPath)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	smimetest.WriteFile(t, conf, []byte(fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "%[2]s"
rootdn "cn=admin,%[2]s"
rootpw secret
directory %[1]s/db
`, dir, slapdSuffix)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &slapd{t: t, dir: dir, conf: conf, url: fmt.Sprintf("ldap://127.0.0.1:%d", port)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *slapd) start() {
	s.t.Helper()
	// -d keeps slapd in the foreground so the test owns the process.
	s.cmd = exec.Command(slapdPath, "-f", s.conf, "-h", s.url+"/", "-d", "0")
	var out strings.Builder
	s.cmd.Stdout, s.cmd.Stderr = &out, &out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start slapd: %v", err)
	}
	s.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(s.cmd, s.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "ldap://"), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-s.done:
			s.t.Fatalf("slapd exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("slapd did not listen on %s: %v\n%s", s.url, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *slapd) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// add writes entries as the root DN.
func (s *slapd) add(reqs ...*ldap.AddRequest) {
	s.t.Helper()
	c, err := ldap.DialURL(s.url)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind("cn=admin,"+slapdSuffix, "secret"); err != nil {
		s.t.Fatal(err)
	}
	for _, r := range reqs {
		if err := c.Add(r); err != nil {
			s.t.Fatalf("add %s: %v", r.DN, err)
		}
	}
}

func person(uid, mail string, attrs map[string][]byte) *ldap.AddRequest {
	r := ldap.NewAddRequest("uid="+uid+",ou=people,"+slapdSuffix, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("uid", []string{uid})
	r.Attribute("cn", []string{uid})
	r.Attribute("sn", []string{uid})
	r.Attribute("mail", []string{mail})
	for k, v := range attrs {
		r.Attribute(k, []string{string(v)})
	}
	return r
}

type hookLog struct {
	mu    sync.Mutex
	calls []string
}

func (h *hookLog) record(src, res string) {
	h.mu.Lock()
	h.calls = append(h.calls, src+"/"+res)
	h.mu.Unlock()
}

// take returns and forgets the LDAP calls recorded so far.
func (h *hookLog) take() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, c := range h.calls {
		if strings.HasPrefix(c, "ldap/") {
			out = append(out, c)
		}
	}
	h.calls = nil
	return strings.Join(out, " ")
}

func TestLDAPSlapd(t *testing.T) {
	srv := startSlapd(t)
	f := newFixture(t)
	key := smimetest.NewKey(t, smimetest.RSA2048)
	bob := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"bob@example.org"}, Key: key})
	mid := f.ca.Intermediate(t, "LDAP Sub CA")
	carol := mid.Issue(t, smimetest.LeafOptions{Emails: []string{"carol@example.org"}, Key: key})
	carolP7, err := pkcs7.DegenerateCertificate(append(append([]byte(nil), carol.Cert.Raw...), mid.Cert.Raw...))
	if err != nil {
		t.Fatal(err)
	}
	dave := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"dave@example.org"}, KeyType: smimetest.ECDSA})
	erinLDAP := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"erin@example.org"}, Key: key})
	erinLocal := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"erin@example.org"}, Key: key})
	f.write(t, "erin.pem", smimetest.CertPEM(erinLocal.Cert))

	base := ldap.NewAddRequest(slapdSuffix, nil)
	base.Attribute("objectClass", []string{"dcObject", "organization"})
	base.Attribute("dc", []string{"example"})
	base.Attribute("o", []string{"example"})
	people := ldap.NewAddRequest("ou=people,"+slapdSuffix, nil)
	people.Attribute("objectClass", []string{"organizationalUnit"})
	people.Attribute("ou", []string{"people"})
	srv.add(base, people,
		person("bob", "bob@example.org", map[string][]byte{"userCertificate;binary": bob.Cert.Raw}),
		person("carol", "carol@example.org", map[string][]byte{"userSMIMECertificate": carolP7}),
		person("dave", "dave@example.org", map[string][]byte{"userCertificate;binary": dave.Cert.Raw}),
		person("erin", "erin@example.org", map[string][]byte{"userCertificate;binary": erinLDAP.Cert.Raw}),
	)

	hooks := &hookLog{}
	s := f.store(t, func(o *smimecerts.Options) {
		o.LDAP = smimecerts.LDAPOptions{URL: srv.url, BaseDN: slapdSuffix, Filter: "(mail=%s)", Timeout: 5 * time.Second}
		o.CacheTTL = time.Hour
		o.OnLookup = hooks.record
	})
	ctx := context.Background()

	t.Run("userCertificate found and usable", func(t *testing.T) {
		best, all, err := s.Best(ctx, "bob@example.org")
		if err != nil {
			t.Fatal(err)
		}
		if best == nil {
			t.Fatalf("no usable certificate: %+v", all)
		}
		if !best.Cert.Equal(bob.Cert) || best.Source != smimecerts.SourceLDAP {
			t.Fatalf("best %+v", best)
		}
		if want := srv.url + "/uid=bob,ou=people," + slapdSuffix; best.Origin != want {
			t.Errorf("origin %q, want %q", best.Origin, want)
		}
		if !strings.HasSuffix(best.Reason, "from ldap") {
			t.Errorf("reason %q", best.Reason)
		}
		if got := hooks.take(); got != "ldap/found" {
			t.Errorf("hook %q", got)
		}
	})
	t.Run("cached", func(t *testing.T) {
		if best, _, err := s.Best(ctx, "BOB@example.org"); err != nil || best == nil {
			t.Fatalf("cached look-up: %v %v", best, err)
		}
		if got := hooks.take(); got != "" {
			t.Errorf("cache hit asked LDAP: %q", got)
		}
	})
	t.Run("userSMIMECertificate with its chain", func(t *testing.T) {
		best, all, err := s.Best(ctx, "carol@example.org")
		if err != nil || best == nil {
			t.Fatalf("best %v, err %v, all %+v", best, err, all)
		}
		if !best.Cert.Equal(carol.Cert) || len(all) != 1 {
			t.Errorf("got %d certificates; best %s", len(all), best.Subject)
		}
		if got := hooks.take(); got != "ldap/found" {
			t.Errorf("hook %q", got)
		}
	})
	t.Run("EC certificate refused", func(t *testing.T) {
		best, all, err := s.Best(ctx, "dave@example.org")
		if err != nil || best != nil || len(all) != 1 || all[0].Reason != "unsupported key type ECDSA" {
			t.Fatalf("best %v err %v all %+v", best, err, all)
		}
		if got := hooks.take(); got != "ldap/not_found" {
			t.Errorf("hook %q", got)
		}
	})
	t.Run("usable local certificate: LDAP not asked", func(t *testing.T) {
		all, err := s.Lookup(ctx, "erin@example.org")
		if err != nil || len(all) != 1 || !all[0].Cert.Equal(erinLocal.Cert) {
			t.Fatalf("err %v all %+v", err, all)
		}
		if got := hooks.take(); got != "" {
			t.Errorf("LDAP asked: %q", got)
		}
	})
	t.Run("filter injection escaped", func(t *testing.T) {
		// Unescaped, (mail=*@example.org) would match every entry.
		all, err := s.Lookup(ctx, "*@example.org")
		if err != nil || len(all) != 0 {
			t.Fatalf("err %v, %d certificates", err, len(all))
		}
		all, err = s.Lookup(ctx, "x@example.org)(mail=*")
		if err != nil || len(all) != 0 {
			t.Fatalf("err %v, %d certificates", err, len(all))
		}
		hooks.take()
	})
	t.Run("negative answers cached", func(t *testing.T) {
		for range 2 {
			if all, err := s.Lookup(ctx, "nobody@example.org"); err != nil || len(all) != 0 {
				t.Fatalf("err %v all %+v", err, all)
			}
		}
		if got := hooks.take(); got != "ldap/not_found" {
			t.Errorf("hook %q, want one look-up", got)
		}
	})
	t.Run("server down", func(t *testing.T) {
		srv.stop()
		if best, _, err := s.Best(ctx, "bob@example.org"); err != nil || best == nil {
			t.Fatalf("cached answer lost: %v %v", best, err)
		}
		_, all, err := s.Best(ctx, "frank@example.org")
		if err == nil {
			t.Fatalf("no error with the server down (%d certificates)", len(all))
		}
		if got := hooks.take(); got != "ldap/error" {
			t.Errorf("hook %q", got)
		}
	})
	t.Run("server back: reconnects", func(t *testing.T) {
		srv.start()
		if err := s.Reload(); err != nil { // forgets cached answers
			t.Fatal(err)
		}
		best, _, err := s.Best(ctx, "carol@example.org")
		if err != nil || best == nil {
			t.Fatalf("after restart: %v %v", best, err)
		}
		if got := hooks.take(); got != "ldap/found" {
			t.Errorf("hook %q", got)
		}
	})
	t.Run("closed", func(t *testing.T) {
		s.Close()
		if _, err := s.Lookup(ctx, "gina@example.org"); err == nil {
			t.Fatal("look-up after Close succeeded")
		}
	})
}

// TestLDAPTimeout: a server that accepts and never answers costs one
// timeout, not a hang.
func TestLDAPTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	hooks := &hookLog{}
	s, err := smimecerts.New(smimecerts.Options{
		LDAP:     smimecerts.LDAPOptions{URL: "ldap://" + l.Addr().String(), BaseDN: slapdSuffix, Timeout: 300 * time.Millisecond},
		OnLookup: hooks.record,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = s.Lookup(context.Background(), "slow@example.org")
	if err == nil {
		t.Fatal("no error from a silent server")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v with a 300ms timeout", el)
	}
	if got := hooks.take(); got != "ldap/error" {
		t.Errorf("hook %q", got)
	}

	// A cancelled context stops the look-up at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Lookup(ctx, "slow2@example.org"); err == nil {
		t.Error("no error with a cancelled context")
	}
}

func TestLDAPOptionsChecked(t *testing.T) {
	for _, o := range []smimecerts.LDAPOptions{
		{URL: "http://ldap.example.org"},
		{URL: "ldap://ldap.example.org", Filter: "(mail=x)"},
		{URL: "ldap://ldap.example.org", Filter: "(mail=%s)(uid=%s)"},
		{URL: "ldap://ldap.example.org", Filter: "(mail=%s"},
		{URL: "ldap://ldap.example.org", Timeout: -time.Second},
	} {
		if _, err := smimecerts.New(smimecerts.Options{LDAP: o}); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}
