package deliver

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// pipeClient returns a client reading the bytes of server from a net.Pipe.
// The writer stops when the client end is closed (at cleanup).
func pipeClient(t testing.TB, server []byte) *client {
	t.Helper()
	cli, srv := net.Pipe()
	go func() {
		_, _ = srv.Write(server)
		srv.Close()
	}()
	c := newClient(cli, 2*time.Second)
	t.Cleanup(func() { cli.Close() })
	return c
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Reply
	}{
		{"250 OK\r\n", Reply{Code: 250, Text: "OK"}},
		{"250\r\n", Reply{Code: 250}},
		{"250 \r\n", Reply{Code: 250}},
		{"220 mx.example ESMTP ready\r\n", Reply{Code: 220, Text: "mx.example ESMTP ready"}},
		{"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n", Reply{Code: 250, Text: "mx.example; PIPELINING; SIZE 100"}},
		{"550 5.1.1 no such user\r\n", Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		{"550-5.1.1 no such\r\n550 5.1.1 user\r\n", Reply{Code: 550, Enhanced: "5.1.1", Text: "no such; user"}},
		{"451 4.7.500 greylisted\r\n", Reply{Code: 451, Enhanced: "4.7.500", Text: "greylisted"}},
		{"250 2.0.0\r\n", Reply{Code: 250, Enhanced: "2.0.0"}},
		// Not enhanced codes: wrong class, too many digits, not numbers.
		{"550 4.1.1 wrong class\r\n", Reply{Code: 550, Text: "4.1.1 wrong class"}},
		{"550 5.1.1000 long\r\n", Reply{Code: 550, Text: "5.1.1000 long"}},
		{"550 5.a.1 letters\r\n", Reply{Code: 550, Text: "5.a.1 letters"}},
		{"550 5.1 short\r\n", Reply{Code: 550, Text: "5.1 short"}},
		{"550 5..1 empty\r\n", Reply{Code: 550, Text: "5..1 empty"}},
		{"250 OK\n", Reply{Code: 250, Text: "OK"}}, // bare LF tolerated
	} {
		c := pipeClient(t, []byte(tc.in))
		got, _, err := c.readReply()
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestReadReplyMalformed(t *testing.T) {
	for _, in := range []string{
		"",
		"garbage\r\n",
		"25\r\n",
		"abc def\r\n",
		"199 too low\r\n",
		"600 too high\r\n",
		"-50 negative\r\n",
		"+25 sign\r\n",
		"250xOK\r\n",
		"250-first\r\n251 second\r\n",
		"250-unterminated\r\n",
		"250-first\r\n",
		"\x00\x00\x00\x00\r\n",
		strings.Repeat("250-x\r\n", 1001) + "250 end\r\n",
	} {
		c := pipeClient(t, []byte(in))
		r, _, err := c.readReply()
		if err == nil {
			t.Errorf("%q: accepted as %+v", in, r)
		}
	}
}

func TestReplyLongTextTruncated(t *testing.T) {
	c := pipeClient(t, []byte("250 "+strings.Repeat("x", 2000)+"\r\n"))
	r, _, err := c.readReply()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Text) > 410 {
		t.Errorf("text of %d bytes not truncated", len(r.Text))
	}
}

func TestReplyString(t *testing.T) {
	for _, tc := range []struct {
		r    Reply
		want string
	}{
		{Reply{Code: 250}, "250"},
		{Reply{Code: 250, Text: "OK"}, "250 OK"},
		{Reply{Code: 550, Enhanced: "5.1.1", Text: "no"}, "550 5.1.1 no"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r, got, tc.want)
		}
	}
	if !(Reply{Code: 451}).Temporary() || (Reply{Code: 550}).Temporary() || (Reply{Code: 250}).Temporary() {
		t.Error("Temporary wrong")
	}
	err := error(&ReplyError{Cmd: "RCPT", Reply: Reply{Code: 550, Enhanced: "5.1.1", Text: "no"}})
	if err.Error() != "RCPT: 550 5.1.1 no" {
		t.Errorf("ReplyError %q", err.Error())
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err    error
		want   Outcome
		status string
	}{
		{&ReplyError{Cmd: "RCPT", Reply: Reply{Code: 550, Enhanced: "5.1.1"}}, Permanent, "5.1.1"},
		{&ReplyError{Cmd: "RCPT", Reply: Reply{Code: 554}}, Permanent, "5.0.0"},
		{&ReplyError{Cmd: "RCPT", Reply: Reply{Code: 452, Enhanced: "4.5.3"}}, Temporary, "4.5.3"},
		{&ReplyError{Cmd: "DATA", Reply: Reply{Code: 421}}, Temporary, "4.0.0"},
		{errors.New("read reply: EOF"), Temporary, "4.4.2"},
	} {
		o, st, _ := classify(tc.err, "4.4.2")
		if o != tc.want || st != tc.status {
			t.Errorf("%v: got %v %s, want %v %s", tc.err, o, st, tc.want, tc.status)
		}
	}
}

func TestXtext(t *testing.T) {
	// RFC 3461 §4: "+", "=", controls, space and non-ASCII are hex-encoded.
	if got, want := xtext("a+b=c d\x01é"), "a+2Bb+3Dc+20d+01+C3+A9"; got != want {
		t.Errorf("xtext = %q, want %q", got, want)
	}
}

