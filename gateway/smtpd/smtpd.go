// Package smtpd is postern's SMTP ingress (RFC 5321) on
// github.com/emersion/go-smtp: STARTTLS, relay authorisation (networks,
// client certificates, AUTH), limits, and durable queuing before "250".
package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/queue"
)

// MaxHops is the Received-header count beyond which a message is taken to
// be looping (RFC 5321 §6.3).
const MaxHops = 50

// Options configure the ingress.
type Options struct {
	Hostname        string
	TLS             *tls.Config // nil: no STARTTLS
	RequireTLS      bool
	MaxMessageBytes int64
	MaxRecipients   int
	MaxConnections  int
	MaxLineLength   int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	AllowedNetworks []netip.Prefix
	ClientCertNames []string          // when set, a verified client certificate naming one of these is required
	ClientCert      bool              // a verified client certificate is required (smtp.client_ca set)
	Users           map[string][]byte // user → bcrypt hash; when set, AUTH is required
	SenderDomains   []string

	Queue   *queue.Queue
	Metrics *metrics.Metrics
	Log     *slog.Logger
}

// Server is the SMTP ingress.
type Server struct {
	opt  Options
	srv  *smtp.Server
	conn atomic.Int64
	seq  atomic.Uint64
}

// New builds the ingress.
func New(opt Options) *Server {
	s := &Server{opt: opt}
	srv := smtp.NewServer(s)
	srv.Domain = opt.Hostname
	srv.TLSConfig = opt.TLS
	srv.MaxMessageBytes = opt.MaxMessageBytes
	srv.MaxRecipients = opt.MaxRecipients
	srv.MaxLineLength = opt.MaxLineLength
	srv.ReadTimeout = opt.ReadTimeout
	srv.WriteTimeout = opt.WriteTimeout
	srv.AllowInsecureAuth = false // AUTH only after STARTTLS
	srv.EnableSMTPUTF8 = true
	srv.EnableREQUIRETLS = opt.TLS != nil
	srv.EnableDSN = true
	srv.EnableBINARYMIME = false
	srv.ErrorLog = slogLogger{opt.Log}
	s.srv = srv
	return s
}

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	return s.srv.Serve(&limitListener{Listener: l, s: s})
}

// Shutdown stops accepting and waits for in-flight sessions until ctx is
// done, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return s.srv.Close()
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// limitListener answers 421 when MaxConnections sessions are open.
type limitListener struct {
	net.Listener
	s *Server
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		max := int64(l.s.opt.MaxConnections)
		if max > 0 && l.s.conn.Load() >= max {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, "421 4.7.0 "+l.s.opt.Hostname+" too many connections, try again later\r\n")
			c.Close()
			l.s.opt.Log.Warn("connection refused: limit reached", "remote", c.RemoteAddr().String(), "limit", max)
			continue
		}
		l.s.conn.Add(1)
		return &countedConn{Conn: c, s: l.s}, nil
	}
}

type countedConn struct {
	net.Conn
	s      *Server
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.s.conn.Add(-1)
	}
	return c.Conn.Close()
}

type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Printf(format string, v ...any) { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s slogLogger) Println(v ...any)               { s.l.Warn(fmt.Sprint(v...)) }

// Errors returned to clients: generic text, detail only in our log.
var (
	errTempLocal   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local error in processing, try again later"}
	errRelayDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied"}
	errNeedTLS     = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errSenderDom   = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender address not allowed to relay through this gateway"}
	errBadAddr     = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}
	errBadSender   = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errLoop        = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: "Too many hops: mail loop detected"}
	errNoRcpt      = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	errNoMail      = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	// A text line over max_line_length is the client's fault and will not
	// get better on retry (RFC 5321 §4.5.3.1.6): refuse it permanently.
	errLineTooLong = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message line too long"}
)

// NewSession implements smtp.Backend.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	id := fmt.Sprintf("c%d", s.seq.Add(1))
	remote := c.Conn().RemoteAddr().String()
	ss := &session{s: s, c: c, remote: remote, log: s.opt.Log.With("conn", id, "remote", remote)}
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		ss.ip = ap.Addr().Unmap()
	}
	ss.log.Debug("connection")
	return ss, nil
}

