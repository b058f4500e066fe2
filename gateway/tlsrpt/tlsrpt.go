// Package tlsrpt implements the sending side of SMTP TLS Reporting
// (RFC 8460): it counts the outcome of every outbound TLS negotiation per
// recipient policy domain and per UTC day, and once a day sends each domain
// that publishes a TLSRPT record (_smtp._tls.<domain> TXT) an aggregate
// JSON report, gzip-compressed, by mail (mailto:, DKIM-signed) or HTTPS
// POST (https:).
package tlsrpt

import (
	"strings"

	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/mtasts"
)

// Policy types (RFC 8460 §4.4 "policy-type").
const (
	PolicyTLSA     = "tlsa"
	PolicySTS      = "sts"
	PolicyNotFound = "no-policy-found"
)

// Result types (RFC 8460 §4.3).
const (
	// §4.3.1 negotiation failures
	StartTLSNotSupported    = "starttls-not-supported"
	CertificateHostMismatch = "certificate-host-mismatch"
	CertificateExpired      = "certificate-expired"
	CertificateNotTrusted   = "certificate-not-trusted"
	ValidationFailure       = "validation-failure"
	// §4.3.2.1 DANE-specific policy failures
	TLSAInvalid   = "tlsa-invalid"
	DNSSECInvalid = "dnssec-invalid"
	DANERequired  = "dane-required"
	// §4.3.2.2 MTA-STS-specific policy failures
	STSPolicyFetchError = "sts-policy-fetch-error"
	STSPolicyInvalid    = "sts-policy-invalid"
	STSWebPKIInvalid    = "sts-webpki-invalid"
)

// validResultType reports whether s is a result type of RFC 8460 §4.3.
func validResultType(s string) bool {
	switch s {
	case StartTLSNotSupported, CertificateHostMismatch, CertificateExpired, CertificateNotTrusted,
		ValidationFailure, TLSAInvalid, DNSSECInvalid, DANERequired,
		STSPolicyFetchError, STSPolicyInvalid, STSWebPKIInvalid:
		return true
	}
	return false
}

// Result is the outcome of one TLS negotiation (one SMTP session) with an
// MX of a recipient domain.
type Result struct {
	Domain        string   // the recipient policy domain
	PolicyType    string   // PolicySTS, PolicyTLSA or PolicyNotFound
	PolicyStrings []string // the policy as published: MTA-STS policy lines or TLSA records
	MXHost        string   // receiving-mx-hostname
	ReceivingIP   string   // receiving-ip, "" when unknown
	Success       bool
	FailureType   string // one of the result types, when !Success
	FailureDetail string // failure-reason-code: free text, truncated
}

// Classify maps the text of a deliver.Result (Response or PolicyFailure)
// to an RFC 8460 §4.3 result type. ok is false when the text does not
// describe a TLS or policy failure deliver is known to produce.
func Classify(text string) (resultType string, ok bool) {
	t := strings.ToLower(text)
	switch {
	case t == "":
		return "", false
	case strings.Contains(t, "does not offer starttls"):
		return StartTLSNotSupported, true
	case strings.Contains(t, "tlsa look-up") && strings.Contains(t, "failed"):
		// A TLSA RRset that cannot be resolved or validated (RFC 7672 §2.2).
		return DNSSECInvalid, true
	case strings.Contains(t, "no dnssec-validated tlsa records"):
		return DANERequired, true
	case strings.Contains(t, "no usable (dane-ta or dane-ee) tlsa records"), strings.Contains(t, "no usable tlsa records"):
		return TLSAInvalid, true
	case strings.Contains(t, "dane authentication") || strings.Contains(t, "dane:"):
		return ValidationFailure, true
	case strings.Contains(t, "cannot determine the mta-sts policy"):
		return STSPolicyFetchError, true
	case strings.Contains(t, "not listed in the") && strings.Contains(t, "mta-sts"):
		// The MX does not match the policy's mx patterns (RFC 8461 §4.1).
		return ValidationFailure, true
	case strings.Contains(t, "certificate is valid for"), strings.Contains(t, "certificate is not valid for any names"):
		// x509.HostnameError
		if strings.Contains(t, "mta-sts") {
			return STSWebPKIInvalid, true
		}
		return CertificateHostMismatch, true
	case strings.Contains(t, "expired") || strings.Contains(t, "not yet valid") || strings.Contains(t, "outside its validity period"):
		return CertificateExpired, true
	case strings.Contains(t, "unknown authority"), strings.Contains(t, "self-signed"), strings.Contains(t, "not standards compliant"):
		if strings.Contains(t, "mta-sts") {
			return STSWebPKIInvalid, true
		}
		return CertificateNotTrusted, true
	case strings.Contains(t, "tls handshake"), strings.Contains(t, "certificate of"):
		return ValidationFailure, true
	}
	return "", false
}

