package deliver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// Reply is one SMTP reply (RFC 5321 §4.2).
type Reply struct {
	Code     int
	Enhanced string // "5.1.1", "" when the server sent none (RFC 3463)
	Text     string // the reply's text, lines joined with "; "
}

func (r Reply) String() string {
	s := strconv.Itoa(r.Code)
	if r.Enhanced != "" {
		s += " " + r.Enhanced
	}
	if r.Text != "" {
		s += " " + r.Text
	}
	return s
}

// Temporary reports a 4yz reply.
func (r Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// ReplyError is an unexpected reply.
type ReplyError struct {
	Cmd   string
	Reply Reply
}

func (e *ReplyError) Error() string { return e.Cmd + ": " + e.Reply.String() }

// client is a minimal SMTP client for outbound delivery (RFC 5321), with
// the extensions postern relays: STARTTLS (RFC 3207), SIZE (RFC 1870),
// 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), REQUIRETLS
// (RFC 8689). It exists because go-smtp's client cannot say EHLO with our
// hostname before STARTTLS.
type client struct {
	conn    net.Conn
	text    *textproto.Conn
	ext     map[string]string
	timeout time.Duration
	tls     *tls.ConnectionState
}

func newClient(conn net.Conn, timeout time.Duration) *client {
	return &client{conn: conn, text: textproto.NewConn(conn), timeout: timeout}
}

func (c *client) deadline() {
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
}

// readReply reads a possibly multi-line reply.
func (c *client) readReply() (Reply, []string, error) {
	c.deadline()
	var lines []string
	code := 0
	for {
		line, err := c.readLine()
		if err != nil {
			return Reply{}, nil, fmt.Errorf("read reply: %w", err)
		}
		if len(line) < 3 {
			return Reply{}, nil, fmt.Errorf("malformed reply %q", truncate(line, 80))
		}
		n, err := strconv.Atoi(line[:3])
		if err != nil || n < 200 || n > 599 {
			return Reply{}, nil, fmt.Errorf("malformed reply %q", truncate(line, 80))
		}
		if code != 0 && n != code {
			return Reply{}, nil, fmt.Errorf("inconsistent multi-line reply %q", truncate(line, 80))
		}
		code = n
		rest := ""
		if len(line) > 4 {
			rest = line[4:]
		}
		lines = append(lines, rest)
		if len(lines) > 1000 {
			return Reply{}, nil, errors.New("reply has too many lines")
		}
		if len(line) == 3 || line[3] == ' ' {
			break
		}
		if line[3] != '-' {
			return Reply{}, nil, fmt.Errorf("malformed reply %q", truncate(line, 80))
		}
	}
	r := Reply{Code: code}
	texts := make([]string, 0, len(lines))
	for i, l := range lines {
		// RFC 3463 enhanced code at the start of the text.
		if ec, rest, ok := cutEnhanced(l, code); ok {
			if i == 0 {
				r.Enhanced = ec
			}
			l = rest
		}
		texts = append(texts, l)
	}
	r.Text = truncate(strings.Join(texts, "; "), 400)
	return r, lines, nil
}

// maxReplyLine bounds one reply line (RFC 5321 §4.5.3.1.5 allows 512
// octets; we are lenient but a hostile server cannot exhaust memory).
const maxReplyLine = 64 << 10

// readLine reads one reply line without its CRLF, refusing over-long ones.
func (c *client) readLine() (string, error) {
	var buf []byte
	for {
		frag, err := c.text.R.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > maxReplyLine {
			return "", errors.New("reply line too long")
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
	return strings.TrimRight(string(buf), "\r\n"), nil
}

func cutEnhanced(s string, code int) (string, string, bool) {
	f, rest, _ := strings.Cut(s, " ")
	parts := strings.Split(f, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || parts[0][0] != byte('0'+code/100) {
		return "", s, false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 {
			return "", s, false
		}
		if _, err := strconv.Atoi(p); err != nil {
			return "", s, false
		}
	}
	return f, rest, true
}

func (c *client) cmd(expect int, format string, args ...any) (Reply, error) {
	c.deadline()
	if err := c.text.PrintfLine(format, args...); err != nil {
		return Reply{}, fmt.Errorf("write command: %w", err)
	}
	r, _, err := c.readReply()
	if err != nil {
		return r, err
	}
	if r.Code/100 != expect/100 {
		verb, _, _ := strings.Cut(fmt.Sprintf(format, args...), " ")
		return r, &ReplyError{Cmd: verb, Reply: r}
	}
	return r, nil
}

// greet reads the banner and says EHLO (falling back to HELO).
func (c *client) greet(hostname string) error {
	r, _, err := c.readReply()
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return &ReplyError{Cmd: "greeting", Reply: r}
	}
	return c.ehlo(hostname)
}

func (c *client) ehlo(hostname string) error {
	c.deadline()
	if err := c.text.PrintfLine("EHLO %s", hostname); err != nil {
		return fmt.Errorf("write EHLO: %w", err)
	}
	r, lines, err := c.readReply()
	if err != nil {
		return err
	}
	if r.Code != 250 {
		if r.Code >= 500 && r.Code < 510 {
			if _, err := c.cmd(250, "HELO %s", hostname); err != nil {
				return err
			}
			c.ext = map[string]string{}
			return nil
		}
		return &ReplyError{Cmd: "EHLO", Reply: r}
	}
	c.ext = map[string]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// startTLS upgrades the connection (RFC 3207) and says EHLO again.
func (c *client) startTLS(cfg *tls.Config, hostname string) error {
	if _, err := c.cmd(220, "STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.conn, cfg)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		return &tlsError{err: err}
	}
	st := tc.ConnectionState()
	c.tls = &st
	c.conn = tc
	c.text = textproto.NewConn(tc)
	return c.ehlo(hostname)
}

// tlsError marks a failed TLS handshake (certificate or protocol).
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// MailParams are the MAIL FROM parameters relayed.
type MailParams struct {
	Size       int64
	UTF8       bool
	RequireTLS bool
	Ret        string
	EnvID      string
	// TLSRequiredNo (RFC 8689 §5, "TLS-Required: No"): do not enforce the
	// recipient domain's published DANE or MTA-STS policy; the requested
	// TLS level (postern's policy) still holds. Not sent as a parameter.
	TLSRequiredNo bool
}

func (c *client) mail(from string, p MailParams) (Reply, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL FROM:<%s>", from)
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if c.has("SIZE") && p.Size > 0 {
		fmt.Fprintf(&b, " SIZE=%d", p.Size)
	}
	if p.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if p.RequireTLS {
		b.WriteString(" REQUIRETLS")
	}
	if c.has("DSN") {
		if p.Ret != "" {
			b.WriteString(" RET=" + p.Ret)
		}
		if p.EnvID != "" {
			b.WriteString(" ENVID=" + xtext(p.EnvID))
		}
	}
	return c.cmd(250, "%s", b.String())
}

func (c *client) rcpt(to string, notify []string, orcpt string) (Reply, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "RCPT TO:<%s>", to)
	if c.has("DSN") {
		if len(notify) > 0 {
			b.WriteString(" NOTIFY=" + strings.Join(notify, ","))
		}
		if orcpt != "" {
			typ, addr, ok := strings.Cut(orcpt, ";")
			if ok {
				b.WriteString(" ORCPT=" + typ + ";" + xtext(addr))
			}
		}
	}
	return c.cmd(250, "%s", b.String())
}

// data sends the message with dot-stuffing (RFC 5321 §4.5.2).
func (c *client) data(body io.Reader) (Reply, error) {
	if _, err := c.cmd(354, "DATA"); err != nil {
		var re *ReplyError
		if errors.As(err, &re) {
			return re.Reply, err
		}
		return Reply{}, err
	}
	_ = c.conn.SetDeadline(time.Time{})
	w := c.text.DotWriter()
	bw := bufio.NewWriterSize(w, 64<<10)
	// Deadline per chunk written, so a slow but live peer is not cut off.
	if _, err := io.Copy(bw, &deadlineReader{r: body, c: c}); err != nil {
		return Reply{}, fmt.Errorf("send message: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return Reply{}, fmt.Errorf("send message: %w", err)
	}
	c.deadline()
	if err := w.Close(); err != nil {
		return Reply{}, fmt.Errorf("end message: %w", err)
	}
	r, _, err := c.readReply()
	if err != nil {
		return r, err
	}
	if r.Code != 250 {
		return r, &ReplyError{Cmd: "DATA", Reply: r}
	}
	return r, nil
}

type deadlineReader struct {
	r io.Reader
	c *client
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.c.deadline()
	return d.r.Read(p)
}

func (c *client) quit() {
	_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	_ = c.text.PrintfLine("QUIT")
	_, _, _ = c.readReply()
	c.conn.Close()
}

// xtext encodes per RFC 3461 §4.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < 33 || ch > 126 || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
		} else {
			b.WriteByte(ch)
		}
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// dialContext opens a TCP connection with a timeout.
func dialContext(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	return d.DialContext(ctx, "tcp", addr)
}
