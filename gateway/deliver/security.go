package deliver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/postern-mail/postern/gateway/dane"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/mtasts"
)

// hostPlan is what one MX host must meet beyond the requested level: the
// domain's published policies as they apply to this host.
type hostPlan struct {
	name string
	// tlsa holds the usable DANE records (RFC 7672 §3.1) of a
	// DNSSEC-authentic TLSA RRset; when non-empty DANE decides and
	// outranks MTA-STS (RFC 8461 §2).
	tlsa []dnsr.TLSA
	// tlsaSecure: an authentic TLSA RRset exists, even if none of its
	// records is usable; TLS is then mandatory (RFC 7672 §2.2).
	tlsaSecure bool
	// sts is the domain's MTA-STS policy (mode enforce or testing), nil
	// when none; stsMatch tells whether this host is listed in it.
	sts      *mtasts.Policy
	stsMatch bool
}

func (hp *hostPlan) useDANE() bool { return len(hp.tlsa) > 0 }

// stsEnforced reports whether the MTA-STS policy is enforced for this
// host: mode enforce, or the level or REQUIRETLS demanding MTA-STS.
func (hp *hostPlan) stsEnforced(level string, requireTLS bool) bool {
	if hp.useDANE() || hp.sts == nil {
		return false
	}
	return hp.sts.Mode == mtasts.ModeEnforce || level == LevelMTASTS || requireTLS
}

// stsTesting reports an MTA-STS policy in testing mode whose failures are
// only recorded (RFC 8461 §5).
func (hp *hostPlan) stsTesting(level string, requireTLS bool) bool {
	return !hp.useDANE() && hp.sts != nil && !hp.stsEnforced(level, requireTLS)
}

// refuse tells whether the host cannot be used at all before connecting,
// with the outcome, status and reason.
func (hp *hostPlan) refuse(level string, requireTLS bool) (Outcome, string, string) {
	if hp.useDANE() {
		return Delivered, "", ""
	}
	switch {
	case level == LevelDANE:
		why := "no DNSSEC-validated TLSA records for MX " + hp.name
		if hp.tlsaSecure {
			why = "no usable (DANE-TA or DANE-EE) TLSA records for MX " + hp.name
		}
		return TLSUnavailable, "4.7.5", why
	case hp.stsEnforced(level, requireTLS) && !hp.stsMatch:
		// RFC 8461 §4.1: an MX not matching the policy is not used.
		return TLSUnavailable, "4.7.5", "MX " + hp.name + " is not listed in the domain's MTA-STS policy"
	case level == LevelMTASTS && hp.sts == nil:
		return TLSUnavailable, "4.7.5", "the domain publishes no MTA-STS policy"
	case requireTLS && hp.sts == nil:
		// RFC 8689 §4.2.1: REQUIRETLS needs DANE or MTA-STS for the MX.
		return Permanent, statusRequireTLS, "REQUIRETLS: MX " + hp.name + " is covered by neither DANE nor MTA-STS"
	}
	return Delivered, "", ""
}

// stsPolicy fetches the domain's MTA-STS policy when enabled. A policy in
// mode none counts as no policy (RFC 8461 §5). The level mta-sts needs a
// policy: without one the result is TLSUnavailable, and Temporary when
// the policy cannot be determined right now.
func stsPolicy(ctx context.Context, o *Options, domain, level string) (*mtasts.Policy, *Result) {
	if o.MTASTS == nil {
		if level == LevelMTASTS {
			return nil, &Result{Outcome: TLSUnavailable, Status: "4.7.5", Response: "MTA-STS is required for " + domain + " but disabled (delivery.mta_sts)"}
		}
		return nil, nil
	}
	c, err := o.MTASTS.Get(ctx, domain)
	if err != nil {
		if errors.Is(err, mtasts.ErrNoPolicy) {
			if level == LevelMTASTS {
				return nil, &Result{Outcome: TLSUnavailable, Status: "4.7.5", Response: "the domain " + domain + " publishes no MTA-STS policy"}
			}
			return nil, nil
		}
		// RFC 8461 §5.1: a policy that cannot be fetched (and is not
		// cached) means delivering as if the domain had none — unless
		// the domain is required to have one.
		o.log().Info("mta-sts policy unavailable", "domain", domain, "err", err)
		if level == LevelMTASTS {
			return nil, &Result{Outcome: Temporary, Status: "4.7.5", Response: "cannot determine the MTA-STS policy of " + domain + ": " + err.Error()}
		}
		return nil, nil
	}
	if c.Policy.Mode == mtasts.ModeNone {
		if level == LevelMTASTS {
			return nil, &Result{Outcome: TLSUnavailable, Status: "4.7.5", Response: "the MTA-STS policy of " + domain + " is in mode none"}
		}
		return nil, nil
	}
	p := c.Policy
	return &p, nil
}