// ResultFrom turns one deliver.Result of mode mx into a report result.
// policyType and policyStrings describe the policy deliver applied; when
// policyType is empty it is inferred from res (TLS.Policy "dane" → tlsa,
// "mta-sts" or an MTA-STS testing failure → sts, else no-policy-found),
// and the policy strings stay empty. mxIP is the address connected to.
//
// ok is false when res says nothing about TLS: a temporary failure that is
// not a TLS failure (connection refused, 4xx), a permanent SMTP rejection
// before any session, or a result without MX.
func ResultFrom(domain string, res deliver.Result, mxIP, policyType string, policyStrings []string) (Result, bool) {
	r := Result{Domain: strings.ToLower(strings.TrimSuffix(domain, ".")), PolicyType: policyType,
		PolicyStrings: policyStrings, MXHost: res.MX, ReceivingIP: mxIP}
	if r.PolicyType == "" {
		r.PolicyType = inferPolicy(res)
	}
	switch res.Outcome {
	case deliver.Delivered:
		switch {
		case res.PolicyFailure != "":
			// RFC 8461 §5: an MTA-STS policy in testing mode was not met
			// but the message went out; that is what TLS-RPT is for.
			r.FailureType, _ = Classify(res.PolicyFailure)
			if r.FailureType == "" {
				r.FailureType = ValidationFailure
			}
			r.FailureDetail = res.PolicyFailure
		case res.TLS == nil:
			// Delivered in plaintext: STARTTLS was not offered (or, at
			// level none, not tried).
			r.FailureType = StartTLSNotSupported
		default:
			r.Success = true
		}
	case deliver.TLSUnavailable:
		r.FailureType, _ = Classify(res.Response)
		if r.FailureType == "" {
			r.FailureType = ValidationFailure
		}
		r.FailureDetail = res.Response
	case deliver.Temporary:
		// deliver turns TLS failures into Temporary when other MX hosts
		// were unreachable; report those, not plain network trouble.
		t, ok := Classify(res.Response)
		if !ok {
			return Result{}, false
		}
		r.FailureType, r.FailureDetail = t, res.Response
	default:
		return Result{}, false
	}
	if r.MXHost == "" && r.FailureType != DANERequired && r.FailureType != STSPolicyFetchError {
		return Result{}, false
	}
	return r, true
}

func inferPolicy(res deliver.Result) string {
	switch {
	case res.TLS != nil && res.TLS.Policy == deliver.PolicyDANE:
		return PolicyTLSA
	case res.TLS != nil && res.TLS.Policy == deliver.PolicyMTASTS:
		return PolicySTS
	case strings.HasPrefix(res.PolicyFailure, "MTA-STS"):
		return PolicySTS
	case strings.Contains(res.Response, "MTA-STS"):
		return PolicySTS
	case strings.Contains(res.Response, "DANE") || strings.Contains(res.Response, "TLSA"):
		return PolicyTLSA
	}
	return PolicyNotFound
}

// STSPolicyStrings renders an MTA-STS policy as the lines of its text
// (RFC 8460 §4.4 "policy-string" for policy-type sts).
func STSPolicyStrings(p mtasts.Policy) []string {
	out := []string{"version: STSv1", "mode: " + p.Mode}
	for _, mx := range p.MX {
		out = append(out, "mx: "+mx)
	}
	return append(out, "max_age: "+itoa(int64(p.MaxAge.Seconds())))
}

// TLSAPolicyStrings renders TLSA records in presentation format (RFC 8460
// §4.4 "policy-string" for policy-type tlsa), e.g. "3 1 1 ABCD…".
func TLSAPolicyStrings(recs []dnsr.TLSA) []string {
	const hexdigits = "0123456789ABCDEF"
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		var b strings.Builder
		b.WriteString(itoa(int64(r.Usage)) + " " + itoa(int64(r.Selector)) + " " + itoa(int64(r.MatchingType)) + " ")
		for _, c := range r.Data {
			b.WriteByte(hexdigits[c>>4])
			b.WriteByte(hexdigits[c&15])
		}
		out = append(out, b.String())
	}
	return out
}
