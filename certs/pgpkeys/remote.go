package pgpkeys

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// zbase32 is the z-base-32 alphabet (draft-koch-openpgp-webkey-service
// §3.1 refers to RFC 6189 §5.1.6); bits are taken most significant first,
// as in RFC 4648 base32.
var zbase32 = base32.NewEncoding("ybndrfg8ejkmcpqxot1uwisza345h769").WithPadding(base32.NoPadding)

// maxRedirects bounds redirects within one host.
const maxRedirects = 5

// errRedirectRefused marks a redirect to another host or scheme.
var errRedirectRefused = errors.New("redirect to another host refused")

// newHTTPClient builds the client for WKD and VKS: dialing through
// opt.Dial, trusting opt.RootCAs, no proxy, redirects only within the host.
func newHTTPClient(opt Options) (*http.Transport, *http.Client) {
	dial := opt.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: opt.Timeout}
		dial = d.DialContext
	}
	tr := &http.Transport{
		Proxy:                  nil, // look-ups go where delivery.dns says, never through an environment proxy
		DialContext:            dial,
		TLSClientConfig:        &tls.Config{RootCAs: opt.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    opt.Timeout,
		ResponseHeaderTimeout:  opt.Timeout,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        opt.Timeout * 6,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      true,
	}
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// draft-koch-openpgp-webkey-service §3.1: no redirects to
			// other hosts; we hold VKS to the same rule.
			if len(via) >= maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			first := via[0].URL
			if req.URL.Scheme != first.Scheme || !strings.EqualFold(req.URL.Host, first.Host) {
				return fmt.Errorf("%w: %s", errRedirectRefused, req.URL.Redacted())
			}
			return nil
		},
	}
	return tr, client
}

// httpAnswer is the outcome of one GET that reached the server.
type httpAnswer struct {
	status int
	body   []byte
}

// noAnswerError is a GET that got no HTTP answer at all (DNS, connection,
// TLS failure): the case in which WKD falls back to the direct method.
type noAnswerError struct{ err error }

func (e *noAnswerError) Error() string { return e.err.Error() }
func (e *noAnswerError) Unwrap() error { return e.err }

// get fetches u with the per-request timeout and the size cap. A non-200
// status is an answer, not an error.
func (s *Store) get(ctx context.Context, u string) (*httpAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("User-Agent", "postern")
	req.Header.Set("Accept", "application/octet-stream, application/pgp-keys")
	resp, err := s.client.Do(req)
	if err != nil {
		if errors.Is(err, errRedirectRefused) {
			return nil, err
		}
		return nil, &noAnswerError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return &httpAnswer{status: resp.StatusCode}, nil
	}
	if resp.ContentLength > s.opt.MaxKeyBytes {
		return nil, fmt.Errorf("GET %s: answer of %d bytes is over the %d-byte limit", u, resp.ContentLength, s.opt.MaxKeyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.opt.MaxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", u, err)
	}
	if int64(len(body)) > s.opt.MaxKeyBytes {
		return nil, fmt.Errorf("GET %s: answer is over the %d-byte limit", u, s.opt.MaxKeyBytes)
	}
	return &httpAnswer{status: resp.StatusCode, body: body}, nil
}

// WKDURLs returns the advanced and direct method URLs for addr
// (draft-koch-openpgp-webkey-service §3.1): the local part is mapped to
// lower case (ASCII only), hashed with SHA-1 and encoded in z-base-32; the
// original local part goes in the "l" parameter, percent-escaped.
func WKDURLs(addr string) (advanced, direct string, err error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", "", fmt.Errorf("invalid address %q", addr)
	}
	local, domain := addr[:at], strings.ToLower(addr[at+1:])
	if strings.ContainsAny(domain, "/?#@:[] \t") {
		return "", "", fmt.Errorf("invalid domain in %q", addr)
	}
	sum := sha1.Sum([]byte(asciiLower(local)))
	hu := zbase32.EncodeToString(sum[:])
	q := "?l=" + url.QueryEscape(local)
	advanced = "https://openpgpkey." + domain + "/.well-known/openpgpkey/" + domain + "/hu/" + hu + q
	direct = "https://" + domain + "/.well-known/openpgpkey/hu/" + hu + q
	return advanced, direct, nil
}

// asciiLower maps only A–Z to lower case, as the WKD draft requires
// (other characters are left alone).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// fetchWKD asks the Web Key Directory for addr: the advanced method first,
// then the direct method when the advanced host gave no HTTP answer (its
// name does not exist, or it cannot be reached). A 404 is "no key".
func (s *Store) fetchWKD(ctx context.Context, rawAddr, addr string) ([]*parsedKey, error) {
	// The address is used as given for the "l" parameter; the hash is
	// computed from its lower-cased local part either way.
	adv, direct, err := WKDURLs(rawAddr)
	if err != nil {
		return nil, err
	}
	u := adv
	ans, err := s.get(ctx, adv)
	var na *noAnswerError
	if errors.As(err, &na) {
		s.opt.Log.Debug("WKD advanced method unavailable, trying direct", "url", adv, "err", err)
		advErr := err
		u = direct
		ans, err = s.get(ctx, direct)
		if err != nil {
			return nil, fmt.Errorf("WKD advanced method: %w; direct method: %w", advErr, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("WKD: %w", err)
	}
	return answerKeys(ans, u)
}

// vksURL is the VKS by-email URL under base for addr.
func vksURL(base, addr string) (string, error) {
	b, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil {
		return "", fmt.Errorf("keys.keyserver %q: %w", base, err)
	}
	if (b.Scheme != "https" && b.Scheme != "http") || b.Host == "" {
		return "", fmt.Errorf("keys.keyserver %q: want an http(s) URL with a host", base)
	}
	// RFC 3986 §3.3: "@" may appear in a path segment, but VKS servers
	// expect it percent-encoded.
	return b.String() + "/vks/v1/by-email/" + strings.ReplaceAll(url.PathEscape(addr), "@", "%40"), nil
}

// fetchVKS asks the Verifying Keyserver for addr (VKS API, GET
// /vks/v1/by-email/). A 404 is "no key".
func (s *Store) fetchVKS(ctx context.Context, _, addr string) ([]*parsedKey, error) {
	u, err := vksURL(s.opt.Keyserver, addr)
	if err != nil {
		return nil, err
	}
	ans, err := s.get(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("VKS: %w", err)
	}
	return answerKeys(ans, u)
}

// answerKeys parses a 200 answer; 404 (and 410) mean no key; other
// statuses are errors.
func answerKeys(ans *httpAnswer, u string) ([]*parsedKey, error) {
	switch ans.status {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusGone:
		return nil, nil
	default:
		return nil, fmt.Errorf("GET %s: HTTP status %d", u, ans.status)
	}
	keys, err := parseKeys(ans.body, u)
	if len(keys) == 0 && err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return keys, nil
}
