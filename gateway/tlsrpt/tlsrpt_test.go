package tlsrpt

import (
	"slices"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/deliver"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/mtasts"
)

func TestClassify(t *testing.T) {
	tests := map[string]string{
		"mx.example.net does not offer STARTTLS; the domain's MTA-STS policy requires TLS (RFC 8461)":                              StartTLSNotSupported,
		"mx.example.net: TLS handshake: x509: certificate is valid for other.example, not mx.example.net":                          CertificateHostMismatch,
		"mx.example.net: TLS handshake: MTA-STS: certificate of mx.example.net not valid: x509: certificate is valid for a, not b": STSWebPKIInvalid,
		"mx: TLS handshake: x509: certificate has expired or is not yet valid: current time …":                                     CertificateExpired,
		"mx: TLS handshake: certificate of mx not valid: x509: certificate signed by unknown authority":                            CertificateNotTrusted,
		"mx: TLS handshake: DANE authentication of mx failed: dane: no TLSA record matches the server certificate":                 ValidationFailure,
		"no usable (DANE-TA or DANE-EE) TLSA records for MX mx.example.net":                                                        TLSAInvalid,
		"no DNSSEC-validated TLSA records for MX mx.example.net":                                                                   DANERequired,
		"TLSA look-up for MX mx.example.net failed: dns lookup _25._tcp.mx.example.net: temporary failure":                         DNSSECInvalid,
		"MX mx.example.net is not listed in the domain's MTA-STS policy":                                                           ValidationFailure,
		"cannot determine the MTA-STS policy of example.net: fetch failed":                                                         STSPolicyFetchError,
	}
	for in, want := range tests {
		if got, ok := Classify(in); !ok || got != want {
			t.Errorf("Classify(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "dial tcp 192.0.2.1:25: connection refused", "451 4.3.0 try later"} {
		if got, ok := Classify(in); ok {
			t.Errorf("Classify(%q) = %q, want no TLS failure", in, got)
		}
	}
}

func TestResultFrom(t *testing.T) {
	verified := &deliver.TLSState{Version: "TLS1.3", Verified: true, Policy: deliver.PolicyDANE}
	tests := []struct {
		name string
		res  deliver.Result
		ok   bool
		want Result
	}{
		{"dane success", deliver.Result{Outcome: deliver.Delivered, MX: "mx.example.net", TLS: verified}, true,
			Result{PolicyType: PolicyTLSA, Success: true}},
		{"sts success", deliver.Result{Outcome: deliver.Delivered, MX: "mx.example.net", TLS: &deliver.TLSState{Verified: true, Policy: deliver.PolicyMTASTS}}, true,
			Result{PolicyType: PolicySTS, Success: true}},
		{"pkix success, no policy", deliver.Result{Outcome: deliver.Delivered, MX: "mx.example.net", TLS: &deliver.TLSState{Verified: true, Policy: deliver.PolicyPKIX}}, true,
			Result{PolicyType: PolicyNotFound, Success: true}},
		{"plaintext", deliver.Result{Outcome: deliver.Delivered, MX: "mx.example.net"}, true,
			Result{PolicyType: PolicyNotFound, FailureType: StartTLSNotSupported}},
		{"sts testing failure", deliver.Result{Outcome: deliver.Delivered, MX: "mx.example.net", TLS: &deliver.TLSState{Policy: deliver.PolicyNone},
			PolicyFailure: "MTA-STS (testing): certificate of mx.example.net not valid: x509: certificate signed by unknown authority"}, true,
			Result{PolicyType: PolicySTS, FailureType: STSWebPKIInvalid}},
		{"tls unavailable", deliver.Result{Outcome: deliver.TLSUnavailable, MX: "mx.example.net",
			Response: "mx.example.net does not offer STARTTLS; the domain publishes DANE TLSA records (RFC 7672)"}, true,
			Result{PolicyType: PolicyTLSA, FailureType: StartTLSNotSupported}},
		{"connection refused", deliver.Result{Outcome: deliver.Temporary, MX: "mx.example.net", Response: "dial tcp: connection refused"}, false, Result{}},
		{"tls failure made temporary", deliver.Result{Outcome: deliver.Temporary, MX: "mx.example.net",
			Response: "mx.example.net: TLS handshake: x509: certificate has expired or is not yet valid"}, true,
			Result{PolicyType: PolicyNotFound, FailureType: CertificateExpired}},
		{"bounce", deliver.Result{Outcome: deliver.Permanent, MX: "mx.example.net", Response: "550 no such user"}, false, Result{}},
		{"no mx", deliver.Result{Outcome: deliver.TLSUnavailable, Response: "TLS level \"x\" is unknown"}, false, Result{}},
	}
	for _, tt := range tests {
		got, ok := ResultFrom("Example.NET", tt.res, "192.0.2.7", "", nil)
		if ok != tt.ok {
			t.Errorf("%s: ok = %v", tt.name, ok)
			continue
		}
		if !ok {
			continue
		}
		if got.Domain != "example.net" || got.MXHost != "mx.example.net" || got.ReceivingIP != "192.0.2.7" ||
			got.PolicyType != tt.want.PolicyType || got.Success != tt.want.Success || got.FailureType != tt.want.FailureType {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
	// An explicit policy wins over inference.
	got, _ := ResultFrom("example.net", deliver.Result{Outcome: deliver.Delivered, MX: "mx", TLS: verified}, "", PolicySTS, stsStrings)
	if got.PolicyType != PolicySTS || !slices.Equal(got.PolicyStrings, stsStrings) {
		t.Errorf("explicit policy: %+v", got)
	}
}

func TestPolicyStrings(t *testing.T) {
	got := STSPolicyStrings(mtasts.Policy{Mode: "enforce", MX: []string{"mx1.example.net", "*.example.org"}, MaxAge: 86400 * time.Second})
	want := []string{"version: STSv1", "mode: enforce", "mx: mx1.example.net", "mx: *.example.org", "max_age: 86400"}
	if !slices.Equal(got, want) {
		t.Errorf("STSPolicyStrings = %q", got)
	}
	if got := TLSAPolicyStrings([]dnsr.TLSA{{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{0xab, 0x01}}}); !slices.Equal(got, []string{"3 1 1 AB01"}) {
		t.Errorf("TLSAPolicyStrings = %q", got)
	}
}