// scripted runs a server on a net.Pipe that sends replies[0] as its
// greeting and then answers each command line with the next reply. done
// closes the client and returns the command lines the server read.
func scripted(t *testing.T, replies ...string) (c *client, done func() []string) {
	t.Helper()
	cli, srv := net.Pipe()
	got := make(chan []string, 1)
	go func() {
		defer srv.Close()
		var lines []string
		defer func() { got <- lines }()
		br := bufio.NewReader(srv)
		if _, err := io.WriteString(srv, replies[0]); err != nil {
			return
		}
		for _, r := range replies[1:] {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			lines = append(lines, strings.TrimRight(line, "\r\n"))
			if _, err := io.WriteString(srv, r); err != nil {
				return
			}
		}
	}()
	c = newClient(cli, 2*time.Second)
	t.Cleanup(func() { cli.Close() })
	return c, func() []string {
		cli.Close()
		return <-got
	}
}

// EHLO refused: HELO fallback, and then no extension parameters at all.
func TestClientHELOFallback(t *testing.T) {
	c, done := scripted(t, "220 hi\r\n", "502 5.5.1 no EHLO\r\n", "250 hello\r\n", "250 ok\r\n", "250 ok\r\n")
	if err := c.greet("me.test"); err != nil {
		t.Fatal(err)
	}
	if c.has("STARTTLS") || c.has("DSN") {
		t.Error("extensions after HELO")
	}
	if _, err := c.mail("a@x.test", MailParams{Size: 10, Ret: "FULL", EnvID: "id"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.rcpt("b@y.test", []string{"NEVER"}, "rfc822;b@y.test"); err != nil {
		t.Fatal(err)
	}
	want := []string{"EHLO me.test", "HELO me.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>"}
	if lines := done(); strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Errorf("client sent %q, want %q", lines, want)
	}
}

func TestClientEHLOExtensions(t *testing.T) {
	c, done := scripted(t, "220 hi\r\n",
		"250-mx.test greets\r\n250-size 1000\r\n250-8BITMIME\r\n250 dsn\r\n",
		"250 ok\r\n", "250 ok\r\n")
	if err := c.greet("me.test"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"SIZE", "8BITMIME", "DSN"} {
		if !c.has(ext) {
			t.Errorf("extension %s not recognised", ext)
		}
	}
	if c.ext["SIZE"] != "1000" || c.has("MX.TEST") {
		t.Errorf("extensions %v", c.ext)
	}
	if _, err := c.mail("a@x.test", MailParams{Size: 10, Ret: "HDRS", EnvID: "a+b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.rcpt("b@y.test", []string{"SUCCESS", "DELAY"}, "rfc822;b=c@y.test"); err != nil {
		t.Fatal(err)
	}
	want := []string{"EHLO me.test", "MAIL FROM:<a@x.test> BODY=8BITMIME SIZE=10 RET=HDRS ENVID=a+2Bb",
		"RCPT TO:<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+3Dc@y.test"}
	if lines := done(); strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Errorf("client sent\n%q\nwant\n%q", lines, want)
	}
}

func TestClientRejections(t *testing.T) {
	t.Run("banner 554", func(t *testing.T) {
		c, done := scripted(t, "554 5.7.1 go away\r\n")
		err := c.greet("me.test")
		var re *ReplyError
		if !errors.As(err, &re) || re.Reply.Code != 554 {
			t.Errorf("got %v", err)
		}
		done()
	})
	t.Run("EHLO 421", func(t *testing.T) {
		c, done := scripted(t, "220 hi\r\n", "421 4.3.2 closing\r\n")
		err := c.greet("me.test")
		var re *ReplyError
		if !errors.As(err, &re) || re.Reply.Code != 421 {
			t.Errorf("got %v", err)
		}
		done()
	})
	t.Run("DATA refused", func(t *testing.T) {
		c, done := scripted(t, "220 hi\r\n", "250 ok\r\n", "554 5.5.1 no valid recipients\r\n")
		if err := c.greet("me.test"); err != nil {
			t.Fatal(err)
		}
		r, err := c.data(strings.NewReader("x\r\n"))
		var re *ReplyError
		if !errors.As(err, &re) || r.Code != 554 || re.Cmd != "DATA" {
			t.Errorf("got %+v, %v", r, err)
		}
		done()
	})
}

// FuzzReadReply feeds random bytes to the client's reply reader through a
// net.Pipe: it must return replies or errors, never panic or hang.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 OK\r\n",
		"250-a\r\n250-b\r\n250 c\r\n",
		"550 5.1.1 no such user\r\n",
		"550-5.1.1 a\r\n550 5.1.1 b\r\n",
		"250-a\r\n251 b\r\n",
		"999 x\r\n",
		"250",
		"2500\r\n",
		"\r\n\r\n",
		"451 4.7.1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := pipeClient(t, data)
		for range 64 {
			r, lines, err := c.readReply()
			if err != nil {
				return
			}
			if r.Code < 200 || r.Code > 599 {
				t.Fatalf("code %d accepted", r.Code)
			}
			if len(lines) == 0 || len(lines) > 1000 {
				t.Fatalf("%d lines", len(lines))
			}
			if len(r.Text) > 400+len("…") {
				t.Fatalf("text of %d bytes", len(r.Text))
			}
			if r.Enhanced != "" && r.Enhanced[0] != byte('0'+r.Code/100) {
				t.Fatalf("enhanced %q with code %d", r.Enhanced, r.Code)
			}
		}
	})
}