// planHost looks up the host's TLSA records when DANE is on and the path
// to the host (MX and address records) was DNSSEC-authentic (RFC 7672
// §2.2). A TLSA look-up failure other than a denial makes the host
// unusable for now (RFC 7672 §2.2: never fall back to plaintext).
func planHost(ctx context.Context, o *Options, host string, secure bool, sts *mtasts.Policy) (*hostPlan, *Result) {
	hp := &hostPlan{name: host, sts: sts}
	if sts != nil {
		hp.stsMatch = sts.Match(host)
	}
	if !o.DANE || !secure {
		return hp, nil
	}
	recs, res, err := o.Resolver.LookupTLSA(ctx, o.Port, host)
	switch {
	case dnsr.IsNotFound(err):
		return hp, nil // no TLSA records: no DANE
	case err != nil:
		return nil, &Result{Outcome: Temporary, Status: "4.7.5", Response: "TLSA look-up for MX " + host + " failed: " + err.Error()}
	case !res.Authentic:
		return hp, nil // insecure RRset: as if absent (RFC 7672 §2.2)
	}
	hp.tlsaSecure = true
	hp.tlsa = dane.Usable(recs)
	return hp, nil
}

// negotiateTLS raises the session to what the level and the host's plan
// require. It returns the TLS state (nil for plaintext, allowed only when
// neither the level nor a published policy requires TLS) or an error with
// TLSUnavailable when the host cannot meet the requirement. A failure an
// MTA-STS policy in testing mode only records is put in *policyFailure.
func negotiateTLS(c *client, o *Options, hp *hostPlan, level string, requireTLS bool, policyFailure *string) (*TLSState, Outcome, error) {
	host := hp.name
	enforceSTS := hp.stsEnforced(level, requireTLS)
	testingSTS := hp.stsTesting(level, requireTLS)
	mustTLS := hp.useDANE() || enforceSTS || hp.tlsaSecure || requireTLS
	switch level {
	case LevelEncrypt, LevelVerify, LevelDANE, LevelMTASTS:
		mustTLS = true
	}
	if testingSTS && !hp.stsMatch {
		*policyFailure = "MTA-STS (testing): MX " + host + " is not listed in the policy"
	}
	if level == LevelNone && !mustTLS {
		return nil, Delivered, nil
	}
	if !c.has("STARTTLS") {
		if !mustTLS {
			if testingSTS && *policyFailure == "" {
				*policyFailure = "MTA-STS (testing): " + host + " does not offer STARTTLS"
			}
			return nil, Delivered, nil
		}
		return nil, TLSUnavailable, fmt.Errorf("%s does not offer STARTTLS; %s", host, requirement(hp, level, enforceSTS))
	}
	state := &TLSState{Policy: PolicyNone}
	cfg := &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: o.Sessions,
		InsecureSkipVerify: true, // verified below, so the outcome can be recorded
		VerifyConnection: func(cs tls.ConnectionState) error {
			if hp.useDANE() {
				// RFC 7672 §3: DANE decides alone, PKIX plays no part.
				if err := dane.Verify(cs.PeerCertificates, hp.tlsa, host, o.now()); err != nil {
					return fmt.Errorf("DANE authentication of %s failed: %w", host, err)
				}
				state.Verified, state.Policy = true, PolicyDANE
				return nil
			}
			err := verifyPKIX(cs, host, o.Roots)
			switch {
			case err == nil && enforceSTS && hp.stsMatch:
				state.Verified, state.Policy = true, PolicyMTASTS
			case err == nil:
				state.Verified, state.Policy = true, PolicyPKIX
			case enforceSTS:
				// RFC 8461 §4.2: the certificate must be valid for the MX.
				return fmt.Errorf("MTA-STS: certificate of %s not valid: %w", host, err)
			case level == LevelVerify:
				return fmt.Errorf("certificate of %s not valid: %w", host, err)
			case testingSTS && *policyFailure == "":
				*policyFailure = "MTA-STS (testing): certificate of " + host + " not valid: " + err.Error()
			}
			return nil
		},
	}
	if err := c.startTLS(cfg, o.Hostname); err != nil {
		var (
			te *tlsError
			re *ReplyError
		)
		switch {
		case !mustTLS && (errors.As(err, &te) || errors.As(err, &re)):
			// Opportunistic: a refused STARTTLS or a failed handshake
			// means sending without TLS on a new connection (RFC 3207
			// §4.1), as other MTAs do.
			return nil, Temporary, fmt.Errorf("%s: %w: %w", host, errPlainRetry, err)
		case errors.As(err, &te), errors.As(err, &re):
			// Mandatory TLS that the host cannot do: not a bounce, the
			// TLS requirement is unmet (fall through or defer).
			return nil, TLSUnavailable, fmt.Errorf("%s: STARTTLS: %w", host, err)
		}
		return nil, Temporary, err
	}
	state.Version = strings.ReplaceAll(tls.VersionName(c.tls.Version), " ", "")
	state.Cipher = tls.CipherSuiteName(c.tls.CipherSuite)
	return state, Delivered, nil
}

// errPlainRetry: opportunistic TLS failed; retry the host without TLS.
var errPlainRetry = errors.New("opportunistic TLS failed, retrying without TLS")

// requirement names why TLS is mandatory, for error messages.
func requirement(hp *hostPlan, level string, enforceSTS bool) string {
	switch {
	case hp.useDANE():
		return "the domain publishes DANE TLSA records (RFC 7672)"
	case enforceSTS:
		return "the domain's MTA-STS policy requires TLS (RFC 8461)"
	case hp.tlsaSecure:
		return "the domain publishes TLSA records (RFC 7672 §2.2)"
	}
	return "TLS level " + level + " required"
}

// verifyPKIX checks the peer chain against roots and the host name.
func verifyPKIX(cs tls.ConnectionState, host string, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: inter,
	})
	return err
}