type session struct {
	s      *Server
	c      *smtp.Conn
	remote string
	ip     netip.Addr
	log    *slog.Logger
	user   string // authenticated AUTH user

	from    *string
	mailOpt smtp.MailOptions
	rcpts   []*queue.Recipient
}

func (ss *session) Reset() {
	ss.from = nil
	ss.rcpts = nil
	ss.mailOpt = smtp.MailOptions{}
}

func (ss *session) Logout() error { return nil }

// AuthMechanisms implements smtp.AuthSession; go-smtp offers AUTH only
// over TLS because AllowInsecureAuth is false.
func (ss *session) AuthMechanisms() []string {
	if len(ss.s.opt.Users) == 0 {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession (RFC 4954; PLAIN RFC 4616; LOGIN).
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if len(ss.s.opt.Users) == 0 {
		return nil, smtp.ErrAuthUnsupported
	}
	check := func(identity, user, pass string) error {
		if identity != "" && identity != user {
			return smtp.ErrAuthFailed
		}
		hash, ok := ss.s.opt.Users[user]
		if !ok {
			// Spend the same time as a real comparison.
			_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(pass))
			ss.log.Warn("auth failed", "user", user)
			return smtp.ErrAuthFailed
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
			ss.log.Warn("auth failed", "user", user)
			return smtp.ErrAuthFailed
		}
		ss.user = user
		ss.log.Info("authenticated", "user", user)
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error { return check(identity, user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: func(u, p string) error { return check("", u, p) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("postern-dummy"), bcrypt.MinCost)

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): two base64 prompts, username then password.
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(resp) > 0 { // initial response carries the user name
			l.user = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user = string(resp)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check(l.user, string(resp))
	}
	return nil, true, smtp.ErrAuthFailed
}

func (ss *session) tlsState() (*tls.ConnectionState, bool) {
	st, ok := ss.c.TLSConnectionState()
	if !ok || !st.HandshakeComplete {
		return nil, false
	}
	return &st, true
}

// relayAllowed: all configured requirements must hold (SPEC §8: never an
// open relay): source network, then client certificate names, then AUTH.
func (ss *session) relayAllowed() (bool, string) {
	o := ss.s.opt
	if !ss.ip.IsValid() || !slices.ContainsFunc(o.AllowedNetworks, func(p netip.Prefix) bool { return p.Contains(ss.ip) }) {
		return false, "client address not in allowed_networks"
	}
	if o.ClientCert || len(o.ClientCertNames) > 0 {
		st, ok := ss.tlsState()
		if !ok || len(st.VerifiedChains) == 0 {
			return false, "no verified client certificate"
		}
	}
	if len(o.ClientCertNames) > 0 {
		st, _ := ss.tlsState()
		leaf := st.VerifiedChains[0][0]
		names := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
		match := false
		for _, want := range o.ClientCertNames {
			for _, n := range names {
				if strings.EqualFold(n, want) {
					match = true
				}
			}
		}
		if !match {
			return false, "client certificate names none of client_cert_names"
		}
	}
	if len(o.Users) > 0 && ss.user == "" {
		return false, "not authenticated"
	}
	return true, ""
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.opt.RequireTLS {
		if _, ok := ss.tlsState(); !ok {
			return errNeedTLS
		}
	}
	if from != "" {
		_, dom, err := ParseAddress(from)
		if err != nil {
			return errBadSender
		}
		if len(ss.s.opt.SenderDomains) > 0 && !slices.Contains(ss.s.opt.SenderDomains, dom) {
			ss.log.Warn("sender domain refused", "from", from)
			ss.s.opt.Metrics.Received.WithLabelValues("rejected").Inc()
			return errSenderDom
		}
	}
	// RFC 8689 §4.1: REQUIRETLS only on a TLS session.
	if opts != nil && opts.RequireTLS {
		if _, ok := ss.tlsState(); !ok {
			return errNeedTLS
		}
	}
	f := from
	ss.from = &f
	if opts != nil {
		ss.mailOpt = *opts
	}
	ss.rcpts = nil
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if ss.from == nil {
		return errNoMail
	}
	if ok, why := ss.relayAllowed(); !ok {
		ss.log.Warn("relay denied", "rcpt", to, "why", why)
		ss.s.opt.Metrics.Received.WithLabelValues("rejected").Inc()
		return errRelayDenied
	}
	if _, _, err := ParseAddress(to); err != nil {
		return errBadAddr
	}
	for _, have := range ss.rcpts {
		if strings.EqualFold(have.Addr, to) {
			return nil // the same recipient twice: one copy (RFC 5321 §3.3 lets us accept it)
		}
	}
	r := &queue.Recipient{Addr: to}
	if opts != nil {
		for _, n := range opts.Notify {
			r.Notify = append(r.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			r.ORCPT = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if ss.from == nil {
		return errNoMail
	}
	if len(ss.rcpts) == 0 {
		return errNoRcpt
	}
	q := ss.s.opt.Queue
	w, err := q.NewMessage()
	if err != nil {
		ss.log.Error("queue: cannot create message", "err", err)
		ss.s.opt.Metrics.Received.WithLabelValues("error").Inc()
		_, _ = io.Copy(io.Discard, r)
		return errTempLocal
	}
	log := ss.log.With("queue_id", w.ID())
	msgID, hdrFrom, tlsRequiredNo, err := ss.copyMessage(w, r)
	if err == nil && *ss.from == "" && len(ss.s.opt.SenderDomains) > 0 && !ss.headerFromAllowed(hdrFrom) {
		// A null sender (bounce) carries no domain to check; its header
		// From must then be one of ours, or MAIL FROM:<> would let anyone
		// behind the same network or certificate relay anything.
		err = errSenderDom
	}
	if err != nil {
		w.Abort()
		var se *smtp.SMTPError
		if errors.Is(err, smtp.ErrTooLongLine) {
			se = errLineTooLong
		}
		if se != nil || errors.As(err, &se) {
			ss.s.opt.Metrics.Received.WithLabelValues("rejected").Inc()
			log.Warn("message refused", "reply", se.Error())
			return se // never wrapped: go-smtp needs the *SMTPError itself
		}
		log.Error("queue: cannot write message", "err", err)
		ss.s.opt.Metrics.Received.WithLabelValues("error").Inc()
		return errTempLocal
	}
	env := queue.Envelope{From: *ss.from, UTF8: ss.mailOpt.UTF8, RequireTLS: ss.mailOpt.RequireTLS,
		Ret: string(ss.mailOpt.Return), EnvID: ss.mailOpt.EnvelopeID, Body: string(ss.mailOpt.Body),
		// RFC 8689 §5: the header is ignored when REQUIRETLS is given.
		TLSRequiredNo: tlsRequiredNo && !ss.mailOpt.RequireTLS}
	it, err := w.Commit(env, ss.rcpts, msgID, ss.remote)
	if err != nil {
		log.Error("queue: cannot commit message", "err", err)
		ss.s.opt.Metrics.Received.WithLabelValues("error").Inc()
		return errTempLocal
	}
	ss.s.opt.Metrics.Received.WithLabelValues("accepted").Inc()
	log.Info("queued", "from", env.From, "rcpts", len(it.Rcpts), "size", it.Size, "message_id", msgID)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + it.ID}
}

// copyMessage writes our Received header, then the message, counting hops
// and adding a Message-ID when the header has none (RFC 5321 §6.4 lets a
// submission relay add one). It returns the message's Message-ID.
func (ss *session) copyMessage(w *queue.Writer, r io.Reader) (msgID, from string, tlsRequiredNo bool, err error) {
	if _, err := io.WriteString(w, ss.received(w.ID())); err != nil {
		return "", "", false, err
	}
	br := bufio.NewReaderSize(r, 64<<10)
	hops := 1 // ours
	inMsgID, inFrom := false, false
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An over-long header line: keep it, unparsed.
			if _, werr := w.Write(line); werr != nil {
				return "", "", false, werr
			}
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				if _, werr := w.Write(line); werr != nil {
					return "", "", false, werr
				}
			}
			if err != nil && err != io.EOF {
				return "", "", false, err
			}
			if err == io.EOF {
				break
			}
			continue
		}
		if err != nil && err != io.EOF {
			return "", "", false, err
		}
		isEnd := len(line) == 0 || string(line) == "\r\n" || string(line) == "\n"
		if isEnd {
			if msgID == "" {
				msgID = "<" + w.ID() + "@" + ss.s.opt.Hostname + ">"
				if _, werr := io.WriteString(w, "Message-ID: "+msgID+"\r\n"); werr != nil {
					return "", "", false, werr
				}
			}
			if _, werr := w.Write(line); werr != nil {
				return "", "", false, werr
			}
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if inMsgID && msgID == "" {
				msgID = strings.TrimSpace(string(line))
			}
			if inFrom {
				from += " " + strings.TrimSpace(string(line))
			}
		} else {
			inMsgID, inFrom = false, false
			name, val, _ := strings.Cut(string(line), ":")
			switch {
			case strings.EqualFold(strings.TrimSpace(name), "Received"):
				hops++
				if hops > MaxHops {
					_, _ = io.Copy(io.Discard, br)
					return "", "", false, errLoop
				}
			case strings.EqualFold(strings.TrimSpace(name), "Message-ID"):
				msgID = strings.TrimSpace(val)
				inMsgID = true
			case strings.EqualFold(strings.TrimSpace(name), "TLS-Required"):
				// RFC 8689 §5: "TLS-Required: No" asks to relax
				// recipient-published TLS policies.
				tlsRequiredNo = strings.EqualFold(strings.TrimSpace(val), "No")
			case strings.EqualFold(strings.TrimSpace(name), "From") && from == "":
				from = strings.TrimSpace(val)
				inFrom = true
			}
		}
		if _, werr := w.Write(line); werr != nil {
			return "", "", false, werr
		}
		if err == io.EOF {
			break
		}
	}
	if _, err := io.Copy(w, br); err != nil {
		return "", "", false, err
	}
	if len(msgID) > 998 {
		msgID = msgID[:998]
	}
	return msgID, from, tlsRequiredNo, nil
}

// headerFromAllowed reports whether the header From address is in
// sender_domains.
func (ss *session) headerFromAllowed(from string) bool {
	addrs, err := mail.ParseAddressList(from)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		_, dom, err := ParseAddress(a.Address)
		if err != nil || !slices.Contains(ss.s.opt.SenderDomains, dom) {
			return false
		}
	}
	return true
}

