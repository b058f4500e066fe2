// Command postern is the adaptive-encryption outbound mail gateway.
//
// See SPEC.md §2 for the commands.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/postern-mail/postern/gateway/audit"
	"github.com/postern-mail/postern/gateway/config"
	"github.com/postern-mail/postern/gateway/methods"
	"github.com/postern-mail/postern/gateway/portal"
	"github.com/postern-mail/postern/gateway/server"
	"github.com/postern-mail/postern/gateway/storage"
	"github.com/postern-mail/postern/policy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: postern <command> [flags]

commands:
  serve -config FILE            run the gateway
  check -config FILE            validate the config and its policy
  explain -config FILE -from A -to B [-to C…] [-subject S] [-header 'N: v'…] [-json]
  portal revoke -config FILE ID make a portal message unreadable at once
  keys lookup -config FILE ADDR  show the S/MIME certificates and OpenPGP keys found for ADDR
  audit verify -config FILE     check the audit log's hash chain
  audit search -config FILE [-rcpt A] [-from A] [-method M] [-since T] [-until T] [-format json|csv]
  healthcheck [-url URL]        exit 0 when the admin /healthz answers 200 (for container health checks)
  version                       print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "explain":
		return cmdExplain(args[1:], stdout, stderr)
	case "portal":
		if len(args) >= 2 && args[1] == "revoke" {
			return cmdPortalRevoke(args[2:], stdout, stderr)
		}
	case "keys":
		if len(args) >= 2 && args[1] == "lookup" {
			return cmdKeysLookup(args[2:], stdout, stderr)
		}
	case "audit":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		switch args[1] {
		case "verify":
			return cmdAuditVerify(args[2:], stdout, stderr)
		case "search":
			return cmdAuditSearch(args[2:], stdout, stderr)
		}
	case "healthcheck":
		return cmdHealthcheck(args[1:], stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "postern", version)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "postern: unknown command %q\n%s", strings.Join(args, " "), usage)
	return 2
}

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("postern "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", "", "configuration file (YAML)")
	return fs, cfg
}

// loadConfig prints every problem as file:line: problem.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	if path == "" {
		fmt.Fprintln(stderr, "postern: -config FILE is required")
		return nil, false
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, false
	}
	return cfg, true
}