// received builds our trace header (RFC 5321 §4.4, protocol names RFC 3848).
func (ss *session) received(id string) string {
	proto := "ESMTP"
	tlsInfo := ""
	if st, ok := ss.tlsState(); ok {
		proto = "ESMTPS"
		tlsInfo = fmt.Sprintf(" (%s %s)", strings.ReplaceAll(tls.VersionName(st.Version), " ", ""), tls.CipherSuiteName(st.CipherSuite))
	}
	if ss.user != "" {
		proto += "A"
	}
	if ss.mailOpt.UTF8 {
		proto = "UTF8" + proto // RFC 6531 §3.7.3
	}
	helo := sanitizeHelo(ss.c.Hostname())
	ip := ss.ip.String()
	if ss.ip.Is6() {
		ip = "IPv6:" + ip
	}
	forClause := ""
	if len(ss.rcpts) == 1 {
		forClause = "\r\n\tfor <" + ss.rcpts[0].Addr + ">"
	}
	return fmt.Sprintf("Received: from %s ([%s])\r\n\tby %s (postern) with %s%s id %s%s;\r\n\t%s\r\n",
		helo, ip, ss.s.opt.Hostname, proto, tlsInfo, id, forClause, time.Now().Format(time.RFC1123Z))
}

func sanitizeHelo(h string) string {
	h = strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' || r == '(' || r == ')' || r == ';' {
			return -1
		}
		return r
	}, h)
	if h == "" {
		return "unknown"
	}
	if len(h) > 255 {
		h = h[:255]
	}
	return h
}