func cmdServe(args []string, stderr io.Writer) int {
	fs, cfgPath := newFlags("serve", stderr)
	if fs.Parse(args) != nil {
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	log := server.NewLogger(cfg.Log)
	log.Info("postern starting", "version", version, "config", cfg.File)
	if err := server.Run(context.Background(), cfg, log); err != nil {
		log.Error("postern stopped with an error", "err", err)
		fmt.Fprintln(stderr, "postern:", err)
		return 1
	}
	return 0
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("check", stderr)
	if fs.Parse(args) != nil {
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	if _, err := server.LoadPolicy(cfg); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if _, err := server.LoadUsers(cfg.SMTP.AuthUsersFile); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", cfg.File)
	if cfg.Policy != "" {
		fmt.Fprintf(stdout, "%s: ok\n", cfg.Policy)
	}
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdExplain(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("explain", stderr)
	from := fs.String("from", "", "envelope sender")
	subject := fs.String("subject", "", "Subject header")
	asJSON := fs.Bool("json", false, "print JSON")
	var to, headers multiFlag
	fs.Var(&to, "to", "recipient (repeatable)")
	fs.Var(&headers, "header", "'Name: value' header (repeatable)")
	if fs.Parse(args) != nil {
		return 2
	}
	if len(to) == 0 {
		fmt.Fprintln(stderr, "postern explain: at least one -to is required")
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	pol, err := server.LoadPolicy(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var raw strings.Builder
	fmt.Fprintf(&raw, "From: <%s>\r\n", *from)
	if *subject != "" {
		fmt.Fprintf(&raw, "Subject: %s\r\n", *subject)
	}
	for _, h := range headers {
		if !strings.Contains(h, ":") {
			fmt.Fprintf(stderr, "postern explain: -header %q: want 'Name: value'\n", h)
			return 2
		}
		raw.WriteString(h + "\r\n")
	}
	raw.WriteString("\r\n")
	hdr, err := textproto.NewReader(bufio.NewReader(strings.NewReader(raw.String()))).ReadMIMEHeader()
	if err != nil {
		fmt.Fprintln(stderr, "postern explain: headers:", err)
		return 2
	}
	msg := &policy.Message{From: *from, Header: hdr, Size: int64(raw.Len()),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw.String())), nil }}
	set, ok := openMethods(cfg, stderr)
	if !ok {
		return 1
	}
	defer set.Close()
	var ds []policy.Decision
	for _, rcpt := range to {
		ds = append(ds, pol.Decide(context.Background(), msg, rcpt, set))
	}
	if *asJSON {
		err = policy.WriteJSON(stdout, ds)
	} else {
		err = policy.WriteText(stdout, ds)
	}
	if err != nil {
		fmt.Fprintln(stderr, "postern explain:", err)
		return 1
	}
	return 0
}

func cmdAuditVerify(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("audit verify", stderr)
	if fs.Parse(args) != nil {
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	f, err := os.Open(cfg.Audit.Path)
	if err != nil {
		fmt.Fprintln(stderr, "postern audit verify:", err)
		return 1
	}
	defer f.Close()
	n, err := audit.Verify(f)
	if err != nil {
		var ve *audit.VerifyError
		if errors.As(err, &ve) {
			fmt.Fprintf(stderr, "%s:%d: %s\n", cfg.Audit.Path, ve.Line, ve.Reason)
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", cfg.Audit.Path, err)
		}
		fmt.Fprintf(stdout, "%d records verified before the first bad line\n", n)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok, %d records\n", cfg.Audit.Path, n)
	return 0
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil // "-since 24h"
	}
	return time.Time{}, fmt.Errorf("bad time %q: want RFC 3339, YYYY-MM-DD or a duration ago like 24h", s)
}

func cmdAuditSearch(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("audit search", stderr)
	var q audit.Query
	fs.StringVar(&q.Rcpt, "rcpt", "", "recipient address")
	fs.StringVar(&q.From, "from", "", "envelope sender")
	fs.StringVar(&q.Method, "method", "", "method: smime, pgp, tls, portal")
	fs.StringVar(&q.Event, "event", "", "event: decision, fallback, delivery, bounce, portal")
	since := fs.String("since", "", "from this time (RFC 3339, YYYY-MM-DD, or a duration ago)")
	until := fs.String("until", "", "before this time")
	format := fs.String("format", "json", "json or csv")
	if fs.Parse(args) != nil {
		return 2
	}
	var err error
	if q.Since, err = parseTime(*since); err != nil {
		fmt.Fprintln(stderr, "postern audit search: -since:", err)
		return 2
	}
	if q.Until, err = parseTime(*until); err != nil {
		fmt.Fprintln(stderr, "postern audit search: -until:", err)
		return 2
	}
	if *format != "json" && *format != "csv" {
		fmt.Fprintln(stderr, "postern audit search: -format must be json or csv")
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	f, err := os.Open(cfg.Audit.Path)
	if err != nil {
		fmt.Fprintln(stderr, "postern audit search:", err)
		return 1
	}
	defer f.Close()
	if *format == "csv" {
		w := audit.NewCSVWriter(stdout)
		err = audit.Search(f, q, w.Write)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
	} else {
		err = audit.Search(f, q, func(r audit.Record) error { return audit.WriteJSON(stdout, r) })
	}
	if err != nil {
		fmt.Fprintln(stderr, "postern audit search:", err)
		return 1
	}
	return 0
}

func cmdHealthcheck(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("postern healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:9090/healthz", "health URL")
	if fs.Parse(args) != nil {
		return 2
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(*url)
	if err != nil {
		fmt.Fprintln(stderr, "postern healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "postern healthcheck:", resp.Status)
		return 1
	}
	return 0
}

// openMethods builds the key and certificate stores for CLI use (live
// look-ups through delivery.dns and delivery.tls_roots, as serve does).
func openMethods(cfg *config.Config, stderr io.Writer) (*methods.Set, bool) {
	roots, err := server.Roots(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "postern:", err)
		return nil, false
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	set, err := methods.New(cfg, server.NewResolver(cfg), roots, nil, log)
	if err != nil {
		fmt.Fprintln(stderr, "postern:", err)
		return nil, false
	}
	return set, true
}

// configAndArg parses "-config FILE ARG" for the commands that take one
// argument; code is the exit status when they cannot go on.
func configAndArg(name, argName string, args []string, stderr io.Writer) (cfg *config.Config, arg string, code int) {
	fs, cfgPath := newFlags(name, stderr)
	if fs.Parse(args) != nil {
		return nil, "", 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "usage: postern %s -config FILE %s\n", name, argName)
		return nil, "", 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return nil, "", 1
	}
	return cfg, fs.Arg(0), 0
}

func cmdKeysLookup(args []string, stdout, stderr io.Writer) int {
	cfg, addr, code := configAndArg("keys lookup", "ADDR", args, stderr)
	if cfg == nil {
		return code
	}
	set, ok := openMethods(cfg, stderr)
	if !ok {
		return 1
	}
	defer set.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	verdict := func(usable bool) string {
		if usable {
			return "usable"
		}
		return "NOT usable"
	}
	fmt.Fprintf(stdout, "%s\n", addr)
	fmt.Fprintln(stdout, "  S/MIME certificates:")
	if set.SMIME == nil {
		fmt.Fprintln(stdout, "    not configured (keys.smime_dir, keys.ldap.url)")
	} else {
		certs, err := set.SMIME.Lookup(ctx, addr)
		for _, c := range certs {
			fmt.Fprintf(stdout, "    - subject %s\n      serial %s, issuer %s\n      not after %s, SHA-256 %s\n      source %s (%s)\n      %s: %s\n",
				c.Subject, c.Serial, c.Issuer, c.NotAfter.UTC().Format(time.RFC3339), c.Fingerprint, c.Source, c.Origin, verdict(c.Usable), c.Reason)
		}
		if len(certs) == 0 {
			fmt.Fprintln(stdout, "    none found")
		}
		if err != nil {
			fmt.Fprintf(stdout, "    look-up error: %v\n", err)
		}
	}
	fmt.Fprintln(stdout, "  OpenPGP keys:")
	if set.PGP == nil {
		fmt.Fprintln(stdout, "    not configured (keys.pgp_dir, keys.wkd, keys.keyserver)")
	} else {
		keys, err := set.PGP.LookupAll(ctx, addr)
		for _, k := range keys {
			exp := "never"
			if !k.Expires.IsZero() {
				exp = k.Expires.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(stdout, "    - %s (fingerprint %s)\n      user IDs: %s\n      expires %s\n      source %s (%s)\n      %s: %s\n",
				k.KeyID, k.Fingerprint, strings.Join(k.UserIDs, ", "), exp, k.Source, k.Origin, verdict(k.Usable), k.Reason)
		}
		if len(keys) == 0 {
			fmt.Fprintln(stdout, "    none found")
		}
		if err != nil {
			fmt.Fprintf(stdout, "    look-up error: %v\n", err)
		}
	}
	return 0
}

func cmdPortalRevoke(args []string, stdout, stderr io.Writer) int {
	cfg, id, code := configAndArg("portal revoke", "ID", args, stderr)
	if cfg == nil {
		return code
	}
	if !cfg.Portal.Enabled() {
		fmt.Fprintf(stderr, "%s: portal.base_url is not set: no portal\n", cfg.File)
		return 1
	}
	// A running server holds the audit log: ask it (admin listener, loopback).
	if cfg.Admin.Listen != "" {
		host, port, _ := net.SplitHostPort(cfg.Admin.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		u := "http://" + net.JoinHostPort(host, port) + "/admin/portal/revoke?id=" + url.QueryEscape(id)
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Post(u, "text/plain", nil)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Fprint(stdout, string(body))
				return 0
			}
			fmt.Fprintf(stderr, "postern: %s", body)
			return 1
		}
		// Not running: revoke directly.
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := storage.Open(ctx, cfg.Storage.Driver, cfg.Storage.DSN)
	if err != nil {
		fmt.Fprintln(stderr, "postern: storage:", err)
		return 1
	}
	defer st.Close()
	al, err := audit.Open(cfg.Audit.Path, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		// serve holds the audit log's lock: revoke through the same
		// storage, and the running server does not see a record here.
		fmt.Fprintln(stderr, "postern: audit log:", err)
		return 1
	}
	defer al.Close()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	noSend := func(context.Context, string, []string, []byte) error {
		return errors.New("the CLI sends no mail")
	}
	p, err := server.NewPortal(cfg, st, noSend, server.PortalEvents(al, nil, log), log)
	if err != nil {
		fmt.Fprintln(stderr, "postern:", err)
		return 1
	}
	if err := p.Revoke(ctx, id); err != nil {
		if errors.Is(err, portal.ErrNotFound) {
			fmt.Fprintf(stderr, "postern: no portal message %s\n", id)
		} else {
			fmt.Fprintln(stderr, "postern: revoke:", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "portal message %s revoked\n", id)
	return 0
}
